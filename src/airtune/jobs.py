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

import json
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
        # the tombstones first: an `airtune run` of this job stops its DAG run before it can write anything back
        tombstones = [mark_deleted(name, dr.dag_id, dr.run_id) for dr in active]
        for dr in active:
            report += cancel_dag_run(dr, session)
        session.commit()
        run_ids = [(dr.dag_id, dr.run_id) for dr in runs]
        locations = {(dr.conf or {}).get("location") or "local" for dr in runs}

    report += _stop_processes(name, locations)
    report += delete_mlflow(name)
    for folder in folders:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a run being stopped may still write into it
            report.append(f"files: deleted {folder}")

    with airflow_session() as session:
        for dr in dag_runs(name, session):
            session.delete(dr)  # its task instances and XComs go with it
            report.append(f"airflow: deleted DAG run {dr.dag_id} / {dr.run_id}")
        session.commit()
    report += _delete_task_logs(run_ids)
    for tombstone in tombstones:
        _write_json(tombstone, {**json.loads(tombstone.read_text()), "done": True})
    _prune_tombstones()
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


# --- a delete racing a running run ---------------------------------------------------------------
#
# A forced delete writes a tombstone for each active DAG run of the job before it cancels anything:
# `<workspace>/.deleted/<hash of the name>.<hash of the DAG run>.json` (no job name in a path, no
# folder under jobs/). `airtune run` watches for its own run's tombstone: it stops its `dag.test()`
# process at once (that process would otherwise write its DAG run back when its loop ends, and the
# tasks after the cancelled one could write files and MLflow records again), waits for the delete to
# finish, removes whatever its run wrote back in the meantime (sweep_deleted_run), removes the
# tombstone and exits non-zero. The tasks check it too (pipeline.stop_if_deleted). A tombstone
# nobody removes (a run under a scheduler) is pruned by a later delete after TOMBSTONE_TTL.

TOMBSTONES = ".deleted"
TOMBSTONE_TTL = 24 * 3600
TOMBSTONE_WAIT = 60.0  # how long a deleted run waits for its delete to finish before sweeping


class JobDeleted(RuntimeError):
    """The job was deleted (airtune delete --force) while this run of it was under way."""


def _tombstone_dir() -> Path:
    return paths.workspace() / TOMBSTONES


def _name_key(name: str) -> str:
    from airtune.names import short_hash

    return short_hash("job", name, length=16)


def tombstone_path(name: str, dag_id: str, run_id: str) -> Path:
    from airtune.names import short_hash

    return _tombstone_dir() / f"{_name_key(name)}.{short_hash(dag_id, run_id, length=16)}.json"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def mark_deleted(name: str, dag_id: str, run_id: str) -> Path:
    """The tombstone of one DAG run of a job being deleted (`done` once the delete has finished)."""
    path = tombstone_path(name, dag_id, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, {"name": name, "dag_id": dag_id, "run_id": run_id, "deleted_at": time.time(), "done": False})
    return path


