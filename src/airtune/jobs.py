"""Jobs as a whole: find a job's traces everywhere and delete them (the seed's irreversible "删除微调任务").

A job's traces: its DAG runs in Airflow (and their task logs), its MLflow experiment with every run,
logged model and artefact (hard deleted, not only MLflow's soft delete), its registered model and
versions, its workspace folder, and any Kubernetes objects the Kubernetes launcher left.

Deleting touches nothing of another job: every look-up goes by the job's own name (the DAG runs
whose conf names it, the experiment `airtune/<name>`, the registered model `<name>`), and the hard
delete is scoped to the ids found there. MLflow's `mlflow gc` is not used for that reason: given an
experiment but no run ids, it purges every deleted run of every experiment.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from airtune import paths

FINETUNE_DAG = "airtune_finetune"
RETRAIN_PREFIX = "airtune_retrain__"
ACTIVE_STATES = ("running", "queued")


class JobActive(RuntimeError):
    pass


@contextmanager
def airflow_session():
    """A session on Airflow's metadata database (the embedded default's unless configured otherwise)."""
    from airtune import localstack

    env = localstack.apply()
    if env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:"):
        # the embedded default: on a fresh checkout the database does not exist yet (`make demo`
        # deletes its earlier demo job first); a deployment's database is migrated by its own tools
        localstack.ensure_airflow_db()
    from airflow import settings

    settings.configure_orm()
    session = settings.Session()
    try:
        yield session
    finally:
        session.close()


# The states of a run's validate task that say it never became the job's run: refused (a bad job, a
# name in use) or never checked (cancelled first).
REFUSED_VALIDATE_STATES = {"failed", "upstream_failed", "skipped", "removed"}


def job_runs(session, names: set[str] | None = None) -> list[tuple[str, object]]:
    """(job name, DAG run) for every DAG run that belongs to a job: the one place that decides it.

    A run belongs to the job it names (its conf, or the retraining DAG that owns the name) once its
    validate task succeeded; a run still on its way to validate counts too (so that a forced delete
    cancels it). A run that validate refused (a bad job, a name in use) is no run of the job: the jobs
    page, `airtune list/status` and `delete` leave it out."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance

    from airtune.status import job_name_of

    validate = {
        (dag_id, run_id): str(getattr(state, "value", state)) if state is not None else None
        for dag_id, run_id, state in session.query(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.state)
        .filter(TaskInstance.task_id == "validate", TaskInstance.dag_id.like("airtune%"))
    }
    out = []
    for dr in session.query(DagRun).filter(DagRun.dag_id.like("airtune%")).all():
        name = job_name_of(dr.dag_id, dr.conf or {})
        if not name or (names is not None and name not in names):
            continue
        state = validate.get((dr.dag_id, dr.run_id))
        if state == "success" or (state not in REFUSED_VALIDATE_STATES and _state(dr) in ACTIVE_STATES):
            out.append((name, dr))
    return out


def dag_runs(name: str, session) -> list:
    """The DAG runs of one job (job_runs)."""
    return [dr for _, dr in job_runs(session, {name})]


def _state(dr) -> str:
    return str(getattr(dr.state, "value", dr.state))


def active_runs(name: str) -> list[str]:
    with airflow_session() as session:
        return [f"{dr.dag_id} / {dr.run_id}" for dr in dag_runs(name, session) if _state(dr) in ACTIVE_STATES]


class InvalidName(ValueError):
    """A name that cannot be a job's: nothing is looked up or deleted."""


def check_name(name: str) -> None:
    """A job name as the form accepts it (a DNS label), so that no path or MLflow name is built from
    anything else (`..`, `/`, an absolute path)."""
    from airtune.names import is_dns_label

    if not isinstance(name, str) or not is_dns_label(name):
        from airtune.jobfile import printable

        raise InvalidName(f"{printable(name)!r} is not a job name: job names are lower-case letters, digits and '-', "
                          "starting and ending with a letter or digit, at most 63 characters (docs/form.md#name)")


def _own_folder(root: Path, name: str) -> Path:
    """root/name, refused unless it resolves to a folder directly inside root (no link or `..` out of it)."""
    folder = (root / name).resolve()
    if folder.parent != root.resolve() or folder.name != name:
        raise InvalidName(f"{root / name} resolves to {folder}, outside {root}: refusing to delete it")
    return folder


