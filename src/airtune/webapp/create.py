"""The jobs page's create wizard: what its endpoints compute (app.py mounts them).

    check(values, lang)     the values as the wizard has them -> errors at their fields, the resolved
                            spec's `auto` values, the GPU memory estimate against the GPU type's
                            memory, warnings. The same code `airtune validate` and the validate task
                            run (spec.parse_partial + resolve's rules with the catalog): no GPU, no
                            TRL import, no data read (~0.15 s).
    preview(values)         the data step itself (airtune.data.prepare, through the content-addressed
                            cache `airtune prepare` and prepare_dataset use) on the chosen datasets, in
                            a process of its own with a timeout (preview_worker.py): the first rows as
                            the model sees them (masked prompt apart from the trained answer), the
                            token-length distribution against cutoff_len, the truncated / dropped /
                            rejected rows, steps and tokens per epoch, and an estimated training time.
    choices(lang)           the wizard's select options: the catalog, finished jobs for parent_job and
                            reward_model, each location's GPU types.
    submit(values, auth)    checks again, then POST /api/v2/dags/airtune_finetune/dagRuns on Airflow's
                            own REST API with the caller's own token (so Airflow decides, as for its
                            trigger form).

The training-time estimate (`time_estimate`) is an estimate: tokens per epoch × epochs ÷ a throughput;
the throughputs and their sources are the one table THROUGHPUT below.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

from airtune import paths
from airtune.spec import FIELD_BY_NAME, FIELDS, SECTIONS
from airtune.webapp import rule_messages

FINETUNE_DAG = "airtune_finetune"
PREVIEW_ROWS = 5
PREVIEW_TIMEOUT_S = 90
PREVIEW_CACHE = 32
# Stages whose earlier jobs a parent_job may name (resolve.PARENT_STAGES).
REWARD_STAGE = "rm"

# -- the estimated training time ------------------------------------------------------------------
#
# tokens/s of ONE training process. Two kinds of rows:
#   "measured": docs/benchmarks.md section 2, airtune's own trainer on the CPU (LoRA, fp32, batch 8),
#               expressed as parameters × tokens per second so that it scales to another model size
#               (a step costs ~ parameters × tokens): tiny-llama-dev (1.8 M parameters) 5,020 tokens/s
#               with 1 thread (2026-12-02); smollm2-135m-instruct (135 M) 163 tokens/s with 2 threads
#               (2026-12-03, identity, cutoff 256). The model nearest in size is used.
#   "assumed":  no GPU has been measured (docs/benchmarks.md section 3 has not run): the vendor's
#               dense bf16/fp16 tensor peak × an assumed 35 % model-FLOPs utilisation, at
#               6 × parameters FLOPs per trained token (full fine-tuning; 4 × for lora/freeze, which
#               skip the frozen weights' gradients).
CPU_MEASURED = (
    # (parameters, tokens/s, source)
    (1.8e6, 5020.0, "docs/benchmarks.md §2: tiny-llama-dev, LoRA, fp32, padded, 1 thread (2026-12-02)"),
    (1.35e8, 163.0, "docs/benchmarks.md §2: smollm2-135m-instruct, LoRA r16, fp32, 2 threads (2026-12-03)"),
)
GPU_PEAK_TFLOPS = {
    # GPU type name -> (dense bf16/fp16 tensor TFLOPS, source)
    "nvidia-h100-80gb": (989.0, "NVIDIA H100 SXM datasheet: 989 TFLOPS bf16 dense"),
    "nvidia-a100-80gb": (312.0, "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense"),
    "nvidia-t4": (65.0, "NVIDIA T4 datasheet: 65 TFLOPS fp16 (mixed precision)"),
}
ASSUMED_MFU = 0.35
THROUGHPUT = {"cpu": CPU_MEASURED, "gpu": GPU_PEAK_TFLOPS, "mfu": ASSUMED_MFU}


def throughput(resolved: dict) -> dict | None:
    """{tokens_per_s (one process), kind: measured|assumed, how} or None where there is no figure."""
    model = resolved.get("model") or {}
    params = float(model.get("params_b") or 0) * 1e9
    runtime = resolved.get("runtime") or {}
    if not params:
        return None
    if runtime.get("device") == "cpu":
        best = min(CPU_MEASURED, key=lambda row: abs(math.log(params / row[0])))
        rate = best[0] * best[1] / params
        return {"tokens_per_s": rate, "kind": "measured",
                "how": f"{best[2]}: {best[1]:,.0f} tokens/s at {best[0] / 1e6:g} M parameters, scaled to "
                       f"{params / 1e6:,.1f} M parameters (time per token ∝ parameters)"}
    gpu = runtime.get("gpu_type")
    if gpu not in GPU_PEAK_TFLOPS:
        return None
    peak, source = GPU_PEAK_TFLOPS[gpu]
    method = (resolved.get("spec") or {}).get("finetuning_method")
    flops_per_token = (6.0 if method == "full" else 4.0) * params
    rate = peak * 1e12 * ASSUMED_MFU / flops_per_token
    return {"tokens_per_s": rate, "kind": "assumed",
            "how": f"{source} × an assumed {ASSUMED_MFU:.0%} utilisation ÷ {flops_per_token / params:g} × "
                   f"{params / 1e9:g} B parameters FLOPs per token (no GPU measured yet)"}


def time_estimate(resolved: dict, figures: dict) -> dict | None:
    """The estimated training time: tokens trained (tokens per epoch × epochs, or max_steps' share) ÷
    (one process's throughput × processes). Model loading, data preparation and evaluation excluded."""
    rate = throughput(resolved)
    tokens_epoch = int(figures.get("tokens_per_epoch") or 0)
    if rate is None or not tokens_epoch:
        return None
    spec = resolved.get("spec") or {}
    epochs = float(spec.get("num_train_epochs") or 1.0)
    per_epoch, total = figures.get("steps_per_epoch") or 0, figures.get("total_steps") or 0
    tokens = tokens_epoch * (total / per_epoch if per_epoch else epochs)
    processes = max(1, int(figures.get("processes") or 1))
    seconds = tokens / (rate["tokens_per_s"] * processes)
    return {"seconds": round(seconds, 1), "tokens": int(tokens), "processes": processes,
            "tokens_per_s_per_process": round(rate["tokens_per_s"], 1), "kind": rate["kind"],
            "how": (f"estimate: {int(tokens):,} tokens ({tokens_epoch:,} per epoch × "
                    f"{tokens / tokens_epoch:g} epochs) ÷ ({rate['tokens_per_s']:,.0f} tokens/s × {processes} "
                    f"process{'es' if processes != 1 else ''}); {rate['how']}; excludes loading the model, "
                    f"preparing the data and evaluation")}


# -- choices --------------------------------------------------------------------------------------

def _catalog():
    from airtune.catalog import Catalog

    return Catalog.load()


def finished_jobs() -> list[dict]:
    """Every finished job of the workspace (resolve.WorkspaceJobs: the newest finished run of each name)."""
    from airtune.resolve import WorkspaceJobs

    lookup = WorkspaceJobs()
    out = []
    if not lookup.root.is_dir():
        return out
    for folder in sorted(lookup.root.iterdir()):
        if not folder.is_dir():
            continue
        record = lookup.get(folder.name)
        if not record or record.get("state") != "finished" or not record.get("final_dir"):
            continue
        spec = (record.get("resolved") or {}).get("spec") or {}
        out.append({"name": folder.name, "stage": spec.get("stage"), "base_model": spec.get("base_model"),
                    "finetuning_method": spec.get("finetuning_method"), "template": spec.get("template")})
    return out


def choices(lang: str = "en", catalog=None) -> dict:
    """What the wizard's selects offer: {field: [{value, label}]}, GPU types per location, finished jobs."""
    from airtune import form
    from airtune.resolve import PARENT_STAGES

    catalog = catalog or _catalog()
    out: dict[str, Any] = {}
    for f in FIELDS:
        if f.catalog and f.catalog != "gpu_types":
            try:
                values, labels = form._catalog_choices(catalog, f, lang)
            except AssertionError:  # a catalog the form does not list (a text field then)
                continue
            out[f.name] = [{"value": v, "label": labels.get(v, v)} for v in values]
        elif f.choices:
            out[f.name] = [{"value": c, "label": (f.choice_labels[c][1] if lang == "zh" else f.choice_labels[c][0])
                            if c in f.choice_labels else c} for c in f.choices]
    gpu_types = {}
    for loc in catalog.locations.values():
        rows = []
        for g in loc.gpu_types.values():
            if loc.is_local:
                label = g.name if g.name != "auto" else ("auto（本机的 GPU）" if lang == "zh" else "auto (this machine's GPUs)")
            else:
                label = f"{g.name} ({g.gpus_per_node} × {g.memory_gib:g} GiB{', bf16' if g.bf16 else ''})"
            rows.append({"value": g.name, "label": label, "memory_gib": g.memory_gib, "gpus_per_node": g.gpus_per_node})
        gpu_types[loc.name] = {"default": loc.default_gpu_type, "types": rows}
    out["gpu_type"] = gpu_types
    jobs = finished_jobs()
    out["reward_model"] = [{"value": j["name"], "label": f"{j['name']} ({j['base_model']})"}
                           for j in jobs if j["stage"] == REWARD_STAGE]
    # parent_job: the page keeps those with the chosen base_model (resolve refuses another one)
    out["parent_job"] = [{"value": j["name"], "label": f"{j['name']} ({j['stage']}, {j['finetuning_method']})",
                          "base_model": j["base_model"]} for j in jobs if j["stage"] in PARENT_STAGES]
    return out


# -- check ----------------------------------------------------------------------------------------

_FIELD_WORD = re.compile(r"\b([a-z][a-z0-9_]*)\b")
# Words that are field names but, in a message, are mostly plain English.
_NOT_NAMING = {"name", "template", "dataset", "nodes", "seed", "promote"}


def clean(values: Mapping) -> dict:
    """The wizard's values as the job mapping: empty values dropped (form.conf_to_mapping), as the
    trigger form's conf is read."""
    from airtune import form

    return form.conf_to_mapping({k: v for k, v in dict(values).items()})


def _named_fields(error_field: str, message: str) -> list[str]:
    """The other fields a cross-field message names (`stage sft`, `finetuning_method 'full'`...)."""
    own = error_field.split(".")[0]
    out = []
    for word in _FIELD_WORD.findall(message):
        if word in FIELD_BY_NAME and word != own and word not in out:
            if word in _NOT_NAMING and not re.search(rf"\b{word} [\"'A-Za-z0-9]", message):
                continue
            out.append(word)
    return out


def _error_row(e, lang: str) -> dict:
    from airtune import redact
    from airtune.spec import show_value

    top = e.field.split(".")[0]
    info = FIELD_BY_NAME.get(top)
    shown = redact.value(e.value, e.field.rsplit(".", 1)[-1])
    message = redact.text(e.message)
    # message: in the page's language (rule_messages: validate's English messages in Chinese, where a
    # pattern has them); message_en: validate's own words, as the CLI and the validate task's log give them
    row = {"field": e.field, "value": show_value(shown), "message": rule_messages.message(e.field, message, lang),
           "message_en": message, "text": str(e), "also": _named_fields(e.field, e.message)}
    if info is not None:
        row["label"] = info.label(lang)
        if lang == "zh":
            # what the field accepts, from the table's Chinese (beside a message left in English too)
            row["accepted"] = info.accepted("zh")
    return row


_hardware: dict | None = None
_hardware_lock = threading.Lock()


def local_hardware() -> dict:
    """This machine's GPUs for location local / gpu_type auto, found once by a process of its own
    (resolve.detect_hardware imports torch, which the api-server never does)."""
    global _hardware
    from airtune.resolve import HARDWARE_KEYS

    with _hardware_lock:
        if _hardware is None:
            code = "import json; from airtune.resolve import detect_hardware; print(json.dumps(detect_hardware()))"
            try:
                p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
                _hardware = {**HARDWARE_KEYS, **json.loads(p.stdout.strip().splitlines()[-1])}
            except (subprocess.SubprocessError, ValueError, IndexError, OSError):
                _hardware = dict(HARDWARE_KEYS)
        return dict(_hardware)


def _resolved_and_errors(mapping: dict, catalog, jobs=None) -> tuple[dict, list]:
    """spec.parse_partial + resolve's rules: what resolve.validate_mapping runs, without raising, so the
    wizard gets the resolved spec beside the errors."""
    from airtune import resolve
    from airtune.spec import parse_partial

    spec, errors, bad = parse_partial(mapping)
    hardware = None
    if spec.location in catalog.locations and catalog.locations[spec.location].is_local and \
            (spec.gpu_type or catalog.locations[spec.location].default_gpu_type) == "auto":
        hardware = local_hardware()
    resolved, more = resolve._resolve(spec, catalog, hardware=hardware, jobs=jobs, skip=bad)
    return resolved, errors + more


def _name_taken(name: str | None) -> bool:
    return bool(name) and (paths.workspace() / "jobs" / str(name)).is_dir()


def check(values: Mapping, lang: str = "en", *, catalog=None, jobs=None) -> dict:
    """{ok, errors: [{field, label, message, also: [other fields it names]}], by_field, auto, estimate,
    fits, warnings}."""
    from airtune.spec import FieldError

    catalog = catalog or _catalog()
    mapping = clean(values)
    resolved, errors = _resolved_and_errors(mapping, catalog, jobs)
    if _name_taken(mapping.get("name")) and not any(e.field == "name" for e in errors):
        errors.append(FieldError("name", mapping.get("name"), "a job of this name exists: a name identifies one "
                                                              "job; choose another (or delete that job first)"))
    rows = [_error_row(e, lang) for e in errors]
    by_field: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_field.setdefault(r["field"].split(".")[0], []).append(i)
        for other in r["also"]:
            by_field.setdefault(other, []).append(i)
    spec = resolved["spec"]
    auto = {}  # what validate filled in: `auto` values and the defaults that depend on other fields
    for f in FIELDS:
        given = mapping.get(f.name)
        if given in (None, "auto") and f.default in ("auto", None) and spec.get(f.name) not in (None, "auto"):
            auto[f.name] = spec[f.name]
    est = dict(resolved.get("estimate") or {})
    available = est.get("gpu_memory_gib_available")
    fits = None
    if est.get("gpu_memory_gib_certain") is not None and available:
        fits = ("no" if est["gpu_memory_gib_certain"] > available else
                "depends" if est["gpu_memory_gib_per_process"] > available else "yes")
    refusal = None
    if fits == "no":
        refusal = next((r["message"] for r in rows if r["field"] == "gpu_type" and "GPU memory" in r["message_en"]), None)
    return {"ok": not rows, "errors": rows, "by_field": by_field, "auto": auto, "estimate": est, "fits": fits,
            "refusal": refusal, "runtime": resolved.get("runtime"), "model": resolved.get("model"),
            "warnings": resolved.get("warnings") or [], "resolved_spec": spec}


# -- preview --------------------------------------------------------------------------------------

class PreviewError(RuntimeError):
    def __init__(self, status: int, message: str, extra: dict | None = None):
        super().__init__(message)
        self.status, self.extra = status, extra or {}


_preview_cache: OrderedDict[str, dict] = OrderedDict()
_preview_lock = threading.Lock()  # one preview at a time in this process


def _preview_key(resolved: dict) -> str:
    """What the preview depends on: the data step's own cache key (data, template, tokenizer, options)
    plus the figures' spec values."""
    from airtune.data.build import _options, cache_key

    key, _ = cache_key(resolved, _options(resolved))
    spec = resolved["spec"]
    more = {k: spec.get(k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
                                     "nodes", "gpus_per_node", "extra_args", "finetuning_method", "warmup_steps")}
    more["runtime"] = resolved.get("runtime")
    return hashlib.sha256((key + json.dumps(more, sort_keys=True, default=str)).encode()).hexdigest()[:32]


def preview(values: Mapping, rows: int = PREVIEW_ROWS, *, catalog=None, timeout: float = PREVIEW_TIMEOUT_S) -> dict:
    """The dataset preview (see the module's docstring). Raises PreviewError."""
    from airtune.data.errors import DataError

    catalog = catalog or _catalog()
    mapping = clean(values)
    resolved, errors = _resolved_and_errors(mapping, catalog)
    blocking = [e for e in errors if e.field.split(".")[0] in
                {"base_model", "dataset", "template", "stage", "cutoff_len", "max_samples", "val_size", "eval_dataset",
                 "train_on_prompt", "mask_history", "packing", "skip_bad_rows", "seed", "parent_job"}]
    if not resolved.get("model") or not resolved.get("template") or not resolved.get("datasets") or blocking:
        raise PreviewError(422, "the preview needs a base model, a template and datasets that fit the stage"
                           + (": " + "; ".join(str(e) for e in blocking) if blocking else ""))
    try:
        key = _preview_key(resolved)
    except (DataError, OSError) as exc:
        raise PreviewError(422, str(exc)) from None
    key = f"{key}:{rows}"
    with _preview_lock:
        hit = _preview_cache.get(key)
        if hit is not None:
            _preview_cache.move_to_end(key)
            return {**hit, "cached": True}
        result = _run_worker(resolved, rows, timeout)
        if "figures" in result:
            from airtune.data.figures import memory_check

            result["time_estimate"] = time_estimate(resolved, result["figures"])
            estimate, refusal = memory_check(result["manifest"], resolved)
            result["memory_with_data"] = {"estimate": estimate, "refusal": refusal}
        _preview_cache[key] = result
        while len(_preview_cache) > PREVIEW_CACHE:
            _preview_cache.popitem(last=False)
        return {**result, "cached": False}


def worker_command() -> list[str]:
    return [sys.executable, "-m", "airtune.webapp.preview_worker"]


def _run_worker(resolved: dict, rows: int, timeout: float) -> dict:
    import signal

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    started = time.monotonic()
    p = subprocess.Popen(worker_command(), env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(json.dumps({"resolved": resolved, "rows": rows}), timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        raise PreviewError(504, f"the preview took longer than {timeout:g} s and was stopped (a large dataset: "
                                f"set max_samples for a preview, or let prepare_dataset do it)") from None
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PreviewError(500, f"the preview process failed (exit {p.returncode}): {err.strip()[-800:]}") from None
    if "error" in result:
        raise PreviewError(422, result["error"], {k: v for k, v in result.items() if k != "error"})
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


# -- submit ---------------------------------------------------------------------------------------

class SubmitError(RuntimeError):
    def __init__(self, status: int, detail: Any):
        super().__init__(str(detail))
        self.status, self.detail = status, detail


def new_run_id(name: str) -> str:
    return f"{name}__{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"


def submit(values: Mapping, *, api_url: str, token: str, lang: str = "en", catalog=None) -> dict:
    """Check, then trigger the run through Airflow's REST API with the caller's token; {run_id, name}."""
    import urllib.error
    import urllib.request

    result = check(values, lang, catalog=catalog)
    if not result["ok"]:
        raise SubmitError(422, {"message": "the job is not valid; nothing was started", **result})
    conf = clean(values)
    run_id = new_run_id(conf["name"])
    body = json.dumps({"dag_run_id": run_id, "logical_date": None, "conf": conf}).encode()
    req = urllib.request.Request(f"{api_url.rstrip('/')}/api/v2/dags/{FINETUNE_DAG}/dagRuns", data=body,
                                 method="POST", headers={"Content-Type": "application/json",
                                                         "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            detail = json.loads(raw).get("detail")
        except (ValueError, AttributeError):
            detail = raw.decode(errors="replace")[:500]
        raise SubmitError(exc.code, {"message": f"Airflow refused the run ({exc.code}): {detail}"}) from None
    except OSError as exc:
        raise SubmitError(502, {"message": f"Airflow's API did not answer: {exc}"}) from None
    return {"name": conf["name"], "run_id": answer.get("dag_run_id", run_id), "state": answer.get("state")}


def sections(lang: str = "en") -> list[dict]:
    """The wizard's steps: sections 1-3, then 4 and 5 collapsed under the last step."""
    from airtune import form

    out = []
    for s in SECTIONS:
        fields = []
        for f in FIELDS:
            if f.section != s.number:
                continue
            fields.append({"name": f.name, "kind": f.kind, "label": f.label(lang), "help": f.help(lang),
                           "required": f.required, "default": f.default, "catalog": f.catalog,
                           "choices": list(f.choices), "min": f.ge if f.ge is not None else f.gt,
                           "max": f.le if f.le is not None else f.lt, "used_with": f.used_with,
                           "empty_label": form._default_label(f, lang)})
        out.append({"number": s.number, "title": s.title(lang), "fields": fields})
    return out
