"""The create wizard's page (/airtune/create): the seed platform's three steps (任务基本信息, 任务配置,
高级配置) with sections 4 and 5 of the field table collapsed under the last one, a pre-flight panel and
the dataset preview. Every field, label and help text comes from spec.FIELDS (create.sections), the
options from the catalog and the finished jobs (create.choices); the checks are the server's
(POST api/create/check, the code `airtune validate` runs): this page only shows them."""

from __future__ import annotations

from jinja2 import DictLoader, Environment, select_autoescape
from markupsafe import Markup

from airtune.webapp import templates

UI = {
    "en": {
        "title": "New fine-tuning job", "back": "← all jobs", "next": "Next", "prev": "Back", "submit": "Start the job",
        "preflight": "Pre-flight", "auto": "Resolved automatically", "memory": "GPU memory (estimate, per process)",
        "certain": "whatever the rows' lengths", "with_rows": "with rows of {n} tokens", "available": "the GPU has",
        "fits_yes": "fits", "fits_no": "does not fit", "fits_depends": "fits only if the data's rows are shorter",
        "cpu": "trains on the CPU: no GPU memory to check", "steps": "Steps per epoch", "total_steps": "Optimizer steps in all",
        "tokens": "Tokens per epoch", "trained_tokens": "of which trained (answers)", "time": "Training time (estimate)",
        "needs_preview": "after the dataset preview", "preview": "Dataset preview", "preview_button": "Preview the data",
        "preview_note": "The first rows of the training split, as the data step prepares them (the same code and cache as prepare_dataset; it follows the form once the job has no errors): grey is the prompt, masked from the loss; green is what the model is trained to answer.",
        "lengths": "Token lengths of every row before truncation (cutoff_len {c})", "truncated": "truncated to cutoff_len",
        "dropped": "dropped (nothing left to train on)", "rejected": "rejected (failed their checks)", "rows_used": "training rows",
        "errors": "{n} error(s): fix them to start the job", "checking": "checking…", "ok": "no errors",
        "none": "(empty)", "default": "default", "further": "more options", "warnings": "Warnings", "starting": "starting…",
        "refused_memory": "refused before submit: the job does not fit its GPU",
        "other_field": "(rule with {f})", "accepted": "accepted", "preview_running": "preparing the preview…",
        "estimate_label": "estimate",
    },
    "zh": {
        "title": "新建微调任务", "back": "← 全部任务", "next": "下一步", "prev": "上一步", "submit": "创建任务",
        "preflight": "运行前检查", "auto": "自动确定的取值", "memory": "显存（估算，每个进程）",
        "certain": "与数据行长度无关的部分", "with_rows": "数据行为 {n} 个token时", "available": "GPU显存",
        "fits_yes": "够用", "fits_no": "不够用", "fits_depends": "仅当数据行较短时够用",
        "cpu": "在CPU上训练：无需检查显存", "steps": "每轮步数", "total_steps": "总优化步数",
        "tokens": "每轮token数", "trained_tokens": "其中参与训练的（回答）", "time": "训练时长（估算）",
        "needs_preview": "数据预览之后显示", "preview": "数据预览", "preview_button": "预览数据",
        "preview_note": "训练集的前几行，与数据准备步骤相同的代码和缓存（任务没有错误后随表单自动更新）：灰色为提示词（不计入损失），绿色为模型学习回答的部分。",
        "lengths": "每行截断前的token长度（截断长度 {c}）", "truncated": "被截断到截断长度",
        "dropped": "被丢弃（没有可训练的内容）", "rejected": "被拒绝（未通过检查）", "rows_used": "训练行数",
        "errors": "{n} 个错误：改正后才能创建任务", "checking": "检查中…", "ok": "没有错误",
        "none": "（留空）", "default": "默认", "further": "更多选项", "warnings": "警告", "starting": "创建中…",
        "refused_memory": "提交前被拒绝：显存不够",
        "other_field": "（与 {f} 相关）", "accepted": "可接受", "preview_running": "正在准备预览…",
        "estimate_label": "估算",
    },
}

