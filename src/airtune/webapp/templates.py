"""The jobs page's HTML (Jinja2, autoescaped). Plain server-rendered pages with a little script:
the detail view refreshes its task states, log tail and loss curve while the run is active, and a
finished run's view has a "Try it" box that asks the job's registered model one prompt."""

from __future__ import annotations

import json
from datetime import datetime

from jinja2 import DictLoader, Environment, select_autoescape

from airtune.status import format_duration
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
a.newjob { display: inline-block; background: var(--accent); color: #fff; border-radius: 4px; padding: 6px 14px; font-weight: 600; }
"""

LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{% block title %}airtune jobs{% endblock %}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{{ css }}</style></head>
<body>{% block body %}{% endblock %}</body></html>
"""

JOBS = """{% extends "layout.html" %}
{% block title %}Fine-tuning jobs · airtune{% endblock %}
{% block body %}
<h1>Fine-tuning jobs</h1>
<p><a class="newjob" id="new-job" href="{{ base }}/jobs/new">+ New job</a></p>
<p class="muted">Each job is one run of <code>airtune_finetune</code> (or of a retraining DAG). Start one from Airflow's trigger form or the REST API.</p>
{% if not jobs %}<p id="no-jobs">No jobs yet.</p>{% else %}
<table id="jobs">
<thead><tr><th>Name</th><th>State</th><th>Base model</th><th>Method</th><th>Stage</th><th>Started</th><th>Duration</th><th>Best metric</th><th>Runs</th></tr></thead>
<tbody>
{% for j in jobs %}
<tr data-job="{{ j.name }}">
<td><a href="{{ base }}/jobs/{{ j.name }}">{{ j.name }}</a></td>
<td><span class="state state-{{ j.state }}">{{ j.state }}</span>{% if j.progress.max_steps and j.state == 'running' %} <span class="muted">{{ j.progress.percent|default(0)|round|int }}%</span>{% endif %}</td>
<td>{{ j.base_model or '—' }}</td><td>{{ j.finetuning_method or '—' }}</td><td>{{ j.stage or '—' }}</td>
<td class="num">{{ j.start|when }}</td><td class="num">{{ j.duration_s|duration }}</td>
<td class="num">{% if j.best_metric %}{{ j.best_metric.name }} {{ j.best_metric.value|num }} <span class="muted">({{ j.best_metric.source }})</span>{% else %}—{% endif %}</td>
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
<div class="nav"><a href="{{ base }}/jobs">← all jobs</a></div>
<h1>{{ job.name }} <span id="run-state" class="state state-{{ run.state }}">{{ run.state }}</span></h1>
{% if job.errors %}<p class="errors">{% for src, err in job.errors.items() %}{{ src }} not reachable: {{ err }}<br>{% endfor %}</p>{% endif %}
<div class="grid">
<dl class="kv" id="summary">
<dt>Run</dt><dd>{{ run.dag_run_id or '—' }} <span class="muted">({{ run.dag_id or '—' }})</span></dd>
<dt>Base model</dt><dd>{{ job.spec.base_model or '—' }}</dd>
<dt>Method · stage</dt><dd>{{ job.spec.finetuning_method or 'lora' }} · {{ job.spec.stage or 'sft' }}</dd>
<dt>Datasets</dt><dd>{{ (job.spec.dataset or [])|join(', ') or '—' }}</dd>
<dt>Location</dt><dd>{{ job.spec.location or 'local' }}</dd>
<dt>Started</dt><dd>{{ run.start|when }}</dd>
<dt>Duration</dt><dd id="run-duration">{{ run.duration_s|duration }}</dd>
{% if run.progress and run.progress.max_steps %}<dt>Progress</dt><dd>step {{ run.progress.step|default(0) }} of {{ run.progress.max_steps }}</dd>{% endif %}
</dl>
<dl class="kv" id="links">
<dt>Airflow</dt><dd>{% if run.airflow_url %}<a id="airflow-link" href="{{ run.airflow_url }}" target="_top">the DAG run</a>{% else %}—{% endif %}</dd>
<dt>MLflow</dt><dd>{% if run.mlflow_url %}<a id="mlflow-link" href="{{ run.mlflow_url }}" target="_blank" rel="noopener">the run</a>{% else %}—{% endif %}
{% if job.experiment %} · <a href="{{ job.experiment.url }}" target="_blank" rel="noopener">experiment {{ job.experiment.name }}</a>{% endif %}</dd>
<dt>Registered</dt><dd id="registered">{% if run.model_version %}<a href="{{ (job.registered_model.versions|selectattr('version', 'equalto', run.model_version)|first).url }}" target="_blank" rel="noopener">{{ job.name }} version {{ run.model_version }}</a>{% if job.registered_model.best_version == run.model_version %} (alias <code>best</code>){% endif %}{% if job.registered_model.champion_version == run.model_version %} (alias <code>champion</code>){% endif %}{% elif job.registered_model.versions %}{{ job.registered_model.versions|length }} version(s); this run: none yet{% else %}not yet{% endif %}</dd>
{% if job.registered_model.uri %}<dt>Load it</dt><dd><code>{{ job.registered_model.uri }}</code></dd>{% endif %}
{% if run.metrics %}<dt>Metrics</dt><dd>{% for k, v in run.metrics.items() %}{{ k }} {{ v|num }}{% if not loop.last %} · {% endif %}{% endfor %}</dd>{% endif %}
<dt>Files</dt><dd>{{ job.folder or '—' }}</dd>
</dl>
</div>
{% if job.try_it %}{% set t = job.try_it %}
<h2>Try it</h2>
<div class="try" id="try">
{% if t.available %}
<p class="muted" id="try-about">Answered by <b>{{ job.name }} version {{ t.version }}</b> ({{ t.chosen_by }}), as <code>airtune generate</code> answers: greedy decoding (the same prompt gets the same answer), at most {{ t.max_new_tokens }} new tokens, by a process of its own on the machine running Airflow's api-server (loading the model takes a few seconds). One prompt at a time, up to {{ '{:,}'.format(t.max_prompt) }} characters.</p>
<form id="try-form">
<textarea id="try-prompt" name="prompt" rows="3" placeholder="A prompt for the model (Enter answers, Shift+Enter starts a new line)"></textarea>
<div><button class="primary" type="submit" id="try-button">Answer</button> <span class="muted" id="try-status"></span></div>
</form>
<div class="answer" id="try-answer" hidden></div>
{% else %}<p class="muted" id="try-note">{{ t.note }}</p>{% endif %}
</div>{% endif %}
{% if job.runs|length > 1 %}<h2>Runs</h2><p>{% for r in job.runs %}<a href="{{ base }}/jobs/{{ job.name }}?run={{ r.dag_run_id|urlencode }}">{{ r.dag_run_id }}</a> <span class="state state-{{ r.state }}">{{ r.state }}</span>{% if not loop.last %} · {% endif %}{% endfor %}</p>{% endif %}

<h2>Tasks</h2>
<table id="tasks"><thead><tr><th>Task</th><th>State</th><th>Try</th><th>Started</th><th>Duration</th><th>Pool</th></tr></thead>
<tbody>{% for t in job.tasks %}<tr data-task="{{ t.task_id }}"><td><a href="{{ t.url }}" target="_top">{{ t.task_id }}</a></td><td><span class="state state-{{ t.state }}">{{ t.state or 'none' }}</span></td><td class="num">{{ t.try_number }}</td><td class="num">{{ t.start|when }}</td><td class="num">{{ t.duration_s|duration }}</td><td>{{ t.pool }}</td></tr>{% endfor %}</tbody></table>

<h2>Log <span class="muted" id="log-task"></span></h2>
<p class="muted" id="log-tasks">{% for t in job.tasks if t.try_number %}<a href="#log" data-log-task="{{ t.task_id }}">{{ t.task_id }}</a>{% if not loop.last %} · {% endif %}{% endfor %}</p>
<pre class="log" id="log">{% if not run.dag_run_id %}no run{% else %}loading…{% endif %}</pre>

<h2>Loss curve</h2>
{% if job.has_metrics %}<img class="curves" id="curves" alt="training loss, eval loss and learning rate over steps" src="{{ base }}/jobs/{{ job.name }}/curves.png?run={{ run.dag_run_id|urlencode }}">
{% else %}<p class="muted" id="no-curves">no metrics yet</p>{% endif %}

{% if job.evaluation %}{% set ev = job.evaluation %}
<h2>Evaluation</h2>
<p class="muted" id="eval-about">The evaluate task scored {% if ev.base_model %}the model the job started from ({{ ev.base_model }}){% else %}the model the job started from{% endif %}{% if 'champion' in ev.sources %}, the champion (version {{ ev.champion_version }}){% endif %} and the tuned model on {{ ev.samples or 0 }} held-out prompts (greedy answers; ROUGE and BLEU-4 as LLaMA-Factory computes them, 0–100; eval_loss lower is better).</p>
<table id="evaluation"><thead><tr><th>Metric</th>{% for s in ev.sources %}<th class="num">{{ {'base': 'base model', 'champion': 'champion', 'tuned': 'tuned'}[s] }}</th>{% endfor %}</tr></thead><tbody>
{% for k in ev.keys %}<tr><td><code>{{ k }}</code></td>{% for s in ev.sources %}<td class="num">{{ ev.figures[s][k]|num if ev.figures[s][k] is defined else '—' }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table>
{% if ev.promotion %}<p id="promotion"><b>Promotion</b> ({{ ev.promotion.mode }}, on <code>{{ ev.promotion.metric }}</code>): <span class="state state-{{ 'success' if ev.promotion.outcome == 'promoted' else 'skipped' }}">{{ ev.promotion.outcome }}</span> {{ ev.promotion.reason }}{% if ev.promotion.by and ev.promotion.by != 'policy' %} · decided by {{ ev.promotion.by }}{% endif %}</p>{% endif %}
{% if ev.predictions %}<details id="predictions"><summary>{{ ev.predictions|length }} answers side by side</summary>
<table><thead><tr><th>Prompt</th><th>Reference</th><th>Base model</th><th>Tuned</th></tr></thead><tbody>
{% for p in ev.predictions %}<tr><td>{{ p.prompt }}</td><td>{{ p.reference }}</td><td>{{ p.base }}</td><td>{{ p.tuned }}</td></tr>{% endfor %}
</tbody></table></details>{% endif %}
{% endif %}

<h2>Checkpoints</h2>
{% if job.checkpoints %}<table id="checkpoints"><thead><tr><th>Checkpoint</th><th>Folder</th></tr></thead><tbody>
{% for c in job.checkpoints %}<tr><td>{{ c.name }}{% if c.best %} <span class="state state-success">best</span>{% endif %}</td><td class="muted">{{ c.path }}{% if not c.on_disk %} (removed: save_total_limit){% endif %}</td></tr>{% endfor %}
</tbody></table>{% else %}<p class="muted">none yet</p>{% endif %}
{% if job.result %}<p class="muted">{{ job.result.global_step }} steps; training loss {{ job.result.train_loss_first|num }} → {{ job.result.train_loss_last|num }}{% if job.result.eval_loss is not none %}; eval loss {{ job.result.eval_loss|num }}{% endif %}</p>{% endif %}

<h2>Resolved spec</h2>
{% if not job.spec_is_resolved %}<p class="muted">validate has not written the resolved spec{% if run.state in active %} yet{% endif %}; this is the conf the run was triggered with.</p>{% endif %}
<table id="spec"><tbody>{% for k, v in job.spec.items() %}<tr><td><code>{{ k }}</code></td><td>{{ v|value }}</td></tr>{% endfor %}</tbody></table>
{% if job.resolved %}<details><summary>the whole resolved spec (spec.json)</summary><pre class="log">{{ job.resolved|tojson(indent=2) }}</pre></details>{% endif %}

<details class="danger" id="delete"><summary>Delete this job…</summary>
<p>Deleting <b>{{ job.name }}</b> removes, for good: its {{ job.runs|length }} run(s) in Airflow and MLflow with their metrics, logs and artefacts{% if job.registered_model.versions %}, the registered model <b>{{ job.name }}</b> and its {{ job.registered_model.versions|length }} version(s){% endif %}{% if job.folder %}, and its files{% endif %}. The name becomes free again.</p>
<form method="post" action="{{ base }}/jobs/{{ job.name }}/delete" id="delete-form">
<label>Type the job's name to confirm: <input type="text" name="confirm" id="delete-confirm" autocomplete="off" placeholder="{{ job.name }}"></label>
{% if job.runs|selectattr('state', 'in', active)|list %}<label><input type="checkbox" name="force" value="true"> cancel its active run first</label>{% endif %}
<button class="delete" type="submit" id="delete-button" disabled>Delete {{ job.name }}</button>
</form></details>

<script>
const base = {{ base|tojson }}, name = {{ job.name|tojson }}, runId = {{ (run.dag_run_id or '')|tojson }};
const active = {{ active|list|tojson }};
let state = {{ (run.state or '')|tojson }}, logTask = null;
let trying = false;  // an answer in progress ("Try it"): the page is not reloaded under it
document.querySelectorAll('[data-log-task]').forEach(a => a.addEventListener('click', e => {
  e.preventDefault(); logTask = a.dataset.logTask; refresh(true); }));
const confirmBox = document.getElementById('delete-confirm'), button = document.getElementById('delete-button');
confirmBox.addEventListener('input', () => { button.disabled = confirmBox.value.trim() !== name; });
function esc(s) { return String(s ?? '').replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c])); }
function dur(s) { if (s == null) return '—'; s = Math.floor(s); const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
  return h ? `${h}h ${String(m).padStart(2, '0')}m` : (m ? `${m}m ${String(r).padStart(2, '0')}s` : `${r}s`); }
function when(t) { if (!t) return '—'; const d = new Date(t); return isNaN(d) ? t : d.toLocaleString('sv-SE'); }
async function refresh(once) {
  if (!runId) return;
  const task = logTask ? `&task=${encodeURIComponent(logTask)}` : '';
  const r = await fetch(`${base}/api/jobs/${encodeURIComponent(name)}/live?run=${encodeURIComponent(runId)}${task}`, {headers: {Accept: 'application/json'}});
  if (!r.ok) { document.getElementById('log').textContent = `log not available (${r.status})`; return; }
  const live = await r.json();
  document.getElementById('log').textContent = live.log.lines.join('\\n') || '(empty)';
  document.getElementById('log-task').textContent = live.log.task_id ? `· ${live.log.task_id}, try ${live.log.try_number} (last ${live.log.lines.length} lines)` : '';
  const pre = document.getElementById('log'); pre.scrollTop = pre.scrollHeight;
  document.querySelector('#tasks tbody').innerHTML = live.tasks.map(t =>
    `<tr data-task="${esc(t.task_id)}"><td><a href="${esc(t.url)}" target="_top">${esc(t.task_id)}</a></td><td><span class="state state-${esc(t.state)}">${esc(t.state || 'none')}</span></td>` +
    `<td class="num">${t.try_number}</td><td class="num">${when(t.start)}</td><td class="num">${dur(t.duration_s)}</td><td>${esc(t.pool)}</td></tr>`).join('');
  const badge = document.getElementById('run-state'); badge.textContent = live.state; badge.className = `state state-${live.state}`;
  document.getElementById('run-duration').textContent = dur(live.duration_s);
  const img = document.getElementById('curves'); if (img) img.src = img.src.replace(/&t=\\d+$/, '') + `&t=${Date.now()}`;
  // finished: show checkpoints, version. (The Try it box is on finished runs only, so no answer is waiting then.)
  if (active.includes(state) && !active.includes(live.state) && !trying) { location.reload(); return; }
  state = live.state;
  if (active.includes(state) && !once) setTimeout(refresh, 3000);
}
refresh();

const tryForm = document.getElementById('try-form');
if (tryForm) {
  const promptBox = document.getElementById('try-prompt'), tryButton = document.getElementById('try-button'),
    tryStatus = document.getElementById('try-status'), answerBox = document.getElementById('try-answer');
  const show = (text, kind, meta) => { answerBox.hidden = false; answerBox.textContent = text; answerBox.dataset.state = kind;
    answerBox.className = kind === 'error' ? 'answer errors' : 'answer'; tryStatus.textContent = meta || ''; };
  const errorLine = (status, body) => {
    const detail = body && typeof body.detail === 'string' ? body.detail : '';
    if (status === 401) return 'not logged in (any more): reload the page and log in';
    if (status === 403 && !detail.startsWith('try it')) return 'not allowed: trying a model needs the permission to trigger runs of airtune_finetune';
    return detail || `no answer: the server answered ${status}`;
  };
  promptBox.addEventListener('keydown', e => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); tryForm.requestSubmit(); } });
  tryForm.addEventListener('submit', async e => {
    e.preventDefault();
    if (trying) return;
    trying = true; tryButton.disabled = true; answerBox.hidden = true; delete answerBox.dataset.state;
    const t0 = Date.now();
    tryStatus.textContent = 'answering…';
    const tick = setInterval(() => { tryStatus.textContent = `answering… ${Math.round((Date.now() - t0) / 1000)} s`; }, 1000);
    try {
      const r = await fetch(`${base}/api/jobs/${encodeURIComponent(name)}/try`, {method: 'POST',
        headers: {'Content-Type': 'application/json', Accept: 'application/json'}, body: JSON.stringify({prompt: promptBox.value})});
      let body = null;
      try { body = await r.json(); } catch (_) { body = null; }
      clearInterval(tick);
      if (r.ok && body) show(body.answer || '(an empty answer: the model ended its turn at once)', 'answer',
        `version ${body.version} · ${body.tokens} tokens · ${body.seconds} s${body.stopped ? '' : ' · stopped at the token limit'}`);
      else show(errorLine(r.status, body), 'error');
    } catch (err) {
      clearInterval(tick);
      show(`no answer: ${err.message || err}`, 'error');
    } finally {
      trying = false; tryButton.disabled = false;
    }
  });
}
</script>
{% endblock %}
"""

DELETED = """{% extends "layout.html" %}
{% block title %}delete {{ name }} · airtune{% endblock %}
{% block body %}
<div class="nav"><a href="{{ base }}/jobs">← all jobs</a></div>
{% if ok %}<h1 id="deleted">Deleted job {{ name }}</h1>{% else %}<h1 id="not-deleted">Job {{ name }} was not deleted</h1><p class="errors">{{ error }}</p>{% endif %}
{% if lines %}<ul id="report">{% for line in lines %}<li>{{ line }}</li>{% endfor %}</ul>{% endif %}
{% endblock %}
"""

ERROR = """{% extends "layout.html" %}
{% block body %}<div class="nav"><a href="{{ base }}/jobs">← all jobs</a></div><h1>{{ status }}</h1><p class="errors" id="error">{{ message }}</p>{% endblock %}
"""

_env = Environment(
    loader=DictLoader({"layout.html": LAYOUT, "jobs.html": JOBS, "job.html": JOB, "deleted.html": DELETED, "error.html": ERROR}),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
_env.filters.update(duration=_duration, when=_when, num=_num, value=_value)


def render(template: str, **context) -> str:
    return _env.get_template(template).render(css=CSS, active=ACTIVE, **context)
