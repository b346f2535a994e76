"""MLflow: one run per DAG run, the spec as params, metrics, the final weights and the registry.

This module owns "one MLflow run per DAG run, never two": the run is found again by its Airflow
tags on every task and every retry, so a retry never creates a second run. mlflow is imported
inside the functions: the DAG file imports this package without paying for it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from airtune import __version__, paths

log = logging.getLogger(__name__)

TAG_DAG_ID = "airflow.dag_id"
TAG_RUN_ID = "airflow.run_id"
TAG_JOB = "airtune.job"
PARAM_VALUE_LIMIT = 6000  # MLflow refuses longer param values


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{paths.airtune_home() / 'mlflow' / 'mlflow.db'}"


def _local_artifact_root() -> Path | None:
    """Where artefacts go when the tracking URI is a local database (the embedded default)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        return paths.airtune_home() / "mlflow" / "artifacts"
    return None


def client():
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_name(job_name: str) -> str:
    return f"airtune/{job_name}"


def _experiment_id(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    root = _local_artifact_root()
    location = None
    if root is not None:
        location = (root / name.replace("/", "_")).as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by a parallel task
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts become dotted keys; values are strings within MLflow's length limit."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
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
    )
    return runs[0] if runs else None


def run_tags(resolved: dict, dag_id: str, run_id: str) -> dict[str, str]:
    spec = resolved["spec"]
    return {
        TAG_DAG_ID: dag_id,
        TAG_RUN_ID: run_id,
        TAG_JOB: spec["name"],
        "airtune.version": __version__,
        "airtune.base_model": spec["base_model"],
        "airtune.template": str(spec["template"]),
        "airtune.method": spec["finetuning_method"],
        "airtune.stage": spec["stage"],
        "airtune.datasets": ",".join(spec["dataset"]),
        "airtune.location": spec["location"],
        "mlflow.runName": f"{spec['name']}:{run_id}"[:250],
    }


def ensure_run(resolved: dict, dag_id: str, run_id: str) -> str:
    """The MLflow run of this DAG run: found by its Airflow tags, else created. Returns its id."""
    c = client()
    spec = resolved["spec"]
    exp_id = _experiment_id(c, experiment_name(spec["name"]))
    run = find_run(c, exp_id, dag_id, run_id)
    if run is None:
        run = c.create_run(exp_id, tags=run_tags(resolved, dag_id, run_id), run_name=f"{spec['name']}-{run_id}"[:250])
    log_params_once(c, run.info.run_id, flatten({"spec": spec}))
    return run.info.run_id


def log_params_once(c, mlflow_run_id: str, params: dict[str, str]) -> None:
    """Log the params this run does not have yet: a retry with the same spec changes nothing."""
    from mlflow.entities import Param

    have = c.get_run(mlflow_run_id).data.params
    new = [Param(k[:250], v) for k, v in params.items() if k[:250] not in have]
    for i in range(0, len(new), 100):
        c.log_batch(mlflow_run_id, params=new[i : i + 100])


def set_tags(mlflow_run_id: str, tags: dict[str, str]) -> None:
    c = client()
    for k, v in tags.items():
        c.set_tag(mlflow_run_id, k, v)


def log_metrics_file(mlflow_run_id: str, metrics_file: Path) -> int:
    """Log every record of the trainer's metrics.jsonl (used when live logging was not possible)."""
    from mlflow.entities import Metric

    if not metrics_file.exists():
        return 0
    c = client()
    metrics = []
    for line in metrics_file.read_text().splitlines():
        rec = json.loads(line)
        step = int(rec.get("step", 0))
        ts = int(rec.get("time", time.time()) * 1000)
        for k, v in rec.items():
            if k not in ("step", "time") and isinstance(v, (int, float)):
                metrics.append(Metric(k, float(v), ts, step))
    for i in range(0, len(metrics), 500):
        c.log_batch(mlflow_run_id, metrics=metrics[i : i + 500])
    return len(metrics)


def register(mlflow_run_id: str, model_name: str, final_dir: Path, *, tags: dict[str, str] | None = None) -> str:
    """Log the final weights as artefacts and register them as a version of `model_name`.

    Idempotent: on a retry the version this run already registered is returned, never a second one.
    The newest version also gets the alias `best` (MLflow reserves `latest`).
    """
    c = client()
    from mlflow.exceptions import MlflowException

    c.log_artifacts(mlflow_run_id, str(final_dir), "final")
    try:
        c.create_registered_model(model_name, tags={"airtune.job": model_name})
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc):
            raise
    for mv in c.search_model_versions(f"name = '{model_name}'"):
        if mv.run_id == mlflow_run_id:
            return str(mv.version)
    source = c.get_run(mlflow_run_id).info.artifact_uri.rstrip("/") + "/final"
    mv = c.create_model_version(model_name, source=source, run_id=mlflow_run_id, tags=tags or {})
    c.set_registered_model_alias(model_name, "best", mv.version)
    return str(mv.version)