CSS = """
.wizard { display: grid; grid-template-columns: minmax(520px, 1fr) 420px; gap: 24px; align-items: start; }
.steps { display: flex; gap: 4px; margin-bottom: 12px; } .steps button { border: 1px solid var(--line); background: var(--head); padding: 6px 14px; border-radius: 4px 4px 0 0; cursor: pointer; font: inherit; }
.steps button.current { background: #fff; border-bottom-color: #fff; font-weight: 600; color: var(--accent); }
.steps .count { background: #c92a2a; color: #fff; border-radius: 8px; padding: 0 6px; font-size: 11px; margin-left: 4px; }
.step { display: none; } .step.current { display: block; }
.field { margin: 0 0 12px; } .field > label.name { display: block; font-weight: 600; margin-bottom: 2px; }
.field .req { color: #c92a2a; } .field .help { color: var(--muted); font-size: 12px; margin-top: 2px; }
.field input[type=text], .field select, .field textarea { width: 100%; max-width: 560px; padding: 5px 8px; border: 1px solid #cbd2d9; border-radius: 4px; font: inherit; background: #fff; }
.field.bad input[type=text], .field.bad select, .field.bad textarea, .field.bad .multi { border-color: #c92a2a; background: #fff5f5; }
.field .multi { display: flex; flex-wrap: wrap; gap: 4px 14px; border: 1px solid transparent; border-radius: 4px; padding: 2px; }
.field-error { color: #c92a2a; font-size: 13px; margin-top: 2px; } .field-error div { margin-top: 2px; }
details.more { border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; margin: 12px 0; } details.more summary { cursor: pointer; font-weight: 600; }
.panel { position: sticky; top: 8px; border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; font-size: 13px; }
.panel h2 { margin: 4px 0 8px; } .panel h3 { font-size: 13px; margin: 12px 0 4px; }
.bar { height: 10px; background: #e4e7eb; border-radius: 5px; overflow: hidden; position: relative; } .bar span { display: block; height: 100%; background: #37b24d; }
.bar.no span { background: #c92a2a; } .bar.depends span { background: #f59f00; }
.verdict-no { color: #c92a2a; font-weight: 600; } .verdict-yes { color: #1e7d32; font-weight: 600; } .verdict-depends { color: #8d6e00; font-weight: 600; }
#submit-reason { color: #c92a2a; margin-top: 6px; } .navbtns { margin-top: 12px; display: flex; gap: 8px; }
button.secondary { background: #fff; border: 1px solid #cbd2d9; border-radius: 4px; padding: 6px 14px; cursor: pointer; font: inherit; }
.prow { border: 1px solid var(--line); border-radius: 4px; margin: 6px 0; padding: 6px 8px; font: 12px/1.4 ui-monospace, monospace; white-space: pre-wrap; word-break: break-word; }
.prow .seg-prompt { background: #f1f3f5; color: #616e7c; } .prow .seg-trained { background: #d3f9d8; color: #1e4620; }
.prow .meta { font: 11px system-ui, sans-serif; color: var(--muted); display: block; margin-bottom: 2px; }
.hist { display: grid; grid-template-columns: 110px 1fr 48px; gap: 2px 8px; font-size: 12px; align-items: center; }
.hist .b { height: 10px; background: #74c0fc; border-radius: 2px; } .hist .b.over { background: #ff8787; }
"""

