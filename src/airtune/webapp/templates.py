"""The jobs page's HTML (Jinja2, autoescaped). Plain server-rendered pages with a little script:
the detail view refreshes its task states, log tail and loss curve while the run is active, and a
finished run's view has a "Try it" box that asks the job's registered model one prompt."""

from __future__ import annotations

import json
from datetime import datetime

from jinja2 import DictLoader, Environment, pass_context, select_autoescape
from markupsafe import Markup, escape

from airtune.status import format_duration
from airtune.webapp import i18n
from airtune.webapp.data import ACTIVE, _parse_time


def _duration(seconds) -> str:
    return format_duration(seconds, missing="—", sep=" ")


def _when(text) -> str:
    t = _parse_time(text) if isinstance(text, str) else text
    if not isinstance(t, datetime):
        return "—"
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _num(v) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "—" if v is None else str(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.3g}"
    return f"{v:.4g}"


def _value(v) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return "—" if v is None else str(v)


CSS = """
:root { --fg:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#fff; --head:#f5f7fa; --accent:#017cee; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); margin: 0; padding: 16px 24px; }
h1 { font-size: 20px; margin: 0 0 12px; } h2 { font-size: 16px; margin: 24px 0 8px; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--head); font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; color: var(--muted); }
td.num { font-variant-numeric: tabular-nums; } .muted { color: var(--muted); }
.state { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; background: #e4e7eb; }
.state-success { background: #d3f9d8; color: #1e7d32; } .state-failed, .state-upstream_failed { background: #ffe3e3; color: #c92a2a; }
.state-running { background: #d0ebff; color: #1864ab; } .state-queued, .state-scheduled { background: #fff3bf; color: #8d6e00; }
.state-skipped { background: #f1f3f5; color: #868e96; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 8px 32px; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; } dl.kv dt { color: var(--muted); } dl.kv dd { margin: 0; word-break: break-all; }
pre.log { background: #111827; color: #e5e7eb; padding: 10px 12px; border-radius: 6px; max-height: 360px; overflow: auto; font-size: 12px; white-space: pre-wrap; }
img.curves { max-width: 100%; border: 1px solid var(--line); border-radius: 6px; }
.danger { border: 1px solid #ffc9c9; background: #fff5f5; border-radius: 6px; padding: 12px 16px; margin-top: 28px; }
.danger summary { cursor: pointer; color: #c92a2a; font-weight: 600; }
button.delete { background: #c92a2a; color: #fff; border: 0; border-radius: 4px; padding: 6px 14px; font-weight: 600; cursor: pointer; }
button.delete:disabled { background: #e8a5a5; cursor: not-allowed; }
input[type=text] { padding: 5px 8px; border: 1px solid #cbd2d9; border-radius: 4px; font: inherit; }
.nav { margin-bottom: 12px; font-size: 13px; } .errors { color: #c92a2a; }
.try { border: 1px solid var(--line); border-radius: 6px; padding: 10px 16px 12px; max-width: 960px; } .try p { margin: 0 0 8px; }
.try textarea { width: 100%; padding: 6px 8px; border: 1px solid #cbd2d9; border-radius: 4px; font: inherit; resize: vertical; }
button.primary { background: var(--accent); color: #fff; border: 0; border-radius: 4px; padding: 6px 14px; font-weight: 600; cursor: pointer; margin-top: 4px; }
button.primary:disabled { background: #8cc4f7; cursor: progress; }
.answer { white-space: pre-wrap; word-break: break-word; background: var(--head); border-radius: 4px; padding: 8px 10px; margin-top: 8px; }
.answer.errors { background: #fff5f5; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 12px 20px; max-width: 1400px; }
figure.chart { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; } figure.chart svg { width: 100%; height: auto; display: block; }
figure.chart figcaption { font-weight: 600; font-size: 13px; margin-bottom: 4px; } .legend { font-size: 12px; color: var(--muted); margin-right: 10px; }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; vertical-align: -1px; }
a.newjob { display: inline-block; background: var(--accent); color: #fff; border-radius: 4px; padding: 6px 14px; font-weight: 600; }
"""