def delete_job(name: str, *, force: bool = False) -> list[str]:
    """Delete every trace of one job; returns what was deleted, one line each.

    Refuses (JobActive, nothing changed) while a DAG run of the job is queued or running, unless
    `force`: then the run is cancelled first (its unfinished tasks marked failed, which makes Airflow
    stop them; the training process group and Kubernetes objects stopped), and deleted after.
    """
    check_name(name)
    folders = [_own_folder(paths.workspace() / "jobs", name), _own_folder(paths.airtune_home() / "prepare", name)]
    report: list[str] = []
    with airflow_session() as session:
        runs = dag_runs(name, session)
        active = [dr for dr in runs if _state(dr) in ACTIVE_STATES]
        if active and not force:
            raise JobActive(
                f"job {name!r} has an active run ({active[0].dag_id} / {active[0].run_id}, {_state(active[0])}); "
                "wait for it to finish, or use --force to cancel it first"
            )
        for dr in active:
            report += cancel_dag_run(dr, session)
        session.commit()
        run_ids = [(dr.dag_id, dr.run_id) for dr in runs]
        locations = {(dr.conf or {}).get("location") or "local" for dr in runs}

    report += _stop_processes(name, locations)
    report += delete_mlflow(name)
    for folder in folders:
        if folder.exists():
            shutil.rmtree(folder)
            report.append(f"files: deleted {folder}")

    with airflow_session() as session:
        for dr in dag_runs(name, session):
            session.delete(dr)  # its task instances and XComs go with it
            report.append(f"airflow: deleted DAG run {dr.dag_id} / {dr.run_id}")
        session.commit()
    report += _delete_task_logs(run_ids)
    if not report:
        report.append(f"nothing found for job {name!r}")
    return report


def cancel_dag_run(dr, session) -> list[str]:
    """What the UI's "mark failed" does: the running tasks failed (their supervisors then kill them),
    the ones not started skipped (so nothing picks them up), the DAG run failed."""
    from datetime import datetime, timezone

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.state import DagRunState, TaskInstanceState

    finished = ("success", "failed", "skipped", "upstream_failed", "removed")
    running = (TaskInstanceState.RUNNING, TaskInstanceState.DEFERRED, TaskInstanceState.UP_FOR_RESCHEDULE)
    unfinished = [s.value for s in TaskInstanceState if s.value not in finished]
    tis = session.query(TaskInstance).filter(
        TaskInstance.dag_id == dr.dag_id, TaskInstance.run_id == dr.run_id,
        TaskInstance.state.in_(unfinished) | TaskInstance.state.is_(None),
    ).all()
    now = datetime.now(timezone.utc)
    stopped = skipped = 0
    for ti in tis:
        if ti.state in running:
            ti.state, stopped = TaskInstanceState.FAILED, stopped + 1
        else:
            ti.state, skipped = TaskInstanceState.SKIPPED, skipped + 1
        ti.end_date = now
    dr.state = DagRunState.FAILED
    dr.end_date = now
    line = f"airflow: cancelled DAG run {dr.dag_id} / {dr.run_id} ({stopped} unfinished tasks marked failed"
    return [line + (f", {skipped} not started skipped)" if skipped else ")")]


def _stop_processes(name: str, locations: set[str]) -> list[str]:
    """The job's training processes: local process groups, and Kubernetes objects through the
    Kubernetes launcher's own clean-up (skipped when every trace says the job ran locally)."""
    import json

    from airtune.launch import local

    out = []
    folder = paths.workspace() / "jobs" / name
    for pid_file in folder.glob(f"*/{local.PID_FILE}"):
        if local.cleanup(pid_file.parent):
            out.append(f"local: stopped the training process group of {pid_file.parent.name}")
    for spec in folder.glob("*/spec.json"):
        try:
            locations.add(json.loads(spec.read_text())["location"]["name"])
        except (OSError, ValueError, KeyError, TypeError):
            locations.add("unknown")
    locations |= _mlflow_locations(name)
    if locations <= {"local"}:  # every trace ran locally, or there is no trace of a run at all
        return out
    try:
        from airtune.launch import kubernetes
    except ImportError:
        return out
    cleanup = getattr(kubernetes, "cleanup_job_objects", None)
    if cleanup is not None:
        for line in cleanup(name) or []:
            out.append(f"kubernetes: {line}")
    return out


def _mlflow_locations(name: str) -> set[str]:
    from airtune import tracking

    c = tracking.client()
    exp = c.get_experiment_by_name(tracking.experiment_name(name))
    if exp is None:
        return set()
    return {r.data.tags.get("airtune.location") or "unknown" for r in _all_runs(c, exp.experiment_id)}


def _delete_task_logs(run_ids: list[tuple[str, str]]) -> list[str]:
    from airtune import localstack

    base = os.environ.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER") or str(localstack.airflow_home() / "logs")
    out = []
    for dag_id, run_id in run_ids:
        folder = os.path.join(base, f"dag_id={dag_id}", f"run_id={run_id}")
        if os.path.isdir(folder):
            shutil.rmtree(folder)
            out.append(f"airflow: deleted task logs {folder}")
    return out


# --- MLflow ------------------------------------------------------------------------------------