WIZARD = """{% extends "layout.html" %}
{% block title %}{{ t.title }} · airtune{% endblock %}
{% block body %}
<div class="nav"><a href="{{ base }}/jobs">{{ t.back }}</a></div>
<h1>{{ t.title }}</h1>
<div class="wizard">
<form id="wizard" autocomplete="off" novalidate>
<div class="steps" role="tablist">{% for s in sections[:3] %}<button type="button" role="tab" data-step="{{ loop.index0 }}" id="tab-{{ loop.index0 }}">{{ s.number }}. {{ s.title }}<span class="count" hidden></span></button>{% endfor %}</div>
{% macro field(f) %}
<div class="field" id="field-{{ f.name }}" data-field="{{ f.name }}" data-kind="{{ f.kind }}">
<label class="name" for="in-{{ f.name }}">{{ f.label }}{% if f.required %} <span class="req">*</span>{% endif %} <code class="muted" style="font-weight:400">{{ f.name }}</code></label>
{% set opts = choices.get(f.name) %}
{% if f.name == 'gpu_type' %}<select id="in-gpu_type" name="gpu_type"></select>
{% elif f.name in ('parent_job', 'reward_model') %}<select id="in-{{ f.name }}" name="{{ f.name }}"><option value="">{{ t.none }}</option>{% for o in opts %}<option value="{{ o.value }}"{% if o.base_model %} data-base-model="{{ o.base_model }}"{% endif %}>{{ o.label }}</option>{% endfor %}</select>
{% elif f.kind == 'names' and opts %}<div class="multi" id="in-{{ f.name }}">{% for o in opts or [] %}<label><input type="checkbox" name="{{ f.name }}" value="{{ o.value }}"> {{ o.label }}</label>{% endfor %}</div>
{% elif f.kind == 'bool' %}<label><input type="checkbox" id="in-{{ f.name }}" name="{{ f.name }}"{% if f.default %} checked{% endif %}> {{ f.label }}</label>
{% elif opts is not none %}<select id="in-{{ f.name }}" name="{{ f.name }}">{% if not f.required and f.default is none %}<option value="">{{ f.empty_label }}</option>{% elif f.required %}<option value="">—</option>{% endif %}{% for o in opts %}<option value="{{ o.value }}"{% if o.value == f.default %} selected{% endif %}>{{ o.label }}</option>{% endfor %}</select>
{% elif f.kind == 'object' %}<textarea id="in-{{ f.name }}" name="{{ f.name }}" rows="2" placeholder="{}"></textarea>
{% else %}<input type="text" id="in-{{ f.name }}" name="{{ f.name }}" value="{{ '' if f.default is none or f.default is mapping else f.default }}"{% if f.kind in ('int', 'float') %} inputmode="decimal"{% endif %}>
{% endif %}
<div class="help">{{ f.help }}</div>
<div class="field-error" id="err-{{ f.name }}" hidden></div>
</div>
{% endmacro %}
{% for s in sections[:3] %}<section class="step" data-step="{{ loop.index0 }}" id="step-{{ loop.index0 }}"><h2>{{ s.title }}</h2>
{% for f in s.fields %}{{ field(f) }}{% endfor %}
{% if loop.last %}{% for more in sections[3:] %}<details class="more" id="section-{{ more.number }}"><summary>{{ more.title }} ({{ t.further }})</summary>
{% for f in more.fields %}{{ field(f) }}{% endfor %}</details>{% endfor %}{% endif %}
</section>{% endfor %}
<div class="navbtns"><button type="button" class="secondary" id="prev">{{ t.prev }}</button><button type="button" class="secondary" id="next">{{ t.next }}</button></div>

<h2>{{ t.preview }}</h2>
<p class="muted">{{ t.preview_note }}</p>
<button type="button" class="secondary" id="preview-button">{{ t.preview_button }}</button> <span class="muted" id="preview-status"></span>
<div id="preview"></div>
</form>

<aside class="panel" id="preflight">
<h2>{{ t.preflight }}</h2>
<div id="check-status" class="muted">{{ t.checking }}</div>
<h3>{{ t.memory }}</h3><div id="memory"></div>
<h3>{{ t.steps }} · {{ t.tokens }} · {{ t.time }}</h3><dl class="kv" id="figures"><dt>{{ t.steps }}</dt><dd class="muted">{{ t.needs_preview }}</dd></dl>
<h3>{{ t.auto }}</h3><dl class="kv" id="auto"></dl>
<div id="warnings"></div>
<div style="margin-top:12px"><button type="button" class="primary" id="submit" disabled>{{ t.submit }}</button>
<div id="submit-reason"></div></div>
</aside>
</div>

<script>
const base = {{ base|tojson }}, lang = {{ lang|tojson }}, T = {{ t|tojson }};
const CHOICES = {{ choices|tojson }}, SECTIONS = {{ sections|tojson }};
const FIELDS = SECTIONS.flatMap(s => s.fields), LABEL = Object.fromEntries(FIELDS.map(f => [f.name, f.label]));
const stepOf = {}; SECTIONS.forEach((s, i) => s.fields.forEach(f => { stepOf[f.name] = Math.min(i, 2); }));
const $ = id => document.getElementById(id);
function esc(s) { return String(s ?? '').replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c])); }
function fmt(n) { return n == null ? '—' : Number(n).toLocaleString('en-US'); }
function dur(s) { if (s == null) return '—'; if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`; const m = Math.round(s / 60);
  return m < 60 ? `${m} min` : `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`; }
let step = 0;
function show(n) { step = Math.max(0, Math.min(2, n));
  document.querySelectorAll('.step').forEach(el => el.classList.toggle('current', +el.dataset.step === step));
  document.querySelectorAll('.steps button').forEach(el => el.classList.toggle('current', +el.dataset.step === step));
  $('prev').disabled = step === 0; $('next').disabled = step === 2; }
document.querySelectorAll('.steps button').forEach(b => b.addEventListener('click', () => show(+b.dataset.step)));
$('prev').addEventListener('click', () => show(step - 1)); $('next').addEventListener('click', () => show(step + 1));
show(0);

// gpu_type: the chosen location's GPU types only
function fillGpuTypes() {
  const loc = $('in-location').value, sel = $('in-gpu_type'), keep = sel.value, entry = CHOICES.gpu_type[loc];
  sel.innerHTML = '';
  if (!entry) return;
  for (const g of entry.types) { const o = document.createElement('option'); o.value = g.value;
    o.textContent = g.value === entry.default ? `${g.label} (${T.default})` : g.label; sel.appendChild(o); }
  sel.value = entry.types.some(g => g.value === keep) ? keep : entry.default;
}
// parent_job: finished jobs with the chosen base_model
function filterParents() {
  const bm = $('in-base_model').value, sel = $('in-parent_job');
  for (const o of sel.options) if (o.value) o.hidden = !!bm && o.dataset.baseModel !== bm;
  if (sel.selectedOptions[0] && sel.selectedOptions[0].hidden) sel.value = '';
}
fillGpuTypes(); filterParents();

function number(text) { const t = text.trim(); return /^[-+]?(\\d+\\.?\\d*|\\.\\d+)([eE][-+]?\\d+)?$/.test(t) ? Number(t) : t; }
function values() {
  const out = {};
  for (const f of FIELDS) {
    const el = $(`in-${f.name}`); if (!el) continue;
    let v;
    if (f.kind === 'names' && el.tagName === 'DIV') v = [...el.querySelectorAll('input:checked')].map(i => i.value);
    else if (f.kind === 'names') v = el.value.split(',').map(x => x.trim()).filter(Boolean);
    else if (f.kind === 'bool') { v = el.checked; if (v === !!f.default) continue; }
    else if (f.kind === 'object') { const t = el.value.trim(); if (!t) continue; try { v = JSON.parse(t); } catch (_) { v = t; } }
    else if (f.kind === 'int' || f.kind === 'float') v = number(el.value);
    else v = el.value.trim();
    if (v === '' || v == null || (Array.isArray(v) && !v.length)) continue;
    out[f.name] = v;
  }
  return out;
}

let lastCheck = null, lastPreview = null, checkSeq = 0, timer = null, submitting = false;
function setFieldErrors(result) {
  document.querySelectorAll('.field').forEach(el => el.classList.remove('bad'));
  document.querySelectorAll('.field-error').forEach(el => { el.hidden = true; el.innerHTML = ''; });
  const counts = [0, 0, 0];
  for (const [field, idxs] of Object.entries(result.by_field)) {
    const box = $(`err-${field}`); if (!box) continue;
    box.hidden = false; $(`field-${field}`).classList.add('bad');
    box.innerHTML = idxs.map(i => { const e = result.errors[i], own = e.field.split('.')[0] === field;
      const head = own ? (e.field !== field ? `${esc(e.field)}: ` : '') : esc(T.other_field.replace('{f}', LABEL[e.field.split('.')[0]] || e.field)) + ' ';
      const acc = own && e.accepted ? ` <span class="muted">(${esc(T.accepted)}: ${esc(e.accepted)})</span>` : '';
      return `<div data-error-of="${esc(e.field)}">${head}${esc(e.value)} — ${esc(e.message)}${acc}</div>`; }).join('');
    if (stepOf[field] != null) counts[stepOf[field]] += 1;
  }
  document.querySelectorAll('.steps button').forEach((b, i) => { const c = b.querySelector('.count'); c.hidden = !counts[i]; c.textContent = counts[i]; });
}
function renderMemory(r) {
  const e = r.estimate || {}, box = $('memory');
  if (e.gpu_memory_gib_per_process == null) { box.innerHTML = `<span class="muted">${esc(T.cpu)}</span>`; return; }
  const avail = e.gpu_memory_gib_available, fits = r.fits;
  const verdict = fits ? `<span id="memory-verdict" class="verdict-${fits}" data-fits="${fits}">${esc(T['fits_' + fits])}</span>` : '';
  const pct = avail ? Math.min(100, 100 * e.gpu_memory_gib_per_process / avail) : 0;
  const parts = Object.entries(e.parts_gib || {}).map(([k, v]) => `${k} ${v}`).join(' · ');
  box.innerHTML = `<div>${esc(T.estimate_label)}: <b id="memory-certain">${e.gpu_memory_gib_certain} GiB</b> ${esc(T.certain)}; <b id="memory-total">${e.gpu_memory_gib_per_process} GiB</b> ${esc(T.with_rows.replace('{n}', e.row_tokens))}` +
    (avail ? `; ${esc(T.available)} <b id="memory-available">${avail} GiB</b> — ${verdict}` : '') + `</div>` +
    (avail ? `<div class="bar ${fits || ''}"><span style="width:${pct}%"></span></div>` : '') + `<div class="muted">${esc(parts)}</div>`;
}
function renderAuto(r) {
  $('auto').innerHTML = Object.entries(r.auto).map(([k, v]) => `<dt>${esc(LABEL[k] || k)}</dt><dd data-auto="${esc(k)}">${esc(typeof v === 'object' ? JSON.stringify(v) : v)}</dd>`).join('');
  $('warnings').innerHTML = r.warnings.length ? `<h3>${esc(T.warnings)}</h3><ul>${r.warnings.map(w => `<li>${esc(w)}</li>`).join('')}</ul>` : '';
}
function renderFigures() {
  const p = lastPreview, box = $('figures');
  if (!p || !p.figures) { box.innerHTML = `<dt>${esc(T.steps)}</dt><dd class="muted">${esc(T.needs_preview)}</dd>`; return; }
  const f = p.figures, te = p.time_estimate;
  box.innerHTML = `<dt>${esc(T.steps)}</dt><dd id="steps-per-epoch">${fmt(f.steps_per_epoch)}</dd><dt>${esc(T.total_steps)}</dt><dd id="total-steps">${fmt(f.total_steps)}</dd>` +
    `<dt>${esc(T.tokens)}</dt><dd id="tokens-per-epoch">${fmt(f.tokens_per_epoch)}${f.trained_tokens_per_epoch != null ? ` <span class="muted">(${esc(T.trained_tokens)} ${fmt(f.trained_tokens_per_epoch)})</span>` : ''}</dd>` +
    `<dt>${esc(T.time)}</dt><dd id="time-estimate">${te ? `≈ ${dur(te.seconds)} <span class="muted">(${esc(T.estimate_label)})</span><div class="muted" id="time-how">${esc(te.how)}</div>` : '—'}</dd>` +
    (p.memory_with_data && p.memory_with_data.refusal ? `<dt></dt><dd class="errors" id="memory-with-data">${esc(p.memory_with_data.refusal)}</dd>` : '');
}
function updateSubmit() {
  const b = $('submit'), reason = $('submit-reason');
  let why = '';
  if (!lastCheck) why = T.checking;
  else if (lastCheck.fits === 'no') why = `${T.refused_memory}: ${lastCheck.refusal || ''}`;
  else if (!lastCheck.ok) why = T.errors.replace('{n}', lastCheck.errors.length) + ' — ' + lastCheck.errors.slice(0, 3).map(e => `${LABEL[e.field.split('.')[0]] || e.field}: ${e.message}`).join('; ');
  else if (lastPreview && lastPreview.memory_with_data && lastPreview.memory_with_data.refusal) why = `${T.refused_memory}: ${lastPreview.memory_with_data.refusal}`;
  b.disabled = !!why || submitting; reason.textContent = why; reason.dataset.reason = lastCheck && lastCheck.fits === 'no' ? 'memory' : (why ? 'errors' : '');
}
async function check() {
  const seq = ++checkSeq; $('check-status').textContent = T.checking;
  const r = await fetch(`${base}/api/create/check`, {method: 'POST', headers: {'Content-Type': 'application/json', Accept: 'application/json'},
    body: JSON.stringify({values: values(), lang})});
  if (seq !== checkSeq) return;
  if (!r.ok) { $('check-status').textContent = `check failed (${r.status})`; return; }
  lastCheck = await r.json();
  $('check-status').textContent = lastCheck.ok ? T.ok : T.errors.replace('{n}', lastCheck.errors.length);
  $('check-status').className = lastCheck.ok ? 'verdict-yes' : 'errors';
  setFieldErrors(lastCheck); renderMemory(lastCheck); renderAuto(lastCheck); updateSubmit();
  maybePreview();
}
// The preview follows the form: once the job checks out, again whenever a value changes (the server
// answers from its cache unless the data, template, tokenizer or the figures' values changed).
let previewing = false, previewKey = null;
function maybePreview() {
  if (!lastCheck || !lastCheck.ok || previewing) return;
  const v = values(); delete v.name;
  const key = JSON.stringify(v);
  if (key !== previewKey) { previewKey = key; preview(); }
}
function schedule() { clearTimeout(timer); timer = setTimeout(check, 250); }
document.getElementById('wizard').addEventListener('input', schedule);
document.getElementById('wizard').addEventListener('change', e => {
  if (e.target.id === 'in-location') fillGpuTypes();
  if (e.target.id === 'in-base_model') filterParents();
  schedule(); });
check();

function renderPreview(p) {
  const m = p.manifest, L = p.lengths, max = Math.max(1, ...L.bins.map(b => b.rows));
  const rows = p.rows.map((r, i) => `<div class="prow" data-row="${i}"><span class="meta">#${i + 1} · ${r.tokens} tokens</span>` +
    r.parts.map(s => `<span class="seg-${s.trained ? 'trained' : 'prompt'}" data-part="${esc(s.name)}" title="${esc(s.name)} · ${s.tokens} tokens">${esc(s.text)}</span>`).join('') +
    (r.values && Object.keys(r.values).length ? `<span class="meta">${esc(JSON.stringify(r.values))}</span>` : '') + `</div>`).join('');
  const hist = L.bins.map(b => `<span>${b.to == null ? '> ' + (b.from - 1) : b.from + '–' + b.to}</span><div><div class="b${b.to == null ? ' over' : ''}" style="width:${100 * b.rows / max}%"></div></div><span class="num">${b.rows}</span>`).join('');
  const dropped = Object.values(m.dropped_rows || {}).reduce((a, b) => a + b, 0);
  return `<dl class="kv" id="preview-counts"><dt>${esc(T.rows_used)}</dt><dd id="count-rows">${fmt(m.rows.train)}${m.rows.validation ? ' + ' + fmt(m.rows.validation) + ' validation' : ''}</dd>` +
    `<dt>${esc(T.truncated)}</dt><dd id="count-truncated">${fmt(m.truncated_rows)}</dd><dt>${esc(T.dropped)}</dt><dd id="count-dropped">${fmt(dropped)}</dd>` +
    `<dt>${esc(T.rejected)}</dt><dd id="count-rejected">${fmt(m.skipped_rows)}</dd></dl>` +
    `<h3>${esc(T.lengths.replace('{c}', L.cutoff_len))}</h3><p class="muted">min ${L.min} · median ${L.median} · p90 ${L.p90} · max ${L.max} (${esc(L.source)})</p><div class="hist" id="histogram">${hist}</div>` +
    `<div id="preview-rows">${rows}</div>`;
}
async function preview() {
  previewing = true; $('preview-status').textContent = T.preview_running; $('preview-button').disabled = true;
  try {
    const r = await fetch(`${base}/api/create/preview`, {method: 'POST', headers: {'Content-Type': 'application/json', Accept: 'application/json'},
      body: JSON.stringify({values: values()})});
    const body = await r.json().catch(() => null);
    if (!r.ok) { lastPreview = null; const d = body && body.detail;
      $('preview').innerHTML = `<p class="errors" id="preview-error">${esc(d && d.message ? d.message : (d || r.status))}</p>` +
        (d && d.rejected_rows ? `<p id="preview-rejected">${esc(T.rejected)}: ${fmt(d.rejected_rows)}</p>` : '');
      $('preview-status').textContent = ''; }
    else { lastPreview = body; $('preview').innerHTML = renderPreview(body);
      $('preview-status').textContent = `${body.cached ? 'cached' : body.seconds + ' s'}`; }
  } finally { previewing = false; $('preview-button').disabled = false; renderFigures(); updateSubmit(); maybePreview(); }
}
$('preview-button').addEventListener('click', preview);

$('submit').addEventListener('click', async () => {
  if ($('submit').disabled) return;
  submitting = true; updateSubmit(); $('submit-reason').textContent = T.starting;
  try {
    const r = await fetch(`${base}/api/create/submit`, {method: 'POST', headers: {'Content-Type': 'application/json', Accept: 'application/json'},
      body: JSON.stringify({values: values(), lang})});
    const body = await r.json().catch(() => null);
    if (r.ok) { location.href = `${base}/jobs/${encodeURIComponent(body.name)}?run=${encodeURIComponent(body.run_id)}`; return; }
    submitting = false; updateSubmit();
    const d = body && body.detail;
    if (d && d.errors) { lastCheck = d; setFieldErrors(d); }
    $('submit-reason').textContent = d && d.message ? d.message : `${r.status}: ${JSON.stringify(d)}`;
  } catch (err) { submitting = false; updateSubmit(); $('submit-reason').textContent = String(err); }
});
</script>
{% endblock %}
"""

_env = Environment(loader=DictLoader({"layout.html": templates.LAYOUT, "new.html": WIZARD}),
                   autoescape=select_autoescape(default=True, default_for_string=True))


def render_wizard(*, base: str, lang: str, choices: dict, sections: list) -> str:
    # Markup: the style sheet is ours, not user text (autoescaping would turn its '>' and '"' into entities)
    return _env.get_template("new.html").render(css=Markup(templates.CSS + CSS), base=base, lang=lang, t=UI[lang],
                                                choices=choices, sections=sections)