LAYOUT = """<!doctype html>
<html lang="{{ 'zh-CN' if lang == 'zh' else 'en' }}"><head><meta charset="utf-8"><title>{% block title %}airtune jobs{% endblock %}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{{ css }}</style></head>
<body>{% block body %}{% endblock %}</body></html>
"""

JOBS = """{% extends "layout.html" %}
{% block title %}{{ tr('jobs.title') }} · airtune{% endblock %}
{% block body %}
<h1>{{ tr('jobs.title') }}</h1>
<p><a class="newjob" id="new-job" href="{{ base }}/create">{{ tr('jobs.new') }}</a></p>
<p class="muted">{{ tr('jobs.intro', dag=code('airtune_finetune')) }}</p>
{% if not jobs %}<p id="no-jobs">{{ tr('jobs.none') }}</p>{% else %}
<table id="jobs">
<thead><tr><th>{{ tr('col.name') }}</th><th>{{ tr('col.state') }}</th><th>{{ tr('col.base_model') }}</th><th>{{ tr('col.method') }}</th><th>{{ tr('col.stage') }}</th><th>{{ tr('col.started') }}</th><th>{{ tr('col.duration') }}</th><th>{{ tr('col.best_metric') }}</th><th>{{ tr('col.runs') }}</th></tr></thead>
<tbody>
{% for j in jobs %}
<tr data-job="{{ j.name }}">
<td><a href="{{ base }}/jobs/{{ j.name }}">{{ j.name }}</a></td>
<td><span class="state state-{{ j.state }}" data-state="{{ j.state }}">{{ j.state|state }}</span>{% if j.progress.max_steps and j.state == 'running' %} <span class="muted">{{ j.progress.percent|default(0)|round|int }}%</span>{% endif %}</td>
<td>{{ j.base_model or '—' }}</td><td>{{ j.finetuning_method or '—' }}</td><td>{{ j.stage or '—' }}</td>
<td class="num">{{ j.start|when }}</td><td class="num">{{ j.duration_s|duration }}</td>
<td class="num">{% if j.best_metric %}{{ j.best_metric.name }} {{ j.best_metric.value|num }} <span class="muted">({% if j.best_metric.source == 'latest run' %}{{ tr('source.latest_run') }}{% elif j.best_metric.source.startswith('version ') %}{{ tr('source.version', v=j.best_metric.source[8:]) }}{% else %}{{ j.best_metric.source }}{% endif %})</span>{% else %}—{% endif %}</td>
<td class="num">{{ j.runs }}</td>
</tr>
{% endfor %}
</tbody></table>{% endif %}
{% endblock %}
"""