def _read_tombstone(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def deleted_run(name: str, dag_id: str, run_id: str | None, *, since: float = 0.0) -> dict | None:
    """The tombstone of this run of job `name`, or None. With `run_id` None (a run that has not said
    its id yet), any tombstone of the name written since `since`."""
    if run_id is not None:
        path = tombstone_path(name, dag_id, run_id)
        data = _read_tombstone(path) if path.exists() else None
        return {**data, "path": str(path)} if data else None
    folder = _tombstone_dir()
    if not folder.is_dir():
        return None
    for path in folder.glob(f"{_name_key(name)}.*.json"):
        data = _read_tombstone(path)
        if data and data.get("name") == name and float(data.get("deleted_at") or 0) >= since:
            return {**data, "path": str(path)}
    return None


def wait_for_delete(tombstone: dict, timeout: float = TOMBSTONE_WAIT) -> bool:
    """Until the delete that wrote `tombstone` has finished (True), or `timeout` seconds (False)."""
    deadline = time.monotonic() + timeout
    while True:
        data = _read_tombstone(Path(tombstone["path"]))
        if data is None or data.get("done"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def forget_tombstone(tombstone: dict) -> None:
    path = Path(tombstone["path"])
    path.unlink(missing_ok=True)
    _remove_if_empty(path.parent)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (another deleted run's tombstone), or gone
        pass


def _prune_tombstones() -> None:
    folder = _tombstone_dir()
    if not folder.is_dir():
        return
    now = time.time()
    for path in folder.glob("*.json"):
        data = _read_tombstone(path)
        if data is None or now - float(data.get("deleted_at") or 0) > TOMBSTONE_TTL:
            path.unlink(missing_ok=True)
    _remove_if_empty(folder)


def sweep_deleted_run(name: str, dag_id: str, run_id: str | None) -> list[str]:
    """After a deleted run's process is gone: remove what it wrote back after (or while) the delete
    removed it, and only that: its DAG run and task logs, its run folder (and the job's folder when
    nothing else is in it), the job's MLflow experiment and registered model when they hold nothing
    but this DAG run. One line for each thing removed."""
    from airtune import pipeline

    out: list[str] = []
    if run_id is not None:
        from airflow.models.dagrun import DagRun

        with airflow_session() as session:
            for dr in session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == run_id).all():
                session.delete(dr)
                out.append(f"airflow: deleted DAG run {dag_id} / {run_id} (written back by the stopped run)")
            session.commit()
        out += _delete_task_logs([(dag_id, run_id)])
        run_folder = paths.job_dir(name, run_id)
        if run_folder.exists():
            shutil.rmtree(run_folder, ignore_errors=True)
            out.append(f"files: deleted {run_folder}")
    root = _own_folder(paths.workspace() / "jobs", name)
    if root.is_dir():
        owner = _read_tombstone(root / pipeline.OWNER_FILE) or {}
        rest = [p for p in root.iterdir() if not p.name.startswith(pipeline.OWNER_FILE)]
        if not rest and owner.get("owner") in (None, f"{dag_id}/{run_id}", dag_id):
            shutil.rmtree(root, ignore_errors=True)
            out.append(f"files: deleted {root}")
    out += _sweep_mlflow(name, dag_id, run_id)
    return out


def _sweep_mlflow(name: str, dag_id: str, run_id: str | None) -> list[str]:
    from mlflow.exceptions import MlflowException

    from airtune import tracking

    c = tracking.client()

    def ours(tags: dict) -> bool:
        return tags.get(tracking.TAG_DAG_ID) == dag_id and (run_id is None or tags.get(tracking.TAG_RUN_ID) == run_id)

    exp = c.get_experiment_by_name(tracking.experiment_name(name))
    runs = _all_runs(c, exp.experiment_id) if exp is not None else []
    if exp is not None and not all(ours(r.data.tags) for r in runs):
        return []  # another run of the name (a new job since the delete): not this run's to remove
    try:
        versions = c.search_model_versions(f"name = '{name}'")
    except MlflowException:
        versions = []
    mine = {r.info.run_id for r in runs}
    for v in versions:
        try:
            if v.run_id not in mine and not ours(c.get_run(v.run_id).data.tags):
                return []
        except MlflowException:  # its run is gone: the version was left by this run's register
            pass
    if exp is None and not versions:
        return []
    return [line + " (written back by the stopped run)" for line in delete_mlflow(name)]


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
    from airtune import compat

    return compat.mlflow_backend_store(uri)


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
    from airtune import compat

    for run in runs:
        compat.mlflow_hard_delete(store, run_id=run.info.run_id)
        out.append(f"mlflow: purged run {run.info.run_id}")
    purged = [m for m in models if compat.mlflow_hard_delete(store, logged_model_id=m.model_id)]
    if purged:
        out.append(f"mlflow: purged {len(purged)} logged models")
    _purge_links(store, [r.info.run_id for r in runs] + [m.model_id for m in models], exp_id)
    compat.mlflow_hard_delete(store, experiment_id=exp_id)
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
