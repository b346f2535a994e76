"""The bodies of the DAG's tasks. The DAG file stays thin; everything heavy is imported in here, lazily.

validate ─► prepare_dataset ─► choose_launcher ─► train_<kind> ─► evaluate_<kind> ─► register
         ─► choose_promotion ─► [approve] ─► promote ─► cleanup (always)

Each task gets and returns small JSON-able dicts (XCom); the real hand-over is the job folder
`<workspace>/jobs/<name>/<run_id>/` (docs/architecture.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from airtune import paths

log = logging.getLogger("airtune")

OWNER_FILE = ".owner.json"


class NameInUse(ValueError):
    pass


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def claim_name(name: str, owner: str, run_id: str) -> Path:
    """Take the job name for this DAG run (docs/form.md#job-names: a name identifies one job).

    The first run of a name writes `<workspace>/jobs/<name>/.owner.json` with O_EXCL, so two runs
    started at once cannot both take it. `owner` is the DAG run (on-demand jobs) or the DAG id
    (retraining DAGs, whose job file owns the name and whose every run adds a model version).
    """
    root = paths.workspace() / "jobs" / name
    root.mkdir(parents=True, exist_ok=True)
    owner_file = root / OWNER_FILE
    record = {"owner": owner, "first_run_id": run_id, "claimed_at": time.time()}
    try:
        fd = os.open(owner_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        current = json.loads(owner_file.read_text() or "{}")
        if current.get("owner") != owner:
            raise NameInUse(
                f"name: {name!r} is in use by an earlier job ({current.get('owner')}); "
                "pick another name, or delete that job first (airtune delete NAME)"
            ) from None
        return root
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return root


def validate(conf: dict, *, dag_id: str, run_id: str, owner: str | None = None) -> dict:
    """conf → resolved spec in the job folder, the name claimed and the MLflow run created."""
    from airtune import form, tracking
    from airtune.resolve import format_errors, validate_mapping
    from airtune.spec import SpecError

    started = time.monotonic()
    try:
        resolved = validate_mapping(form.conf_to_mapping(conf))
    except SpecError as exc:
        raise ValueError("the job is not valid:\n" + format_errors(exc)) from None
    name = resolved["spec"]["name"]
    stop_if_deleted(name, dag_id, run_id)
    root = claim_name(name, owner or f"{dag_id}/{run_id}", run_id)
    job_dir = root / paths.safe_run_component(run_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    for w in resolved.get("warnings", []):
        log.warning("%s", w)
    mlflow_run_id = tracking.ensure_run(resolved, dag_id, run_id)
    resolved["tracking"] = {"mlflow_run_id": mlflow_run_id, "dag_id": dag_id, "run_id": run_id}
    _write_json_atomic(job_dir / "spec.json", resolved)
    log.info("job %s: resolved spec written to %s (%.1f s); MLflow run %s", name, job_dir / "spec.json", time.monotonic() - started, mlflow_run_id)
    from airtune.launch import launcher_kind

    return {
        "name": name,
        "job_dir": str(job_dir),
        "mlflow_run_id": mlflow_run_id,
        "launcher": launcher_kind(resolved),
    }


def load_resolved(job: dict) -> dict:
    return json.loads((Path(job["job_dir"]) / "spec.json").read_text())


def prepare_dataset(job: dict) -> dict:
    from airtune import data, tracking

    resolved = load_resolved(job)
    job_dir = Path(job["job_dir"])
    cache = paths.airtune_home() / "cache" / "prepared"
    if resolved["location"].get("kind", "local") != "local":  # a CPU pod in the cluster does the work
        from airtune.launch import kubernetes

        manifest = kubernetes.prepare_in_cluster(job, resolved, echo=log.info)
    else:
        from airtune.data.errors import DataError

        try:
            manifest = data.prepare(resolved, job_dir / "data", cache_dir=cache, log=log.info)
        except DataError as exc:
            fail_now(f"the data cannot be prepared: {exc}")
    figures = {}
    if hasattr(data, "training_figures"):
        figures = data.training_figures(manifest, resolved["spec"])
        for w in figures.get("warnings", []):
            log.warning("%s", w)
        log.info("before training: %s", json.dumps({k: v for k, v in figures.items() if k != "warnings"}))
    from airtune.data.figures import memory_check

    memory, refusal = memory_check(manifest, resolved)  # validate's estimate again, with the rows' real lengths
    if memory is not None:
        log.info("GPU memory with rows of %s tokens (the prepared data's longest): about %s GiB per process of %s GiB",
                 memory["row_tokens"], memory["gpu_memory_gib_per_process"], memory["gpu_memory_gib_available"])
    if refusal:
        fail_now(refusal)
    try:
        tracking.record_dataset(job["mlflow_run_id"], manifest, resolved)
        if figures:
            c = tracking.client()
            tracking.log_params_once(c, job["mlflow_run_id"], tracking.flatten({"figures": {k: v for k, v in figures.items() if k != "warnings"}}))
    except Exception as exc:  # tracking is informative here; never lose the prepared data over it
        log.warning("could not record the dataset in MLflow: %s", exc)
    return {**job, "data_dir": str(job_dir / "data")}


def stop_if_deleted(name: str, dag_id: str, run_id: str) -> None:
    """Fail at once, writing nothing more, when the job was deleted (airtune delete --force) while
    this run of it was under way (jobs.mark_deleted)."""
    from airtune import jobs

    if jobs.deleted_run(name, dag_id, run_id) is not None:
        fail_now(f"job {name!r} was deleted (airtune delete --force) while this run of it was under way")


def fail_now(message: str):
    """Fail this task without its retries: the same input gives the same error."""
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(f"{message}\n(not retried: this error does not go away by running the task again)")


def train_env(job: dict) -> dict[str, str]:
    """The training (and evaluate) command's environment on this machine: launch.environment's table."""
    from airtune import tracking
    from airtune.launch.environment import launch_env

    return launch_env(role="train", job_dir=job["job_dir"], tracking_uri=tracking.tracking_uri(),
                      mlflow_run_id=job["mlflow_run_id"])


def train_local(job: dict) -> dict:
    from airtune.launch import local
    from airtune.launch.command import train_command

    resolved = load_resolved(job)
    job_dir = Path(job["job_dir"])
    cmd = train_command(
        resolved,
        spec_path=job_dir / "spec.json",
        data_dir=job["data_dir"],
        output_dir=job_dir / "output",
    )
    try:
        local.run(cmd, job_dir=job_dir, env=train_env(job), echo=log.info)
    except local.TrainingRefused as exc:
        fail_now(str(exc))
    return job


EVALUATION_DIR = "evaluation"


def evaluate_inputs(job: dict) -> dict:
    """What the evaluate step scores: the weights register will register (tracking.best_model_dir)
    and, when the job may move `champion`, the current champion's weights to score on the same data."""
    from airtune import tracking

    job_dir = Path(job["job_dir"])
    result = json.loads((job_dir / "result.json").read_text())
    resolved = load_resolved(job)
    out = {"model_dir": str(tracking.best_model_dir(job_dir, result)), "champion_dir": None, "champion_version": None}
    if resolved["spec"].get("promote", "never") != "never":
        try:
            from airtune import inference, promotion

            mv = promotion.champion_of(tracking.client(), resolved["spec"]["name"])
            if mv is not None:
                folder, _ = inference.locate(inference.find_version(resolved["spec"]["name"], mv.version))
                out.update(champion_dir=str(folder), champion_version=str(mv.version))
        except Exception as exc:  # scored from its recorded numbers instead (promotion says so)
            log.warning("the champion's weights cannot be scored on this job's data: %s", exc)
    return out


def evaluate_local(job: dict) -> dict:
    """Score the tuned model and the model the job started from (python -m airtune.evaluate) on this machine."""
    from airtune.launch import local
    from airtune.launch.command import evaluate_command

    resolved = load_resolved(job)
    job_dir = Path(job["job_dir"])
    inputs = evaluate_inputs(job)
    cmd = evaluate_command(resolved, spec_path=job_dir / "spec.json", data_dir=job["data_dir"],
                           model_dir=inputs["model_dir"], output_dir=job_dir / EVALUATION_DIR)
    if inputs["champion_dir"]:
        cmd += ["--champion", inputs["champion_dir"], "--champion-version", inputs["champion_version"]]
    started = time.monotonic()
    try:
        local.run(cmd, job_dir=job_dir, env=train_env(job), echo=log.info)
    except local.TrainingRefused as exc:
        fail_now(str(exc).replace("training refused", "evaluation refused"))
    log.info("evaluation: %s (%.0f s)", evaluation_summary(job_dir / EVALUATION_DIR), time.monotonic() - started)
    return job


def evaluation_summary(folder: Path) -> str:
    """One line: the tuned figures against the base figures."""
    try:
        ev = json.loads((Path(folder) / "evaluation.json").read_text())
    except (OSError, ValueError):
        return "no results"
    base, tuned = ev.get("base") or {}, ev.get("tuned") or {}
    parts = []
    for k, v in tuned.items():
        if "/" in k or not isinstance(v, (int, float)):
            continue
        b = base.get(k)
        parts.append(f"{k} {b:.4g} -> {v:.4g}" if isinstance(b, (int, float)) else f"{k} {v:.4g}")
    return ", ".join(parts) or "no figures"


def start_kubernetes_job(job: dict) -> dict:
    """Setup of the several-machines branch: the headless Service its pods find each other through."""
    from airtune.launch import kubernetes

    return {**job, "service": kubernetes.create_service(job, load_resolved(job))}


def teardown_kubernetes_job(job: dict | None) -> None:
    """Teardown of the several-machines branch: the Job(s), their pods and the Service, however it ended."""
    if not job:
        return
    from airtune.launch import kubernetes

    for line in kubernetes.cleanup_run_objects(job):
        log.info("%s", line)


def register(job: dict) -> dict:
    """The MLflow side of a finished training (tracking.finish_run): metrics MLflow missed, every
    checkpoint, the best one registered with alias `best`, the curves and summary; safe to retry."""
    from airtune import tracking

    job_dir = Path(job["job_dir"])
    result = json.loads((job_dir / "result.json").read_text())
    resolved = load_resolved(job)
    spec = resolved["spec"]
    if (where := resolved.get("tracking") or {}).get("run_id"):
        stop_if_deleted(spec["name"], where.get("dag_id", ""), where["run_id"])
    recorded = tracking.finish_run(job_dir, resolved, job["mlflow_run_id"])
    evaluation_dir = job_dir / EVALUATION_DIR
    if (evaluation_dir / "evaluation.json").exists():
        tracking.record_evaluation(job["mlflow_run_id"], spec["name"], recorded["model_version"], evaluation_dir,
                                   step=int(result.get("global_step") or 0))
    out = {
        **job,
        **recorded,
        "train_loss_first": result.get("train_loss_first"),
        "train_loss_last": result.get("train_loss_last"),
    }
    _write_json_atomic(job_dir / "registered.json", out)
    log.info("registered %s version %s (%s) from %s", spec["name"], recorded["model_version"], recorded["model_uri"], recorded["best_checkpoint"])
    return out


def promotion_mode(job: dict) -> str:
    return load_resolved(job)["spec"].get("promote") or "never"


def comparison_markdown(job: dict) -> str:
    """The approve task's body: the new version against the champion and the base model (a Markdown table)."""
    from airtune import promotion, tracking

    resolved = load_resolved(job)
    spec = resolved["spec"]
    metric = spec.get("promote_metric") or "eval_loss"
    try:
        ev = json.loads((Path(job["job_dir"]) / EVALUATION_DIR / "evaluation.json").read_text())
    except (OSError, ValueError):
        ev = {}
    champion = ev.get("champion") or {}
    mv = promotion.champion_of(tracking.client(), spec["name"])
    if mv is not None and not champion:
        champion = {k.removeprefix("eval.tuned."): float(v) for k, v in mv.tags.items() if k.startswith("eval.tuned.")}
    keys = [k for k in (ev.get("tuned") or {}) if "/" not in k]
    heads = ["metric", "base model", f"champion (version {mv.version})" if mv is not None else "champion (none yet)",
             f"new (version {job.get('model_version')})"]
    lines = [f"**{spec['name']}**: promote version {job.get('model_version')} to `champion`? "
             f"Compared on `{metric}` ({'lower' if metric in promotion.LOWER_IS_BETTER else 'higher'} is better), "
             f"{ev.get('samples', 0)} held-out prompts.", "",
             "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]

    def cell(d: dict, k: str) -> str:
        v = d.get(k, d.get(promotion.metric_key(k)))
        return f"{v:.4g}" if isinstance(v, (int, float)) else "–"

    for k in keys:
        name = f"**{k}**" if k == metric else k
        lines.append(f"| {name} | {cell(ev.get('base') or {}, k)} | {cell(champion, k)} | {cell(ev['tuned'], k)} |")
    lines += ["", f"Approve: version {job.get('model_version')} becomes the version in use. Reject (or no answer in "
                  f"{spec.get('promote_timeout_hours') or 24:g} h): the champion stays."]
    return "\n".join(lines)


def promote(job: dict, approval: dict | None = None) -> dict:
    """Apply the job's promote policy to the version register made; record the decision either way."""
    from airtune import promotion, tracking

    resolved = load_resolved(job)
    spec = resolved["spec"]
    name, version = spec["name"], str(job["model_version"])
    mode, metric = spec.get("promote") or "never", spec.get("promote_metric") or "eval_loss"
    try:
        ev = json.loads((Path(job["job_dir"]) / EVALUATION_DIR / "evaluation.json").read_text())
    except (OSError, ValueError):
        ev = {}
    c = tracking.client()
    holder = promotion.champion_of(c, name)
    if holder is not None and str(holder.version) == version:  # a retry after the alias moved
        log.info("promotion: version %s already holds champion", version)
        return {**job, "promoted": True, "champion_version": version}
    champion_value, source = None, ""
    if holder is not None:
        scored = ev.get("champion") or {}
        if str(ev.get("champion_version")) == str(holder.version) and metric in scored:
            champion_value, source = scored[metric], " (scored on this job's data)"
        else:
            champion_value = promotion.recorded_value(holder, metric)
            source = " (as recorded at its own evaluation, on its data)"
    value = (ev.get("tuned") or {}).get(metric)
    if value is None and metric == "eval_loss":  # rm / dpo / kto: the trainer's own eval loss of this version
        value = job.get("best_eval_loss")
        if holder is not None and champion_value is None:
            champion_value = promotion.finite(holder.tags.get("eval_loss"))
    decision = promotion.decide(mode, metric, value,
                                champion_version=str(holder.version) if holder is not None else None,
                                champion_value=champion_value, approval=approval, champion_source=source)
    promotion.apply(c, name, version, decision)
    log.info("promotion of %s version %s: %s (%s)", name, version,
             "promoted to champion" if decision.promoted else "not promoted", decision.reason)
    out = {**job, "promoted": decision.promoted, "promotion": decision.reason, "decided_by": decision.by,
           "champion_version": version if decision.promoted else (str(holder.version) if holder is not None else None)}
    _write_json_atomic(Path(job["job_dir"]) / "promotion.json", out)
    return out


def cleanup(job: dict | None, *, failed: bool = False) -> None:
    """Always runs: stop anything the train step left behind; mark the MLflow run failed if the DAG run failed."""
    if not job:
        return
    from airtune.launch import local

    if local.cleanup(Path(job["job_dir"])):
        log.warning("stopped a training process group left behind in %s", job["job_dir"])
    if job.get("launcher", "local") != "local":  # pods, Jobs, Services a killed worker left behind
        try:
            from airtune.launch import kubernetes

            for line in kubernetes.cleanup_run_objects(job):
                log.warning("left behind: %s", line)
        except Exception as exc:
            log.warning("could not clean up the Kubernetes objects of this run: %s", exc)
    if failed and job.get("mlflow_run_id"):
        try:
            from airtune import tracking

            tracking.client().set_terminated(job["mlflow_run_id"], "FAILED")
        except Exception as exc:
            log.warning("could not mark the MLflow run failed: %s", exc)
