"""Against a real `mlflow server` in production's shape: PostgreSQL backend, artefacts proxied to an
object store (a local folder stands in for the bucket). A train task killed after a checkpoint and
retried ends with exactly one MLflow run; `airtune delete` removes every trace of that job (rows,
artefacts, registered model, files, Airflow runs and logs) and leaves another job intact."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from airtune import tracking

from .conftest import PG, add_dag_run, airflow_state, airtune
from .helpers import make_job, make_resolved, records, start_training, wait_for

pytestmark = pytest.mark.slow


def rows_mentioning(database_uri: str, needles: list[str]) -> dict[str, int]:
    """{table: rows} of every table in the MLflow database whose row text contains one of `needles`."""
    import psycopg2

    dbname = database_uri.rsplit("/", 1)[1]
    found: dict[str, int] = {}
    with psycopg2.connect(dbname=dbname, **PG) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        for (table,) in cur.fetchall():
            cur.execute(f'SELECT t::text FROM "{table}" t')
            n = sum(1 for (text,) in cur.fetchall() if any(x in text for x in needles))
            if n:
                found[table] = n
    return found


def test_retried_train_task_has_one_run_and_delete_leaves_other_jobs_intact(pg_server, pg_database, airflow_home, prepared, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg_server.url)
    env = {"MLFLOW_TRACKING_URI": pg_server.url, "AIRTUNE_MLFLOW_BACKEND_STORE_URI": pg_database}
    workspace = airflow_home / "workspace"
    c = tracking.client()

    # --- job A: validate retried (its first attempt "died" after creating the run), train killed after a checkpoint, retried
    resolved = make_resolved(tiny_model_dir, "retry-a", num_train_epochs=3.0)  # 24 steps, checkpoints every 5
    run_id = tracking.ensure_run(resolved, "airtune_finetune", "manual__a")
    assert tracking.ensure_run(resolved, "airtune_finetune", "manual__a") == run_id
    job = make_job(workspace, resolved, "manual__a", run_id)
    first = start_training(job, prepared, pg_server.url, run_id, pace=0.3)
    try:
        wait_for(lambda: (job / "output" / "checkpoint-10" / "trainer_state.json").exists(), 120, "checkpoint-10")
        wait_for(lambda: max([r["step"] for r in records(job)] or [0]) >= 12, 60, "a step after the checkpoint")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # a worker lost: no clean-up, no atexit
        first.wait()
    assert tracking.ensure_run(resolved, "airtune_finetune", "manual__a") == run_id  # the retry finds its run
    retry = start_training(job, prepared, pg_server.url, run_id)
    assert retry.wait(timeout=240) == 0, (job / "train.log").read_text()[-3000:]
    assert "resuming from" in (job / "train.log").read_text()
    out_a = tracking.finish_run(job, json.loads((job / "spec.json").read_text()), run_id)
    assert out_a["model_version"] == "1"

    exp_a = c.get_experiment_by_name("airtune/retry-a")
    from mlflow.entities import ViewType

    runs = c.search_runs([exp_a.experiment_id], run_view_type=ViewType.ALL)
    assert [r.info.run_id for r in runs] == [run_id]  # exactly one MLflow run, FINISHED
    assert runs[0].info.status == "FINISHED"
    assert {m.step for m in c.get_metric_history(run_id, "loss")} == set(range(1, 25))
    models_a = c.search_logged_models([exp_a.experiment_id])
    names = sorted(m.name for m in models_a)
    assert names == sorted({m.name for m in models_a}) and "checkpoint-10" in names and "final" in names  # none twice
    assert out_a["model_uri"] == "models:/retry-a@best"

    # --- job B: another job, registered too (its files copied from A: no second training needed)
    resolved_b = make_resolved(tiny_model_dir, "keep-b")
    run_b = tracking.ensure_run(resolved_b, "airtune_finetune", "manual__b")
    job_b = make_job(workspace, resolved_b, "manual__b", run_b)
    for name in ("output", "metrics.jsonl", "result.json"):
        (shutil.copytree if (job / name).is_dir() else shutil.copyfile)(job / name, job_b / name)
    out_b = tracking.finish_run(job_b, json.loads((job_b / "spec.json").read_text()), run_b)
    add_dag_run(airflow_home, "retry-a", "manual__a", "success", [("validate", "success"), ("train_local", "success")])
    add_dag_run(airflow_home, "keep-b", "manual__b", "success", [("validate", "success"), ("train_local", "success")])
    # a later run refused by validate (e.g. "name in use"): no run of keep-b, so not its newest state either
    add_dag_run(airflow_home, "keep-b", "manual__refused", "failed", [("validate", "failed")])
    listed = json.loads(airtune(airflow_home, "list", "--json", **env).stdout.strip().splitlines()[-1])
    b_row = next(j for j in listed if j["name"] == "keep-b")
    assert b_row["state"] == "success", b_row
    b_status = json.loads(airtune(airflow_home, "status", "keep-b", "--json", **env).stdout.strip().splitlines()[-1])
    assert [r["dag_run_id"] for r in b_status["runs"] if r.get("dag_run_id")] == ["manual__b"], b_status["runs"]
    logs_a = airflow_home / "airflow" / "logs" / "dag_id=airtune_finetune" / "run_id=manual__a"
    logs_a.mkdir(parents=True)
    (logs_a / "attempt=1.log").write_text("task log")

    a_ids = [run_id, exp_a.name] + [m.model_id for m in models_a]
    assert rows_mentioning(pg_database, a_ids)  # the check below would see rows if there were any
    objectstore = pg_server.root / "objectstore"
    assert (objectstore / exp_a.experiment_id).is_dir()

    # --- delete A
    refused = airtune(airflow_home, "delete", "retry-a", **env)  # no terminal to confirm on, no --yes
    assert refused.returncode == 2 and "refusing without --yes" in refused.stderr
    deleted = airtune(airflow_home, "delete", "retry-a", "--yes", **env)
    assert deleted.returncode == 0, deleted.stderr[-3000:]
    assert f"mlflow: purged run {run_id}" in deleted.stdout and "mlflow: purged experiment airtune/retry-a" in deleted.stdout

    # every trace of A is gone: database rows, artefacts, registered model, files, Airflow runs and logs
    assert rows_mentioning(pg_database, a_ids) == {}
    assert not (objectstore / exp_a.experiment_id).exists()
    assert c.search_model_versions("name = 'retry-a'") == []
    assert not (workspace / "jobs" / "retry-a").exists()
    state = airflow_state(airflow_home)
    assert sorted(r["run_id"] for r in state["runs"]) == ["manual__b", "manual__refused"]  # a refused run is no run of A's
    assert sorted({t["run_id"] for t in state["tis"]}) == ["manual__b", "manual__refused"]
    assert not logs_a.exists()

    # B is intact: its run, metrics, logged models, version and files
    exp_b = c.get_experiment_by_name("airtune/keep-b")
    assert [r.info.run_id for r in c.search_runs([exp_b.experiment_id])] == [run_b]
    assert len(c.get_metric_history(run_b, "loss")) == 24
    kept = json.loads((job_b / "result.json").read_text())["checkpoints"]
    assert len(c.search_logged_models([exp_b.experiment_id])) == len(kept) + 1  # those on disk and final/
    assert str(c.get_model_version_by_alias("keep-b", "best").version) == out_b["model_version"]
    import mlflow

    mlflow.set_tracking_uri(pg_server.url)
    files = os.listdir(mlflow.artifacts.download_artifacts("models:/keep-b@best", dst_path=str(airflow_home / "dl")))
    assert "adapter_model.safetensors" in files and "README.md" in files
    assert (workspace / "jobs" / "keep-b" / "manual__b" / "output" / "final").is_dir()
    assert (objectstore / exp_b.experiment_id).is_dir()

    # the name is free again: a new job of the same name starts from nothing
    assert airtune(airflow_home, "status", "retry-a", **env).returncode == 1
    fresh = tracking.ensure_run(resolved, "airtune_finetune", "manual__a2")
    assert fresh != run_id and len(c.search_runs([c.get_experiment_by_name("airtune/retry-a").experiment_id])) == 1