def backend_store():
    """MLflow's backend store when this machine can reach it (for the hard delete), else None.

    The tracking URI itself when it is a database (the embedded default); with a tracking server,
    AIRTUNE_MLFLOW_BACKEND_STORE_URI (the server's --backend-store-uri) where an operator gives it.
    """
    from airtune import tracking

    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        uri = os.environ.get("AIRTUNE_MLFLOW_BACKEND_STORE_URI", "")
    if not uri or uri.startswith(("http://", "https://", "databricks")):
        return None
    from mlflow.tracking._tracking_service.utils import _get_store

    store = _get_store(uri)
    return store if hasattr(store, "_hard_delete_run") else None


def _all_runs(c, exp_id: str) -> list:
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = c.search_runs([exp_id], run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _all_logged_models(c, exp_id: str) -> list:
    models, token = [], None
    while True:
        page = c.search_logged_models([exp_id], max_results=100, page_token=token)
        models += list(page)
        token = page.token
        if not token:
            return models


def _delete_artifacts(uri: str | None) -> bool:
    if not uri:
        return False
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        get_artifact_repository(uri).delete_artifacts()
        return True
    except FileNotFoundError:
        return False


def delete_mlflow(name: str) -> list[str]:
    """The job's registered model, and its experiment with every run, logged model and artefact."""
    from mlflow.exceptions import MlflowException

    from airtune import tracking

    c = tracking.client()
    out = []
    try:
        versions = c.search_model_versions(f"name = '{name}'")
        c.delete_registered_model(name)  # the registry's delete is a hard one, versions included
        out.append(f"mlflow: deleted registered model {name} ({len(versions)} versions)")
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" not in str(exc.error_code):
            raise
    exp = c.get_experiment_by_name(tracking.experiment_name(name))
    if exp is None:
        return out
    exp_id = exp.experiment_id
    runs = _all_runs(c, exp_id)
    models = _all_logged_models(c, exp_id)
    # 1. files first: each run's and logged model's artefacts, then the experiment's folder
    for run in runs:
        _delete_artifacts(run.info.artifact_uri)
    for model in models:
        _delete_artifacts(model.artifact_location)
    _delete_artifacts(exp.artifact_location)
    out.append(f"mlflow: deleted the artefacts of {len(runs)} runs and {len(models)} logged models")
    # 2. soft delete; the experiment is renamed first so that its name is free at once
    for model in models:
        c.delete_logged_model(model.model_id)
    for run in runs:
        if run.info.lifecycle_stage != "deleted":
            c.delete_run(run.info.run_id)
    if exp.lifecycle_stage != "deleted":
        c.rename_experiment(exp_id, f"{exp.name}.deleted-{int(time.time())}-{exp_id}")
        c.delete_experiment(exp_id)
    # 3. hard delete, scoped to these ids (what `mlflow gc` does, without touching other jobs)
    store = backend_store()
    if store is None:
        out.append(
            f"mlflow: {len(runs)} runs and experiment {exp.name} deleted (soft: the tracking server's operator "
            "purges them with `mlflow gc`, or set AIRTUNE_MLFLOW_BACKEND_STORE_URI to purge them here)"
        )
        return out
    for run in runs:
        store._hard_delete_run(run.info.run_id)
        out.append(f"mlflow: purged run {run.info.run_id}")
    if hasattr(store, "_hard_delete_logged_model"):
        for model in models:
            store._hard_delete_logged_model(model.model_id)
        if models:
            out.append(f"mlflow: purged {len(models)} logged models")
    _purge_links(store, [r.info.run_id for r in runs] + [m.model_id for m in models], exp_id)
    store._hard_delete_experiment(exp_id)
    out.append(f"mlflow: purged experiment {exp.name}")
    return out


def _purge_links(store, ids: list[str], experiment_id: str) -> None:
    """Rows MLflow's own hard delete leaves behind: run→logged model and dataset→run links (`inputs`,
    `input_tags`) and the experiment's datasets. Scoped to this job's ids."""
    from mlflow.store.tracking.dbmodels.models import SqlDataset, SqlInput, SqlInputTag
    from sqlalchemy import or_

    with store.ManagedSessionMaker() as session:
        for i in range(0, max(len(ids), 1), 500):
            chunk = ids[i : i + 500]
            links = session.query(SqlInput.input_uuid).filter(or_(SqlInput.source_id.in_(chunk), SqlInput.destination_id.in_(chunk)))
            uuids = [u for (u,) in links.all()]
            if uuids:
                session.query(SqlInputTag).filter(SqlInputTag.input_uuid.in_(uuids)).delete(synchronize_session=False)
                session.query(SqlInput).filter(SqlInput.input_uuid.in_(uuids)).delete(synchronize_session=False)
        session.query(SqlDataset).filter(SqlDataset.experiment_id == int(experiment_id)).delete(synchronize_session=False)
