"""`airtune run`: one job through the real airtune_finetune DAG on the embedded default.

It uses Airflow's own `dag.test()`: the DAG is synced into the metadata database, a DAG run is
created there with the job as its `conf`, and every task runs through the task runner, so the run
and its task logs are in the Airflow UI afterwards (`make up`). No scheduler needs to be running.
"""

from __future__ import annotations

import json
from pathlib import Path

from airtune import localstack, paths


def _load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(paths.repo_root() / "dags"))
    if dag_id not in bag.dags:
        errors = "\n".join(f"{k}: {v}" for k, v in bag.import_errors.items())
        raise RuntimeError(f"DAG {dag_id} not found in dags/:\n{errors}")
    return bag.dags[dag_id]


def run_job(conf: dict, dag_id: str = "airtune_finetune") -> dict:
    localstack.ensure_airflow_db()
    from airflow import settings

    settings.configure_orm()
    dag = _load_dag(dag_id)
    dr = dag.test(run_conf=conf)
    state = str(getattr(dr.state, "value", dr.state))
    summary: dict = {"state": state, "dag_id": dag_id, "dag_run_id": dr.run_id}
    name = conf.get("name")
    job_dir = paths.job_dir(name, dr.run_id) if name else None
    if job_dir is not None:
        summary["job_dir"] = str(job_dir)
        for fname in ("registered.json", "result.json"):
            f = job_dir / fname
            if f.exists():
                data = json.loads(f.read_text())
                for k in ("mlflow_run_id", "registered_model", "model_version", "output_dir", "train_loss_first", "train_loss_last", "global_step"):
                    if k in data and k not in summary:
                        summary[k] = data[k]
        spec = job_dir / "spec.json"
        if spec.exists() and "mlflow_run_id" not in summary:
            summary["mlflow_run_id"] = json.loads(spec.read_text()).get("tracking", {}).get("mlflow_run_id")
    for k in ("mlflow_run_id", "registered_model", "model_version", "output_dir", "train_loss_first", "train_loss_last"):
        summary.setdefault(k, None)
    return summary


def print_summary(s: dict) -> None:
    env = localstack.environment()
    lines = [
        "",
        "airtune job finished",
        f"  DAG run          {s['dag_id']} / {s['dag_run_id']}: {s['state']}",
        f"  training loss    {_fmt(s.get('train_loss_first'))} at the start -> {_fmt(s.get('train_loss_last'))} at the end",
        f"  adapter          {s.get('output_dir')}",
        f"  MLflow run       {s.get('mlflow_run_id')}",
        f"  registered model {s.get('registered_model')} version {s.get('model_version')} (models:/{s.get('registered_model')}@best)",
        "",
        "See it in the UIs: `make up`, then",
        f"  Airflow  {env['AIRFLOW__API__BASE_URL']}/dags/{s['dag_id']}/runs  (login printed by make up)",
        f"  MLflow   http://127.0.0.1:{localstack.MLFLOW_PORT}",
    ]
    print("\n".join(lines))


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else str(v)
