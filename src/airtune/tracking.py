"""MLflow: one run per DAG run, the spec as params, metrics, checkpoints as logged models, the registry.

This module owns "one MLflow run per DAG run, never two": the run is found again by its Airflow
tags on every task and every retry, so a retry never creates a second run. The trainer's side
(live metrics, checkpoints while training, system metrics) is `airtune.tracking_callback`; the
register task's side (the metrics MLflow missed, the best checkpoint's files, the registered
version, the pictures) is `finish_run` here. docs/mlflow.md says what goes where and why.

mlflow is imported inside the functions: the DAG file imports this package without paying for it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from airtune import __version__, paths
from airtune.resolved import Resolved, as_resolved

log = logging.getLogger(__name__)

TAG_DAG_ID = "airflow.dag_id"
TAG_RUN_ID = "airflow.run_id"
TAG_JOB = "airtune.job"
TAG_PROGRESS = "airtune.progress"  # JSON: step, max_steps, percent, eta_seconds (the trainer's callback)
TAG_KIND = "airtune.kind"  # on logged models: checkpoint | final
TAG_STEP = "airtune.step"
TAG_FILES = "airtune.files"  # on logged models: "uploaded", or where the files are when they are not
MODEL_TYPE = "airtune-checkpoint"
ALIAS_BEST = "best"
PARAM_KEY_LIMIT = 250  # MLflow's limits on params
PARAM_VALUE_LIMIT = 6000
TAG_VALUE_LIMIT = 8000
CHECKPOINT_DIR = re.compile(r"checkpoint-(\d+)$")
# What a model version holds of a checkpoint: everything but the training state (optimizer etc.).
TRAINING_STATE = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|training_args\.bin|global_step\d+|latest|zero_to_fp32\.py)$")


# --- where -----------------------------------------------------------------------------------

def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{paths.airtune_home() / 'mlflow' / 'mlflow.db'}"


def _local_artifact_root() -> Path | None:
    """Where artefacts go when the tracking URI is a local database (the embedded default)."""
    uri = tracking_uri()
    if uri.startswith(("sqlite:", "file:", "postgresql:", "mysql:")) or "://" not in uri:
        return Path(os.environ.get("AIRTUNE_MLFLOW_ARTIFACT_ROOT") or paths.airtune_home() / "mlflow" / "artifacts")
    return None  # a tracking server: its --artifacts-destination / --default-artifact-root decides


def client():
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # MLflow's own code makes clients of its own from the process-wide URI (the registry's
    # create_model_version looks the logged model up that way): keep that URI the same as ours.
    import mlflow

    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ui_url() -> str:
    """The MLflow UI users open: AIRTUNE_MLFLOW_UI_URL, the tracking server itself, or `make up`'s."""
    if os.environ.get("AIRTUNE_MLFLOW_UI_URL"):
        from airtune import redact

        return redact.url(os.environ["AIRTUNE_MLFLOW_UI_URL"]).rstrip("/")
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        from airtune import redact

        return redact.url(uri).rstrip("/")  # a link a page shows never carries the credentials
    from airtune import localstack

    return f"http://127.0.0.1:{localstack.MLFLOW_PORT}"


# MLflow 3.17's UI opens an experiment in its GenAI view (runs and checkpoints shown as traces and
# "Agent versions") unless the page's URL says otherwise: it reads `workflowType` from the query of
# its hash route (react-router's search params, e.g. #/experiments/1/runs/abc?workflowType=...), else
# the browser's stored choice (localStorage "mlflow.workflowType", default genai). It does not read the
# experiment's mlflow.experimentKind tag for that today; the tag is set too (EXPERIMENT_KIND), for
# when it does. So every MLflow link airtune shows carries the parameter.
WORKFLOW_QUERY = "?workflowType=machine_learning"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def experiment_url(experiment_id: str) -> str:
    return f"{ui_url()}/#/experiments/{experiment_id}{WORKFLOW_QUERY}"


