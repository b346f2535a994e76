"""Load: 10 jobs triggered at once on the PostgreSQL-backed stack (tests/e2e/stack.py: LocalExecutor
with parallelism 4, the airtune_local pool at 2 slots) all finish, each with its own outputs and
MLflow run, and never more than 2 train tasks run at once: the pool, not the executor, holds the
line (other tasks do run beside the two)."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from .stack import DAG_ID, LOCAL_POOL_SLOTS, airflow_stack, tiny_job, unique  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow

JOBS = 10


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant (an end at the same instant as a start does not overlap)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    now = best = 0
    for _, delta in events:
        now += delta
        best = max(best, now)
    return best


def test_max_overlap():
    t = [datetime(2026, 1, 1, 0, 0, s) for s in range(10)]
    assert max_overlap([(t[0], t[2]), (t[1], t[3]), (t[2], t[4])]) == 2
    assert max_overlap([(t[0], t[5]), (t[1], t[3]), (t[2], t[4])]) == 3


def test_ten_jobs_at_once_queue_on_the_pool(airflow_stack):
    import airflow_client.client as af
    from mlflow.tracking import MlflowClient

    dag_runs = af.DagRunApi(airflow_stack.api_client())
    tis_api = af.TaskInstanceApi(airflow_stack.api_client())
    pool = af.PoolApi(airflow_stack.api_client()).get_pool("airtune_local")
    assert pool.slots == LOCAL_POOL_SLOTS and pool.include_deferred

    names = [unique(f"load-{i}") for i in range(JOBS)]
    started = time.monotonic()
    runs = {n: dag_runs.trigger_dag_run(DAG_ID, af.TriggerDAGRunPostBody(
        logical_date=None, conf=tiny_job(n, max_samples=8))).dag_run_id for n in names}
    final = {n: airflow_stack.wait_run(r, timeout=600) for n, r in runs.items()}
    elapsed = time.monotonic() - started
    assert {n: r["state"] for n, r in final.items()} == dict.fromkeys(names, "success")

    train, every = [], []
    for n, run_id in runs.items():
        for ti in tis_api.get_task_instances(DAG_ID, run_id).task_instances:
            if ti.start_date is None or ti.end_date is None or ti.state.value == "skipped":
                continue
            every.append((ti.start_date, ti.end_date))
            if ti.task_id == "train_local":
                assert ti.pool == "airtune_local" and ti.state.value == "success"
                train.append((ti.start_date, ti.end_date))
    assert len(train) == JOBS
    print(f"\n{JOBS} jobs in {elapsed:.0f} s; train tasks at once: at most {max_overlap(train)}; any tasks at once: at most {max_overlap(every)}")
    assert max_overlap(train) == LOCAL_POOL_SLOTS  # never more than the pool, and the pool was used
    assert max_overlap(every) > LOCAL_POOL_SLOTS  # the executor could run more: the pool held the line

    # each job: its own folder with its own final weights, and its own MLflow run, registered
    c = MlflowClient(airflow_stack.mlflow_url)
    mlflow_runs = set()
    for n, run_id in runs.items():
        folders = list((airflow_stack.home / "workspace" / "jobs" / n).iterdir())
        job_dirs = [f for f in folders if f.is_dir()]
        assert len(job_dirs) == 1, folders
        assert (job_dirs[0] / "output" / "final" / "adapter_model.safetensors").is_file()
        assert (job_dirs[0] / "result.json").is_file()
        exp = c.get_experiment_by_name(f"airtune/{n}")
        found = c.search_runs([exp.experiment_id])
        assert len(found) == 1 and found[0].info.status == "FINISHED"
        assert found[0].data.tags.get("airflow.run_id") == run_id
        mlflow_runs.add(found[0].info.run_id)
        assert c.get_model_version_by_alias(n, "best").run_id == found[0].info.run_id
    assert len(mlflow_runs) == JOBS