JOB = """{% extends "layout.html" %}
{% block title %}{{ job.name }} · airtune{% endblock %}
{% block body %}
{% set run = job.run %}
<div class="nav"><a href="{{ base }}/jobs">{{ tr('nav.all_jobs') }}</a></div>
<h1>{{ job.name }} <span id="run-state" class="state state-{{ run.state }}" data-state="{{ run.state }}">{{ run.state|state }}</span></h1>
{% if job.errors %}<p class="errors">{% for src, err in job.errors.items() %}{{ tr('unreachable', source=src, error=err) }}<br>{% endfor %}</p>{% endif %}
<div class="grid">
<dl class="kv" id="summary">
<dt>{{ tr('kv.run') }}</dt><dd>{{ run.dag_run_id or '—' }} <span class="muted">({{ run.dag_id or '—' }})</span></dd>
<dt>{{ tr('kv.base_model') }}</dt><dd>{{ job.spec.base_model or '—' }}</dd>
<dt>{{ tr('kv.method_stage') }}</dt><dd>{{ job.spec.finetuning_method or 'lora' }} · {{ job.spec.stage or 'sft' }}</dd>
<dt>{{ tr('kv.datasets') }}</dt><dd>{{ (job.spec.dataset or [])|join(', ') or '—' }}</dd>
<dt>{{ tr('kv.location') }}</dt><dd>{{ job.spec.location or 'local' }}</dd>
<dt>{{ tr('kv.started') }}</dt><dd>{{ run.start|when }}</dd>
<dt>{{ tr('kv.duration') }}</dt><dd id="run-duration">{{ run.duration_s|duration }}</dd>
{% if run.progress and run.progress.max_steps %}<dt>{{ tr('kv.progress') }}</dt><dd>{{ tr('progress.step', step=run.progress.step|default(0), max=run.progress.max_steps) }}</dd>{% endif %}
</dl>
<dl class="kv" id="links">
<dt>Airflow</dt><dd>{% if run.airflow_url %}<a id="airflow-link" href="{{ run.airflow_url }}" target="_top">{{ tr('link.dag_run') }}</a>{% else %}—{% endif %}</dd>
<dt>MLflow</dt><dd>{% if run.mlflow_url %}<a id="mlflow-link" href="{{ run.mlflow_url }}" target="_blank" rel="noopener">{{ tr('link.mlflow_run') }}</a>{% else %}—{% endif %}
{% if job.experiment %} · <a id="experiment-link" href="{{ job.experiment.url }}" target="_blank" rel="noopener">{{ tr('link.experiment', name=job.experiment.name) }}</a>{% endif %}</dd>
<dt>{{ tr('kv.registered') }}</dt><dd id="registered">{% if run.model_version %}<a href="{{ (job.registered_model.versions|selectattr('version', 'equalto', run.model_version)|first).url }}" target="_blank" rel="noopener">{{ tr('registered.version', name=job.name, v=run.model_version) }}</a>{% if job.registered_model.best_version == run.model_version %} {{ tr('registered.alias', alias=code('best')) }}{% endif %}{% if job.registered_model.champion_version == run.model_version %} {{ tr('registered.alias', alias=code('champion')) }}{% endif %}{% elif job.registered_model.versions %}{{ tr('registered.none_this_run', n=job.registered_model.versions|length) }}{% else %}{{ tr('registered.not_yet') }}{% endif %}</dd>
{% if job.registered_model.uri %}<dt>{{ tr('kv.load_it') }}</dt><dd><code>{{ job.registered_model.uri }}</code></dd>{% endif %}
{% if run.metrics %}<dt>{{ tr('kv.metrics') }}</dt><dd>{% for k, v in run.metrics.items() %}{{ k }} {{ v|num }}{% if not loop.last %} · {% endif %}{% endfor %}</dd>{% endif %}
<dt>{{ tr('kv.files') }}</dt><dd>{{ job.folder or '—' }}</dd>
</dl>
</div>
{% if job.try_it %}{% set t = job.try_it %}
<h2>{{ tr('try.title') }}</h2>
<div class="try" id="try">
{% if t.available %}
<p class="muted" id="try-about">{{ tr('try.about', name=job.name, v=t.version, chosen_by=tr('try.chosen.' ~ t.chosen_key) if t.chosen_key else t.chosen_by, tokens=t.max_new_tokens, chars='{:,}'.format(t.max_prompt)) }}</p>
<form id="try-form">
<textarea id="try-prompt" name="prompt" rows="3" placeholder="{{ tr('try.placeholder') }}"></textarea>
<div><button class="primary" type="submit" id="try-button">{{ tr('try.button') }}</button> <span class="muted" id="try-status"></span></div>
</form>
<div class="answer" id="try-answer" hidden></div>
{% else %}<p class="muted" id="try-note">{{ t.note }}</p>{% endif %}
</div>{% endif %}
{% if job.runs|length > 1 %}<h2>{{ tr('runs.title') }}</h2><p>{% for r in job.runs %}<a href="{{ base }}/jobs/{{ job.name }}?run={{ r.dag_run_id|urlencode }}">{{ r.dag_run_id }}</a> <span class="state state-{{ r.state }}">{{ r.state|state }}</span>{% if not loop.last %} · {% endif %}{% endfor %}</p>{% endif %}

<h2>{{ tr('tasks.title') }}</h2>
<table id="tasks"><thead><tr><th>{{ tr('col.task') }}</th><th>{{ tr('col.state') }}</th><th>{{ tr('col.try') }}</th><th>{{ tr('col.started') }}</th><th>{{ tr('col.duration') }}</th><th>{{ tr('col.pool') }}</th></tr></thead>
<tbody>{% for t in job.tasks %}<tr data-task="{{ t.task_id }}"><td><a href="{{ t.url }}" target="_top">{{ t.task_id }}</a></td><td><span class="state state-{{ t.state }}" data-state="{{ t.state or 'none' }}">{{ t.state|state }}</span></td><td class="num">{{ t.try_number }}</td><td class="num">{{ t.start|when }}</td><td class="num">{{ t.duration_s|duration }}</td><td>{{ t.pool }}</td></tr>{% endfor %}</tbody></table>

<h2 id="log-title">{{ tr('log.title') }} <span class="muted" id="log-task"></span></h2>
<p class="muted" id="log-tasks">{% for t in job.tasks if t.try_number %}<a href="#log" data-log-task="{{ t.task_id }}">{{ t.task_id }}</a>{% if not loop.last %} · {% endif %}{% endfor %}</p>
<pre class="log" id="log">{% if not run.dag_run_id %}{{ tr('log.no_run') }}{% else %}{{ tr('log.loading') }}{% endif %}</pre>

<h2 id="monitor-title">{{ tr('monitor.title') }}</h2>
<p class="muted" id="monitor-about">{{ tr('monitor.about') }}</p>
<div class="charts" id="monitor"><p class="muted" id="monitor-status">{% if run.dag_run_id %}{{ tr('monitor.loading') }}{% else %}{{ tr('log.no_run') }}{% endif %}</p></div>

<h2>{{ tr('curves.title') }}</h2>
{% if job.has_metrics %}<img class="curves" id="curves" alt="{{ tr('curves.alt') }}" src="{{ base }}/jobs/{{ job.name }}/curves.png?run={{ run.dag_run_id|urlencode }}">
{% else %}<p class="muted" id="no-curves">{{ tr('curves.none') }}</p>{% endif %}

{% if job.evaluation %}{% set ev = job.evaluation %}
<h2>{{ tr('eval.title') }}</h2>
<p class="muted" id="eval-about">{{ tr('eval.about', base=tr('eval.base_named', model=ev.base_model) if ev.base_model else tr('eval.base'), champion=tr('eval.champion_part', v=ev.champion_version) if 'champion' in ev.sources else '', n=ev.samples or 0) }}</p>
<table id="evaluation"><thead><tr><th>{{ tr('col.metric') }}</th>{% for s in ev.sources %}<th class="num">{{ tr('source.' ~ s) }}</th>{% endfor %}</tr></thead><tbody>
{% for k in ev['keys'] %}<tr><td><code>{{ k }}</code></td>{% for s in ev.sources %}<td class="num">{{ ev.figures[s][k]|num if ev.figures[s][k] is defined else '—' }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table>
{% if ev.promotion %}<p id="promotion"><b>{{ tr('eval.promotion') }}</b> ({{ ev.promotion.mode }}, {{ tr('eval.on') }} <code>{{ ev.promotion.metric }}</code>): <span class="state state-{{ 'success' if ev.promotion.outcome == 'promoted' else 'skipped' }}">{{ ev.promotion.outcome }}</span> {{ ev.promotion.reason }}{% if ev.promotion.by and ev.promotion.by != 'policy' %} · {{ tr('eval.decided_by', who=ev.promotion.by) }}{% endif %}</p>{% endif %}
{% if ev.predictions %}<details id="predictions"><summary>{{ tr('eval.side_by_side', n=ev.predictions|length) }}</summary>
<table><thead><tr><th>{{ tr('col.prompt') }}</th><th>{{ tr('col.reference') }}</th><th>{{ tr('source.base') }}</th><th>{{ tr('col.tuned') }}</th></tr></thead><tbody>
{% for p in ev.predictions %}<tr><td>{{ p.prompt }}</td><td>{{ p.reference }}</td><td>{{ p.base }}</td><td>{{ p.tuned }}</td></tr>{% endfor %}
</tbody></table></details>{% endif %}
{% endif %}

<h2>{{ tr('ckpt.title') }}</h2>
{% if job.checkpoints %}<table id="checkpoints"><thead><tr><th>{{ tr('col.checkpoint') }}</th><th>{{ tr('col.folder') }}</th></tr></thead><tbody>
{% for c in job.checkpoints %}<tr><td>{{ c.name }}{% if c.best %} <span class="state state-success">{{ tr('ckpt.best') }}</span>{% endif %}</td><td class="muted">{{ c.path }}{% if not c.on_disk %} {{ tr('ckpt.removed') }}{% endif %}</td></tr>{% endfor %}
</tbody></table>{% else %}<p class="muted">{{ tr('none_yet') }}</p>{% endif %}
{% if job.result %}<p class="muted">{{ tr('ckpt.summary', steps=job.result.global_step, first=job.result.train_loss_first|num, last=job.result.train_loss_last|num) }}{% if job.result.eval_loss is not none %}{{ tr('ckpt.eval_loss', v=job.result.eval_loss|num) }}{% endif %}</p>{% endif %}

<h2>{{ tr('spec.title') }}</h2>
{% if not job.spec_is_resolved %}<p class="muted">{{ tr('spec.not_resolved', yet=tr('spec.yet') if run.state in active else '') }}</p>{% endif %}
<table id="spec"><tbody>{% for k, v in job.spec.items() %}<tr><td><code>{{ k }}</code></td><td>{{ v|value }}</td></tr>{% endfor %}</tbody></table>
{% if job.resolved %}<details><summary>{{ tr('spec.whole') }}</summary><pre class="log">{{ job.resolved|tojson(indent=2) }}</pre></details>{% endif %}

<details class="danger" id="delete"><summary>{{ tr('delete.summary') }}</summary>
<p>{{ tr('delete.warning', name=job.name, runs=job.runs|length, model=tr('delete.warning_model', name=job.name, n=job.registered_model.versions|length) if job.registered_model.versions else '', files=tr('delete.warning_files') if job.folder else '') }}</p>
<form method="post" action="{{ base }}/jobs/{{ job.name }}/delete" id="delete-form">
<label>{{ tr('delete.confirm') }} <input type="text" name="confirm" id="delete-confirm" autocomplete="off" placeholder="{{ job.name }}"></label>
{% if job.runs|selectattr('state', 'in', active)|list %}<label><input type="checkbox" name="force" id="delete-force" value="true"> {{ tr('delete.force') }}</label>{% endif %}
<button class="delete" type="submit" id="delete-button" disabled>{{ tr('delete.button', name=job.name) }}</button>
<span class="muted" id="delete-status"></span>
</form></details>

<script>
const base = {{ base|tojson }}, name = {{ job.name|tojson }}, runId = {{ (run.dag_run_id or '')|tojson }};
const active = {{ active|list|tojson }};
let state = {{ (run.state or '')|tojson }}, logTask = null;
let trying = false;  // an answer in progress ("Try it"): the page is not reloaded under it
let deleting = false;  // a delete in progress: the page is neither refreshed nor reloaded under it, so its report is shown
const T = {{ messages|tojson }};
function tr(key, vals) { return String(T[key] ?? key).replace(/\\{(\\w+)\\}/g, (m, k) => (vals && k in vals) ? vals[k] : m); }
function stateWord(s) { return T[`state.${s || 'none'}`] ?? (s || 'none'); }
document.querySelectorAll('[data-log-task]').forEach(a => a.addEventListener('click', e => {
  e.preventDefault(); logTask = a.dataset.logTask; refresh(true); }));
const confirmBox = document.getElementById('delete-confirm'), button = document.getElementById('delete-button');
confirmBox.addEventListener('input', () => { button.disabled = confirmBox.value.trim() !== name; });
function esc(s) { return String(s ?? '').replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c])); }
function dur(s) { if (s == null) return '—'; s = Math.floor(s); const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
  return h ? `${h}h ${String(m).padStart(2, '0')}m` : (m ? `${m}m ${String(r).padStart(2, '0')}s` : `${r}s`); }
function when(t) { if (!t) return '—'; const d = new Date(t); return isNaN(d) ? t : d.toLocaleString('sv-SE'); }
let ticks = 0;
async function refresh(once) {
  if (!runId || deleting) return;
  const task = logTask ? `&task=${encodeURIComponent(logTask)}` : '';
  const r = await fetch(`${base}/api/jobs/${encodeURIComponent(name)}/live?run=${encodeURIComponent(runId)}${task}`, {headers: {Accept: 'application/json'}});
  if (deleting) return;
  if (!r.ok) { document.getElementById('log').textContent = tr('log.not_available', {status: r.status}); return; }
  const live = await r.json();
  if (deleting) return;
  document.getElementById('log').textContent = live.log.lines.join('\\n') || T['log.empty'];
  document.getElementById('log-task').textContent = live.log.task_id ? tr('log.which', {task: live.log.task_id, n: live.log.try_number, lines: live.log.lines.length}) : '';
  const pre = document.getElementById('log'); pre.scrollTop = pre.scrollHeight;
  document.querySelector('#tasks tbody').innerHTML = live.tasks.map(t =>
    `<tr data-task="${esc(t.task_id)}"><td><a href="${esc(t.url)}" target="_top">${esc(t.task_id)}</a></td><td><span class="state state-${esc(t.state)}" data-state="${esc(t.state || 'none')}">${esc(stateWord(t.state))}</span></td>` +
    `<td class="num">${t.try_number}</td><td class="num">${when(t.start)}</td><td class="num">${dur(t.duration_s)}</td><td>${esc(t.pool)}</td></tr>`).join('');
  const badge = document.getElementById('run-state'); badge.textContent = stateWord(live.state); badge.dataset.state = live.state; badge.className = `state state-${live.state}`;
  document.getElementById('run-duration').textContent = dur(live.duration_s);
  const img = document.getElementById('curves'); if (img) img.src = img.src.replace(/&t=\\d+$/, '') + `&t=${Date.now()}`;
  if (active.includes(live.state) && !once && ++ticks % 2 === 0) loadMonitor();  // every 6 s while it runs
  // finished: show checkpoints, version. (The Try it box is on finished runs only, so no answer is waiting then;
  // a delete in progress is never reloaded away: its report replaces the page.)
  if (active.includes(state) && !active.includes(live.state) && !trying && !deleting) { location.reload(); return; }
  state = live.state;
  if (active.includes(state) && !once) setTimeout(refresh, 3000);
}
refresh();

// --- monitoring (查看监控): SVG line charts drawn here from /api/jobs/{name}/monitor (MLflow's histories)
const COLORS = ['#017cee', '#e8590c', '#2f9e44', '#ae3ec9', '#c92a2a', '#1098ad', '#f59f00', '#5c7cfa'];
function fmtNum(v) { if (v == null || !isFinite(v)) return '—'; const a = Math.abs(v);
  return (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(2) : String(+v.toPrecision(4)); }
function chartSvg(ch) {
  const W = 440, H = 190, L = 56, R = 12, TOP = 10, B = 32, pts = ch.series.flatMap(s => s.points);
  if (!pts.length) return '';
  const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = (ch.unit === '%' || ch.unit === 'MB') ? 0 : Math.min(...ys),
    y1 = Math.max(ch.ymax ?? -Infinity, ...ys);
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) y1 = y0 + (Math.abs(y0) || 1) * 0.1;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => H - B - (y - y0) / (y1 - y0) * (H - TOP - B);
  const grid = [0, 0.5, 1].map(f => { const y = y0 + f * (y1 - y0), py = sy(y).toFixed(1);
    return `<line x1="${L}" x2="${W - R}" y1="${py}" y2="${py}" stroke="#e4e7eb"/>` +
      `<text x="${L - 4}" y="${(+py + 3.5).toFixed(1)}" text-anchor="end" font-size="10" fill="#616e7c">${fmtNum(y)}</text>`; }).join('');
  const axis = `<text x="${L}" y="${H - B + 14}" font-size="10" fill="#616e7c">${fmtNum(x0)}</text>` +
    `<text x="${W - R}" y="${H - B + 14}" font-size="10" text-anchor="end" fill="#616e7c">${fmtNum(x1)}</text>` +
    `<text x="${(L + W - R) / 2}" y="${H - 6}" font-size="10" text-anchor="middle" fill="#616e7c">${esc(ch.x === 'step' ? T['axis.step'] : T['axis.time'])}</text>`;
  const lines = ch.series.map((s, i) => { const c = COLORS[i % COLORS.length];
    if (s.points.length === 1) return `<circle cx="${sx(s.points[0][0]).toFixed(1)}" cy="${sy(s.points[0][1]).toFixed(1)}" r="3" fill="${c}"/>`;
    return `<polyline fill="none" stroke="${c}" stroke-width="1.6" points="${s.points.map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(' ')}"/>`; }).join('');
  return `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(ch.title)}">${grid}${axis}${lines}</svg>`;
}
function renderMonitor(m) {
  const box = document.getElementById('monitor');
  const notes = (m.notes || []).map(n => `<p class="muted monitor-note">${esc(n)}</p>`).join('');
  if (!m.charts.length) { box.innerHTML = `<p class="muted" id="monitor-status">${esc(T['monitor.none'])}</p>${notes}`; return; }
  box.innerHTML = m.charts.map(ch => {
    const n = ch.series.reduce((a, s) => a + s.points.length, 0);
    const legend = ch.series.map((s, i) => { const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      return `<span class="legend"><i style="background:${COLORS[i % COLORS.length]}"></i>${esc(s.label)} ${fmtNum(last)}${ch.unit ? ' ' + esc(ch.unit) : ''}</span>`; }).join(' ');
    return `<figure class="chart" data-chart="${esc(ch.id)}" data-kind="${esc(ch.kind)}" data-points="${n}"><figcaption>${esc(ch.title)}</figcaption>${chartSvg(ch)}<div>${legend}</div></figure>`;
  }).join('') + notes;
  box.dataset.updated = String(Date.now());
}
let monitorBusy = false;
async function loadMonitor() {
  if (!runId || monitorBusy || deleting) return;
  monitorBusy = true;
  try {
    const r = await fetch(`${base}/api/jobs/${encodeURIComponent(name)}/monitor?run=${encodeURIComponent(runId)}`, {headers: {Accept: 'application/json'}});
    if (deleting) return;
    if (!r.ok) { document.getElementById('monitor').innerHTML = `<p class="muted" id="monitor-status">${esc(tr('monitor.unavailable', {status: r.status}))}</p>`; return; }
    renderMonitor(await r.json());
  } catch (_) { /* the next refresh tries again */ } finally { monitorBusy = false; }
}
loadMonitor();

// --- delete: posted from here, the live refresh paused meanwhile, then its result page (the report) shown
const deleteForm = document.getElementById('delete-form'), deleteStatus = document.getElementById('delete-status');
deleteForm.addEventListener('submit', async e => {
  e.preventDefault();
  if (deleting) return;
  const body = new URLSearchParams(new FormData(deleteForm));
  deleting = true; button.disabled = true; deleteStatus.textContent = T['delete.pending'];
  try {
    const r = await fetch(deleteForm.action, {method: 'POST', body, credentials: 'same-origin', headers: {Accept: 'text/html'}});
    const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
    document.title = doc.title;
    document.body.replaceWith(document.adoptNode(doc.body));
  } catch (err) {
    deleting = false; button.disabled = confirmBox.value.trim() !== name;
    deleteStatus.textContent = tr('delete.failed_request', {error: err.message || err});
    refresh();  // the live refresh stopped while the delete was pending
  }
});

const tryForm = document.getElementById('try-form');
if (tryForm) {
  const promptBox = document.getElementById('try-prompt'), tryButton = document.getElementById('try-button'),
    tryStatus = document.getElementById('try-status'), answerBox = document.getElementById('try-answer');
  const show = (text, kind, meta) => { answerBox.hidden = false; answerBox.textContent = text; answerBox.dataset.state = kind;
    answerBox.className = kind === 'error' ? 'answer errors' : 'answer'; tryStatus.textContent = meta || ''; };
  const errorLine = (status, body) => {
    const detail = body && typeof body.detail === 'string' ? body.detail : '';
    if (status === 401) return T['try.not_logged_in'];
    if (status === 403 && !detail.startsWith('try it')) return T['try.not_allowed'];
    return detail || tr('try.no_answer_status', {status});
  };
  promptBox.addEventListener('keydown', e => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); tryForm.requestSubmit(); } });
  tryForm.addEventListener('submit', async e => {
    e.preventDefault();
    if (trying) return;
    trying = true; tryButton.disabled = true; answerBox.hidden = true; delete answerBox.dataset.state;
    const t0 = Date.now();
    tryStatus.textContent = T['try.answering'];
    const tick = setInterval(() => { tryStatus.textContent = tr('try.answering_s', {s: Math.round((Date.now() - t0) / 1000)}); }, 1000);
    try {
      const r = await fetch(`${base}/api/jobs/${encodeURIComponent(name)}/try`, {method: 'POST',
        headers: {'Content-Type': 'application/json', Accept: 'application/json'}, body: JSON.stringify({prompt: promptBox.value})});
      let body = null;
      try { body = await r.json(); } catch (_) { body = null; }
      clearInterval(tick);
      if (r.ok && body) show(body.answer || T['try.empty'], 'answer',
        tr('try.meta', {v: body.version, tokens: body.tokens, s: body.seconds}) + (body.stopped ? '' : T['try.stopped']));
      else show(errorLine(r.status, body), 'error');
    } catch (err) {
      clearInterval(tick);
      show(tr('try.no_answer', {error: err.message || err}), 'error');
    } finally {
      trying = false; tryButton.disabled = false;
    }
  });
}
</script>
{% endblock %}
"""