def run_url(experiment_id: str, run_id: str) -> str:
    return f"{ui_url()}/#/experiments/{experiment_id}/runs/{run_id}{WORKFLOW_QUERY}"


def model_version_url(name: str, version: str) -> str:
    return f"{ui_url()}/#/models/{name}/versions/{version}{WORKFLOW_QUERY}"


def experiment_name(job_name: str) -> str:
    return f"airtune/{job_name}"


def _experiment_id(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        if TAG_EXPERIMENT_KIND not in (exp.tags or {}):  # made before airtune set the kind
            c.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return exp.experiment_id
    root = _local_artifact_root()
    location = None
    if root is not None:
        location = (root / name.replace("/", "_")).as_uri()
    try:
        return c.create_experiment(name, artifact_location=location,
                                   tags={TAG_JOB: name.removeprefix("airtune/"), TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
    except Exception:  # created meanwhile by a parallel task
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# --- the run -----------------------------------------------------------------------------------

def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts become dotted keys; values are strings within MLflow's length limit."""
    out: dict[str, str] = {}
    if isinstance(obj, dict) and obj:  # an empty one is kept as "{}"
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    key = prefix.rstrip(".")
    text = obj if isinstance(obj, str) else json.dumps(obj, default=str)
    out[key] = text[:PARAM_VALUE_LIMIT]
    return out


def find_run(c, experiment_id: str, dag_id: str, run_id: str):
    runs = c.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_DAG_ID}` = '{dag_id}' and tags.`{TAG_RUN_ID}` = '{run_id}'",
        max_results=5,
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


def run_tags(resolved: Resolved | Mapping, dag_id: str, run_id: str) -> dict[str, str]:
    resolved = as_resolved(resolved)
    spec = resolved.spec
    tags = {
        TAG_DAG_ID: dag_id,
        TAG_RUN_ID: run_id,
        TAG_JOB: spec.name,
        "airtune.version": resolved.airtune_version or __version__,
        "airtune.base_model": spec.base_model,
        "airtune.template": str(spec.template),
        "airtune.method": spec.finetuning_method,
        "airtune.stage": spec.stage,
        "airtune.datasets": ",".join(spec.dataset),
        "airtune.location": spec.location,
        "mlflow.runName": f"{spec.name}:{run_id}"[:250],
    }
    image = resolved.location.image if resolved.location else None
    if image:
        tags["airtune.image"] = str(image)
    if spec.parent_job:
        tags["airtune.parent_job"] = str(spec.parent_job)
    return tags


def ensure_run(resolved: Resolved | Mapping, dag_id: str, run_id: str) -> str:
    """The MLflow run of this DAG run: found by its Airflow tags, else created. Returns its id.

    Every task and every retry may call it: the same DAG run always gets the same MLflow run, and
    the resolved spec is logged once (params MLflow already has are never sent again).
    """
    c = client()
    resolved = as_resolved(resolved)
    exp_id = _experiment_id(c, experiment_name(resolved.spec.name))
    tags = run_tags(resolved, dag_id, run_id)
    run = find_run(c, exp_id, dag_id, run_id)
    if run is None:
        run = c.create_run(exp_id, tags=tags, run_name=tags["mlflow.runName"])
    else:
        missing = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
        if missing:
            set_tags(run.info.run_id, missing, c=c)
    log_params_once(c, run.info.run_id, flatten({"spec": resolved.to_json()["spec"]}))
    return run.info.run_id


def log_params_once(c, mlflow_run_id: str, params: dict[str, str]) -> None:
    """Log the params this run does not have yet: a retry with the same spec changes nothing.

    A param MLflow already holds with another value (a retry whose `auto` values resolved
    differently) is left as it is and named in the task log: MLflow refuses to change params.
    """
    from mlflow.entities import Param

    have = c.get_run(mlflow_run_id).data.params
    new, changed = [], []
    for k, v in params.items():
        key = k[:PARAM_KEY_LIMIT]
        if key not in have:
            new.append(Param(key, v))
        elif have[key] != v:
            changed.append(key)
    if changed:
        log.warning("MLflow run %s keeps its first value of %s (changed on this attempt)", mlflow_run_id, ", ".join(sorted(changed)))
    for i in range(0, len(new), 100):
        c.log_batch(mlflow_run_id, params=new[i : i + 100])


def set_tags(mlflow_run_id: str, tags: dict[str, str], *, c=None) -> None:
    from mlflow.entities import RunTag

    c = c or client()
    items = [RunTag(k, str(v)[:TAG_VALUE_LIMIT]) for k, v in tags.items()]
    for i in range(0, len(items), 100):
        c.log_batch(mlflow_run_id, tags=items[i : i + 100])


def record_dataset(mlflow_run_id: str, manifest: dict, resolved: Resolved | Mapping) -> None:
    """The prepared dataset on the run: content hashes as tags, and one MLflow dataset input."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    c = client()
    spec = as_resolved(resolved).spec
    content_hash = str(manifest.get("content_hash") or "")
    tags = {
        "airtune.data.content_hash": content_hash,
        "airtune.data.rows": json.dumps(manifest.get("rows", {})),
    }
    if manifest.get("tokens"):
        tags["airtune.data.tokens"] = json.dumps(manifest["tokens"])
    for entry in manifest.get("datasets") or []:
        if isinstance(entry, dict) and entry.get("name"):
            digest = entry.get("content_hash") or entry.get("hash") or entry.get("sha256")
            if digest:
                tags[f"airtune.data.{entry['name']}.hash"] = str(digest)
    set_tags(mlflow_run_id, tags, c=c)
    if content_hash:
        profile = {k: manifest[k] for k in ("rows", "tokens", "truncated_rows", "stage", "template", "cutoff_len") if k in manifest}
        dataset = Dataset(
            name="+".join(spec.dataset)[:500],
            digest=content_hash[:36],
            source_type="airtune-prepared",
            source=json.dumps({"datasets": list(spec.dataset), "content_hash": content_hash}),
            profile=json.dumps(profile, default=str),
        )
        c.log_inputs(mlflow_run_id, [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])])


def read_records(metrics_file: Path) -> list[dict]:
    """The trainer's metrics.jsonl; a line cut short by a killed process is skipped."""
    records = []
    if not metrics_file.exists():
        return records
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _numeric(rec: dict) -> dict[str, float]:
    return {
        k: float(v) for k, v in rec.items()
        if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def backfill_metrics(c, mlflow_run_id: str, metrics_file: Path) -> int:
    """Log the records of metrics.jsonl that MLflow does not have (by key and step); returns how many.

    Live logging normally sent them all; this catches what an unreachable server or a killed
    trainer left out, without doubling what did arrive.
    """
    from mlflow.entities import Metric

    records = read_records(metrics_file)
    have: dict[str, set[int]] = {}
    missing = []
    for rec in records:
        step = int(rec.get("step", 0))
        ts = int(float(rec.get("time", time.time())) * 1000)
        for k, v in _numeric(rec).items():
            if k not in have:
                have[k] = {m.step for m in c.get_metric_history(mlflow_run_id, k)}
            if step not in have[k]:
                missing.append(Metric(k, v, ts, step))
                have[k].add(step)
    for i in range(0, len(missing), 1000):
        c.log_batch(mlflow_run_id, metrics=missing[i : i + 1000])
    return len(missing)


# Kept for callers of the skeleton's name.
def log_metrics_file(mlflow_run_id: str, metrics_file: Path) -> int:
    return backfill_metrics(client(), mlflow_run_id, metrics_file)


# --- checkpoints as MLflow 3 logged models -------------------------------------------------------

def _find_logged_model(c, experiment_id: str, run_id: str, name: str):
    found = c.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'", max_results=10
    )
    return found[0] if found else None


def record_checkpoint(
    c, run_id: str, step: int, path: str | None, metrics: dict[str, Any], *, kind: str = "checkpoint", name: str | None = None
) -> str:
    """One saved checkpoint as a logged model of the run, with its step and eval metrics. Idempotent.

    `metrics` maps a key to a value or to (value, timestamp_ms): with the timestamp of the run's own
    record of that metric, the run's history keeps one point while the logged model is linked to it.
    Returns the logged model's id.
    """
    from mlflow.entities import LoggedModelOutput, Metric

    name = name or (f"checkpoint-{step}" if kind == "checkpoint" else kind)
    exp_id = c.get_run(run_id).info.experiment_id
    model = _find_logged_model(c, exp_id, run_id, name)
    if model is None:
        tags = {TAG_KIND: kind, TAG_STEP: str(step)}
        if path:
            tags["airtune.checkpoint.path"] = str(path)
            tags[TAG_FILES] = f"job folder: {path}"
        model = c.create_logged_model(exp_id, name=name, source_run_id=run_id, tags=tags, model_type=MODEL_TYPE)
        c.log_outputs(run_id, [LoggedModelOutput(model.model_id, int(step))])
    now = int(time.time() * 1000)
    linked = []
    for key, value in metrics.items():
        v, ts = value if isinstance(value, tuple) else (value, now)
        if v is not None and math.isfinite(float(v)):
            linked.append(Metric(key, float(v), int(ts), int(step), model_id=model.model_id))
    if linked and not {m.key for m in model.metrics or []} >= {m.key for m in linked}:
        c.log_batch(run_id, metrics=linked)
    return model.model_id


def _step_of(path: str | Path) -> int | None:
    m = CHECKPOINT_DIR.search(str(path).rstrip("/"))
    return int(m.group(1)) if m else None


def _run_metric_at(c, run_id: str, key: str, step: int, cache: dict) -> tuple[float, int] | None:
    """(value, timestamp) of the run's own record of `key` at `step`, if MLflow has one."""
    if key not in cache:
        cache[key] = {m.step: (m.value, m.timestamp) for m in c.get_metric_history(run_id, key)}
    return cache[key].get(step)


# --- the register task ---------------------------------------------------------------------------

def bundle(src: Path, dest: Path, *, job_dir: Path, resolved: Resolved | Mapping, info: dict) -> Path:
    """The files of a model version, in `dest`: usable alone (docs/mlflow.md).

    The adapter or weights of `src` (no optimizer, scheduler or RNG state), the tokenizer and chat
    template (from output/final when a checkpoint lacks them), the resolved spec, a README on how to
    load it, and airtune.json with its lineage. Files are hard-linked where the disk allows.
    """
    from airtune import tracking_report

    dest.mkdir(parents=True, exist_ok=True)
    final = job_dir / "output" / "final"
    for source, fill_in in ((src, False), (final, True)):
        if not source.is_dir():
            continue
        for item in source.iterdir():
            target = dest / item.name
            if TRAINING_STATE.match(item.name) or target.exists():
                continue
            if fill_in and not _is_tokenizer_file(item.name) and item.name != "spec.json":
                continue  # from final/ only what a checkpoint lacks to be usable: tokenizer, template, spec
            _link_or_copy(item, target)
    if not (dest / "spec.json").exists() and (job_dir / "spec.json").exists():
        shutil.copyfile(job_dir / "spec.json", dest / "spec.json")
    resolved = as_resolved(resolved)
    template = resolved.template.path if resolved.template else None
    if not (dest / "chat_template.jinja").exists() and not _has_chat_template(dest) and template and Path(template).is_file():
        shutil.copyfile(template, dest / "chat_template.jinja")
    (dest / "airtune.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    (dest / "README.md").write_text(tracking_report.model_readme(resolved, info, sorted(p.name for p in dest.iterdir())))
    return dest


def _is_tokenizer_file(name: str) -> bool:
    return name.startswith(("tokenizer", "special_tokens_map", "chat_template", "vocab", "merges", "added_tokens"))


def _has_chat_template(folder: Path) -> bool:
    cfg = folder / "tokenizer_config.json"
    try:
        return bool(json.loads(cfg.read_text()).get("chat_template"))
    except (OSError, json.JSONDecodeError):
        return False


def _link_or_copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_file)
    else:
        _link_file(str(src), str(dst))


def _link_file(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _upload(c, model_id: str, src: Path, *, job_dir: Path, resolved: Resolved | Mapping, info: dict) -> None:
    """The version's files into the logged model, then READY. Skipped when it is READY already (a retry)."""
    model = c.get_logged_model(model_id)
    if str(model.status) == "READY":
        return
    with tempfile.TemporaryDirectory(prefix="airtune-model-", dir=job_dir) as tmp:
        staged = bundle(src, Path(tmp) / "model", job_dir=job_dir, resolved=resolved, info=info)
        c.log_model_artifacts(model_id, str(staged))
    c.set_logged_model_tags(model_id, {TAG_FILES: "uploaded"})
    c.finalize_logged_model(model_id, "READY")


def _job_path(job_dir: Path, value: str | None) -> Path | None:
    if not value:
        return None
    p = Path(value)
    return p if p.is_absolute() else job_dir / p


def _checkpoint_dirs(job_dir: Path, result: dict) -> dict[int, Path]:
    dirs = {}
    for rel in result.get("checkpoints") or []:
        p = _job_path(job_dir, rel if isinstance(rel, str) else rel.get("path"))
        if p is not None and _step_of(p) is not None:
            dirs[_step_of(p)] = p
    for p in (job_dir / "output").glob("checkpoint-*"):
        if p.is_dir() and _step_of(p) is not None:
            dirs.setdefault(_step_of(p), p)
    return dirs


def best_model_dir(job_dir: Path, result: dict, *, evals: dict | None = None, checkpoints: dict | None = None) -> Path:
    """The weights a job registers (and the evaluate task scores): the trainer's best checkpoint
    (result.json), else the lowest eval loss among the checkpoints on disk and the final weights,
    else the final weights."""
    job_dir = Path(job_dir)
    if evals is None:
        evals = {int(r["step"]): _numeric({k: v for k, v in r.items() if k.startswith("eval_")})
                 for r in read_records(job_dir / "metrics.jsonl") if "eval_loss" in r}
    if checkpoints is None:
        checkpoints = _checkpoint_dirs(job_dir, result)
    final_dir = _job_path(job_dir, result.get("final_dir")) or job_dir / "output" / "final"
    best_dir = _job_path(job_dir, result.get("best_checkpoint") or result.get("best_checkpoint_dir"))
    if best_dir is None:
        scored = [(evals[s]["eval_loss"], p) for s, p in checkpoints.items() if s in evals and p.is_dir()]
        if result.get("eval_loss") is not None:
            scored.append((float(result["eval_loss"]), final_dir))
        best_dir = min(scored, key=lambda t: t[0])[1] if scored else final_dir
    if not best_dir.is_dir():
        log.warning("the best checkpoint %s is no longer on disk; using the final weights", best_dir)
        best_dir = final_dir
    return best_dir


def finish_run(job_dir: Path, resolved: Resolved | Mapping, mlflow_run_id: str) -> dict:
    """Everything the register task records once training is done; safe to run again (a retry).

    1. metrics MLflow missed (an unreachable server, a killed trainer) from metrics.jsonl;
    2. every checkpoint as a logged model with its step and eval metrics (the callback recorded
       them while training; this adds any it could not), and the final weights as one more;
    3. the best one (lowest eval loss, else the final weights) uploaded with everything it needs
       and registered as a version of the model named after the job, with lineage tags; the final
       weights uploaded too when they are not the best;
    4. loss and learning-rate curves (PNG) and a Markdown summary on the run; the run FINISHED.
    """
    from mlflow.entities import Metric

    from airtune import tracking_report

    job_dir = Path(job_dir)
    c = client()
    resolved = as_resolved(resolved)
    spec = resolved.spec
    tracking = resolved.tracking
    result = json.loads((job_dir / "result.json").read_text())
    metrics_file = job_dir / "metrics.jsonl"
    records = read_records(metrics_file)
    backfilled = backfill_metrics(c, mlflow_run_id, metrics_file)
    if backfilled:
        log.info("MLflow: recorded %d metric values from metrics.jsonl that live logging had not sent", backfilled)

    global_step = int(result.get("global_step") or 0)
    evals = {int(r["step"]): _numeric({k: v for k, v in r.items() if k.startswith("eval_")}) for r in records if "eval_loss" in r}
    losses = {int(r["step"]): float(r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))}
    cache: dict = {}

    def metrics_at(step: int) -> dict:
        out: dict = {}
        for key, value in {**evals.get(step, {}), **({"loss": losses[step]} if step in losses else {})}.items():
            out[key] = _run_metric_at(c, mlflow_run_id, key, step, cache) or value
        return out

    # 2. checkpoints and final weights as logged models
    ckpt_dirs = _checkpoint_dirs(job_dir, result)
    models: dict[str, str] = {}  # relative dir -> logged model id
    for step, p in sorted(ckpt_dirs.items()):
        rel = os.path.relpath(p, job_dir)
        models[rel] = record_checkpoint(c, mlflow_run_id, step, rel, metrics_at(step))
    final_dir = _job_path(job_dir, result.get("final_dir")) or job_dir / "output" / "final"
    final_rel = os.path.relpath(final_dir, job_dir)
    final_metrics = metrics_at(global_step)
    if result.get("eval_loss") is not None:
        final_metrics.setdefault("eval_loss", float(result["eval_loss"]))
    models[final_rel] = record_checkpoint(c, mlflow_run_id, global_step, final_rel, final_metrics, kind="final")

    # 3. the best one: the trainer's choice (result.json), else the lowest eval loss on disk, else final
    best_dir = best_model_dir(job_dir, result, evals=evals, checkpoints=ckpt_dirs)
    best_rel = os.path.relpath(best_dir, job_dir)
    best_step = _step_of(best_dir) if best_dir != final_dir else global_step
    best_eval = result.get("best_eval_loss")
    if best_eval is None:
        best_eval = evals.get(best_step, {}).get("eval_loss") if best_dir != final_dir else result.get("eval_loss")
    best_model_id = models.get(best_rel) or record_checkpoint(c, mlflow_run_id, best_step, best_rel, metrics_at(best_step))

    run = c.get_run(mlflow_run_id)
    lineage = {
        "job": spec.name,
        "airflow_dag_id": (tracking.dag_id if tracking else None) or run.data.tags.get(TAG_DAG_ID),
        "airflow_run_id": (tracking.run_id if tracking else None) or run.data.tags.get(TAG_RUN_ID),
        "mlflow_run_id": mlflow_run_id,
        "base_model": spec.base_model,
        "base_weights": resolved.model.weights if resolved.model else None,
        "template": str(spec.template),
        "method": spec.finetuning_method,
        "stage": spec.stage,
        "datasets": list(spec.dataset),
        "data_content_hash": run.data.tags.get("airtune.data.content_hash"),
        "parent_job": spec.parent_job,
        "image": run.data.tags.get("airtune.image"),
        "airtune_version": resolved.airtune_version or __version__,
        "checkpoint": best_rel,
        "step": best_step,
        "eval_loss": best_eval,
        "global_step": global_step,
    }
    _upload(c, best_model_id, best_dir, job_dir=job_dir, resolved=resolved, info=lineage)
    if best_dir != final_dir and final_dir.is_dir():
        _upload(c, models[final_rel], final_dir, job_dir=job_dir, resolved=resolved,
                info={**lineage, "checkpoint": final_rel, "step": global_step, "eval_loss": result.get("eval_loss")})
    for rel, model_id in models.items():
        if rel not in (best_rel, final_rel):
            c.set_logged_model_tags(model_id, {TAG_FILES: f"job folder only: {rel} (only the best and final weights are uploaded)"})
    for m in c.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{mlflow_run_id}'", max_results=1000):
        if m.model_id not in models.values() and str(m.status) != "READY":
            c.set_logged_model_tags(m.model_id, {TAG_FILES: "none: removed from the job folder by save_total_limit"})

    # 4. final figures, pictures, summary
    now = int(time.time() * 1000)
    summary = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    c.log_batch(mlflow_run_id, metrics=[Metric(f"final.{k}", float(v), now, global_step) for k, v in summary.items()])
    if (job_dir / "spec.json").exists():
        c.log_artifact(mlflow_run_id, str(job_dir / "spec.json"))
    c.log_artifact(mlflow_run_id, str(job_dir / "result.json"))
    registered = register_version(c, spec.name, mlflow_run_id, best_model_id, lineage)
    with tempfile.TemporaryDirectory(prefix="airtune-summary-", dir=job_dir) as tmp:
        png = tracking_report.curves_png(records, Path(tmp) / "curves.png", title=spec.name)
        md = tracking_report.summary_markdown(resolved, result, records, lineage, registered, run.info.start_time)
        (Path(tmp) / "summary.md").write_text(md)
        if png is not None:
            c.log_artifact(mlflow_run_id, str(png), "summary")
        c.log_artifact(mlflow_run_id, str(Path(tmp) / "summary.md"), "summary")
    note = "\n".join(line for line in md.splitlines() if not line.startswith("!["))  # the image is beside summary.md
    set_tags(mlflow_run_id, {"mlflow.note.content": note, "airtune.best_checkpoint": best_rel}, c=c)
    c.set_terminated(mlflow_run_id, "FINISHED")
    return {
        "registered_model": spec.name,
        "model_version": registered["version"],
        "model_uri": f"models:/{spec.name}@{ALIAS_BEST}" if registered["alias_best"] else f"models:/{spec.name}/{registered['version']}",
        "alias_best": bool(registered["alias_best"]),
        "logged_model_id": best_model_id,
        "best_checkpoint": best_rel,
        "best_step": best_step,
        "best_eval_loss": best_eval,
        "output_dir": str(best_dir),
        "backfilled_metrics": backfilled,
    }


def register_version(c, name: str, mlflow_run_id: str, model_id: str, lineage: dict) -> dict:
    """A version of the registered model `name` from the logged model; idempotent.

    Alias `best`: the new version takes it unless the version holding it has a strictly lower eval
    loss on the same data (same content hash); a retraining job on new data always moves it.
    """
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(name, tags={TAG_JOB: name}, description=f"airtune job {name}: each version is one DAG run's best checkpoint")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc):
            raise
    existing = [mv for mv in c.search_model_versions(f"name = '{name}'") if mv.run_id == mlflow_run_id]
    if existing:
        mv = existing[0]
    else:
        tags = {k: ("" if v is None else (",".join(v) if isinstance(v, list) else str(v))) for k, v in lineage.items()}
        mv = c.create_model_version(
            name, source=f"models:/{model_id}", run_id=mlflow_run_id, tags=tags, model_id=model_id,
            description=f"{lineage['checkpoint']} (step {lineage['step']}) of DAG run {lineage['airflow_run_id']}",
        )
        # the link back from the logged model to its version, as mlflow.register_model records it
        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

        linked = json.loads(c.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        linked.append({"name": name, "version": int(mv.version)})
        c.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked)})
    alias_best = _move_best_alias(c, name, mv)
    return {"version": str(mv.version), "alias_best": alias_best}


def _move_best_alias(c, name: str, mv) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        holder = c.get_model_version_by_alias(name, ALIAS_BEST)
    except MlflowException:
        holder = None
    if holder is not None and str(holder.version) != str(mv.version):
        def loss(v):
            try:
                return float(v.tags.get("eval_loss"))
            except (TypeError, ValueError):
                return None

        same_data = holder.tags.get("data_content_hash") and holder.tags.get("data_content_hash") == mv.tags.get("data_content_hash")
        if same_data and loss(holder) is not None and (loss(mv) is None or loss(holder) < loss(mv)):
            return False
    c.set_registered_model_alias(name, ALIAS_BEST, mv.version)
    return True


def mark_failed(mlflow_run_id: str) -> None:
    client().set_terminated(mlflow_run_id, "FAILED")


# --- evaluation (the evaluate task's results) --------------------------------------------------

EVAL_SOURCES = ("base", "tuned", "champion")


def _metric_key(name: str) -> str:
    """MLflow keys take letters, digits, _ - . / and spaces: benchmark:mmlu/anatomy -> benchmark.mmlu/anatomy."""
    return re.sub(r"[^\w./ -]", ".", name)


def evaluation_metrics(evaluation: dict) -> dict[str, float]:
    """`base/rouge-l`, `tuned/eval_loss`, ...: each source's figures under its prefix (finite numbers only)."""
    out = {}
    for source in EVAL_SOURCES:
        for key, value in (evaluation.get(source) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[f"{source}/{_metric_key(key)}"] = float(value)
    return out


def record_evaluation(mlflow_run_id: str, name: str, version: str, evaluation_dir: Path, *, step: int = 0,
                      run_metrics: bool = True, artifact_path: str = "evaluation", evaluated_on: str = "") -> dict:
    """The evaluate task's results on the run (metrics `base/…`, `tuned/…`, the predictions as an MLflow
    table `<artifact_path>/predictions.json`, both files) and on the model version (tags
    `eval.<source>.<metric>`, `eval.evaluated_on`). Safe to repeat: metrics are logged at one step, tags
    and artefacts overwritten. `run_metrics=False` (a later re-evaluation) leaves the run's metrics alone."""
    from mlflow.entities import Metric

    evaluation_dir = Path(evaluation_dir)
    evaluation = json.loads((evaluation_dir / "evaluation.json").read_text())
    c = client()
    now = int(time.time() * 1000)
    metrics = evaluation_metrics(evaluation)
    if run_metrics:
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 900):
            c.log_batch(mlflow_run_id, metrics=items[i:i + 900])
    for f in ("evaluation.json", "predictions.jsonl"):
        if (evaluation_dir / f).exists():
            c.log_artifact(mlflow_run_id, str(evaluation_dir / f), artifact_path)
    rows = read_records(evaluation_dir / "predictions.jsonl") if (evaluation_dir / "predictions.jsonl").exists() else []
    if rows:
        table: dict[str, list] = {k: [] for k in ("prompt", "reference", "base", "tuned")}
        score_keys = sorted({k for r in rows for k in (r.get("tuned_scores") or {})})
        for k in score_keys:
            table[f"base {k}"], table[f"tuned {k}"] = [], []
        for r in rows:
            for k in ("prompt", "reference", "base", "tuned"):
                table[k].append(r.get(k))
            for k in score_keys:
                table[f"base {k}"].append((r.get("base_scores") or {}).get(k))
                table[f"tuned {k}"].append((r.get("tuned_scores") or {}).get(k))
        try:
            c.log_table(mlflow_run_id, data=table, artifact_file=f"{artifact_path}/predictions.json")
        except Exception as exc:  # the table view is a convenience; the jsonl is the record
            log.warning("could not log the predictions table: %s", exc)
    tags = {f"eval.{k.replace('/', '.', 1)}": f"{v:.6g}" for k, v in metrics.items()}
    tags["eval.samples"] = str(evaluation.get("samples", ""))
    tags["eval.evaluated_on"] = (evaluated_on or str(evaluation.get("source", "")))[:TAG_VALUE_LIMIT]
    tags["eval.evaluated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for old_key in [k for k in (c.get_model_version(name, version).tags or {}) if k.startswith("eval.") and k not in tags]:
        c.delete_model_version_tag(name, version, old_key)  # figures of an earlier evaluation: not mixed in
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v)
    return {"metrics": metrics, "samples": evaluation.get("samples")}
