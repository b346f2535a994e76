"""Jobs as a whole: find a job's traces everywhere and delete them (the seed's "删除微调任务").

A job's traces: DAG runs in Airflow whose conf names it, MLflow runs of its experiment (hard
deleted, artefacts included), its registered model, its workspace folder.
"""

from __future__ import annotations

import shutil

from airtune import paths

FINETUNE_DAG = "airtune_finetune"


class JobActive(RuntimeError):
    pass


def _dag_runs(name: str, session):
    from airflow.models.dagrun import DagRun

    runs = session.query(DagRun).filter(DagRun.dag_id.like("airtune_%")).all()
    out = []
    for dr in runs:
        conf = dr.conf or {}
        if conf.get("name") == name or dr.dag_id == f"airtune_retrain__{name}":
            out.append(dr)
    return out


def delete_job(name: str, *, force: bool = False) -> list[str]:
    """Delete every trace of one job on the embedded default; returns what was deleted, one line each."""
    from airtune import localstack

    localstack.apply()
    report: list[str] = []
    from airflow import settings
    from airflow.utils.state import DagRunState

    settings.configure_orm()
    session = settings.Session()
    try:
        runs = _dag_runs(name, session)
        active = [dr for dr in runs if dr.state in (DagRunState.RUNNING, DagRunState.QUEUED)]
        if active and not force:
            raise JobActive(f"job {name!r} has an active run ({active[0].run_id}); stop it first or use --force")
        for dr in active:
            dr.set_state(DagRunState.FAILED)
        session.flush()
        from airtune.launch import local

        job_root = paths.workspace() / "jobs" / name
        for pid_file in job_root.glob("*/train.pid"):
            local.cleanup(pid_file.parent)
        for dr in runs:
            report.append(f"airflow: deleted DAG run {dr.dag_id} / {dr.run_id}")
            session.delete(dr)
        session.commit()
    finally:
        session.close()
    report += _delete_mlflow(name)
    if job_root.exists():
        shutil.rmtree(job_root)
        report.append(f"files: deleted {job_root}")
    if not report:
        report.append(f"nothing found for job {name!r}")
    return report


def _delete_mlflow(name: str) -> list[str]:
    from mlflow.exceptions import MlflowException

    from airtune import tracking

    c = tracking.client()
    out = []
    try:
        c.delete_registered_model(name)
        out.append(f"mlflow: deleted registered model {name}")
    except MlflowException:
        pass
    exp = c.get_experiment_by_name(tracking.experiment_name(name))
    if exp is not None:
        from mlflow.entities import ViewType

        for run in c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=10000):
            _purge_artifacts(c, run)
            c.delete_run(run.info.run_id)
            out.append(f"mlflow: deleted run {run.info.run_id}")
        c.delete_experiment(exp.experiment_id)
        _purge_deleted(exp.experiment_id)
        out.append(f"mlflow: deleted experiment {exp.name}")
    return out


def _purge_artifacts(c, run) -> None:
    uri = run.info.artifact_uri or ""
    if uri.startswith("file://"):
        shutil.rmtree(uri.removeprefix("file://"), ignore_errors=True)


def _purge_deleted(experiment_id: str) -> None:
    """Hard delete (MLflow's delete is soft): the same as `mlflow gc` for this experiment."""
    import subprocess
    import sys
    from pathlib import Path

    from airtune import tracking

    uri = tracking.tracking_uri()
    if uri.startswith("http"):
        return  # a server's operator runs `mlflow gc` on its own backend
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    subprocess.run([mlflow, "gc", "--backend-store-uri", uri, "--experiment-ids", experiment_id], check=False, capture_output=True)