DELETED = """{% extends "layout.html" %}
{% block title %}{{ tr('deleted.title', name=name) }} · airtune{% endblock %}
{% block body %}
<div class="nav"><a href="{{ base }}/jobs">{{ tr('nav.all_jobs') }}</a></div>
{% if ok %}<h1 id="deleted">{{ tr('deleted.ok', name=name) }}</h1>{% else %}<h1 id="not-deleted">{{ tr('deleted.not', name=name) }}</h1><p class="errors" id="delete-error">{{ error }}</p>{% endif %}
{% if lines %}<ul id="report">{% for line in lines %}<li>{{ line }}</li>{% endfor %}</ul>{% endif %}
{% endblock %}
"""

ERROR = """{% extends "layout.html" %}
{% block body %}<div class="nav"><a href="{{ base }}/jobs">{{ tr('nav.all_jobs') }}</a></div><h1>{{ status }}</h1><p class="errors" id="error">{{ message }}</p>{% endblock %}
"""

_env = Environment(
    loader=DictLoader({"layout.html": LAYOUT, "jobs.html": JOBS, "job.html": JOB, "deleted.html": DELETED, "error.html": ERROR}),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
_env.filters.update(duration=_duration, when=_when, num=_num, value=_value)


@pass_context
def _state(ctx, value) -> str:
    """A run or task state in the page's language (the raw value stays in data-state and the CSS class)."""
    return i18n.state(ctx.get("lang") or "en", value)


_env.filters["state"] = _state


def _code(text) -> Markup:
    return Markup("<code>{}</code>").format(escape(text))


def render(template: str, lang: str = "en", **context) -> str:
    """`lang`: en or zh (i18n.page_lang); the page's words come from i18n's table."""
    return _env.get_template(template).render(css=CSS, active=ACTIVE, lang=lang, tr=i18n.translator(lang), code=_code,
                                              messages=i18n.script_messages(lang), **context)
