"""The tombstone a forced delete leaves for a run under way (jobs.mark_deleted): found by the run it
names, by its job's name for a run that has not said its id yet, removed without a trace."""

from __future__ import annotations

import json
import time

import pytest


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws"


def test_a_tombstone_names_its_run_and_no_other(workspace):
    from airtune import jobs

    started = time.time()
    path = jobs.mark_deleted("raced", "airtune_finetune", "manual__1")
    assert path.parent == workspace / jobs.TOMBSTONES and "raced" not in path.name
    found = jobs.deleted_run("raced", "airtune_finetune", "manual__1")
    assert found["run_id"] == "manual__1" and found["done"] is False
    assert jobs.deleted_run("raced", "airtune_finetune", "manual__2") is None
    assert jobs.deleted_run("other", "airtune_finetune", "manual__1") is None
    # a run that has not said its id: any tombstone of its name since it started
    assert jobs.deleted_run("raced", "airtune_finetune", None, since=started)["run_id"] == "manual__1"
    assert jobs.deleted_run("raced", "airtune_finetune", None, since=time.time() + 1) is None
    assert jobs.deleted_run("other", "airtune_finetune", None) is None


def test_waiting_for_the_delete_and_forgetting_leave_nothing(workspace):
    from airtune import jobs

    path = jobs.mark_deleted("raced", "airtune_finetune", "manual__1")
    found = jobs.deleted_run("raced", "airtune_finetune", "manual__1")
    assert jobs.wait_for_delete(found, timeout=0.2) is False  # the delete has not finished
    jobs._write_json(path, {**json.loads(path.read_text()), "done": True})
    assert jobs.wait_for_delete(found, timeout=0.2) is True
    jobs.forget_tombstone(found)
    assert not (workspace / jobs.TOMBSTONES).exists()


def test_old_tombstones_are_pruned(workspace):
    from airtune import jobs

    old = jobs.mark_deleted("gone", "airtune_finetune", "manual__0")
    jobs._write_json(old, {**json.loads(old.read_text()), "deleted_at": time.time() - jobs.TOMBSTONE_TTL - 1})
    fresh = jobs.mark_deleted("raced", "airtune_finetune", "manual__1")
    jobs._prune_tombstones()
    assert not old.exists() and fresh.exists()


def test_a_task_of_a_deleted_run_fails_at_once(workspace):
    from airflow.sdk.exceptions import AirflowFailException

    from airtune import jobs, pipeline

    pipeline.stop_if_deleted("raced", "airtune_finetune", "manual__1")  # not deleted: nothing happens
    jobs.mark_deleted("raced", "airtune_finetune", "manual__1")
    with pytest.raises(AirflowFailException, match=r"(?s)was deleted .*\(not retried"):
        pipeline.stop_if_deleted("raced", "airtune_finetune", "manual__1")


def test_airtune_run_learns_its_dag_run_id_from_the_log():
    import io

    from airtune.runner import Progress

    p = Progress(io.StringIO(), tty=False)
    p.feed("2026-12-03T13:31:30.882283Z [info     ] [DAG TEST] running task <TaskInstance: airtune_finetune.validate "
           "manual__2026-12-03T13:31:15.535996+00:00 [TaskInstanceState.SCHEDULED] ti_id=01a2> [airflow.sdk.definitions.dag]")
    assert p.run_id == "manual__2026-12-03T13:31:15.535996+00:00"
