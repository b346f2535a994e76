"""promote: approve on a real Airflow stack (api-server, scheduler, dag-processor on PostgreSQL;
tests/e2e/stack.py) and a real MLflow server: the run waits at its `approve` task in the
`awaiting_input` state, holding no worker or pool slot; the person's answer through the official
`apache-airflow-client` (TaskInstanceApi.update_hitl_detail) decides. Approved: the version becomes
`champion`; rejected, or no answer before promote_timeout_hours: it does not, and the run still
succeeds (a rejection is not a failed job). The decision, who made it and the numbers are tags on the
version."""

from __future__ import annotations

import time

import pytest

from .stack import DAG_ID, airflow_stack, tiny_job, unique  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow


def _job(name: str, **overrides) -> dict:
    # 16 rows, 4 held out: eval_loss and four generated answers per model
    return tiny_job(name, val_size=0.25, eval_max_samples=4, promote="approve", **overrides)


def _wait_awaiting(tis, run_id: str, stack, timeout: float = 300):
    """The approve task waiting for an answer, and the scheduler done with the workload that paused it.

    The second condition is Airflow 3.3's, not airtune's: an answer given before the scheduler has processed the
    executor's report of the paused workload re-queues the task first, and the late report ("finished with state
    success, but the task instance's state attribute is queued") then fails it. A person in the UI is never that
    quick; a script answering the moment the state turns awaiting_input can be (seen once in CI: 0.4 s)."""
    deadline = time.monotonic() + timeout
    while True:
        ti = tis.get_task_instance(DAG_ID, run_id, "approve")
        state = ti.state.value if ti.state is not None else None
        if state == "awaiting_input":
            break
        assert state not in ("failed", "upstream_failed", "skipped", "success"), f"approve ended {state} before an answer"
        assert time.monotonic() < deadline, f"approve still {state} after {timeout:.0f} s"
        time.sleep(2)
    reported = f"TaskInstance Finished: dag_id={DAG_ID}, task_id=approve, run_id={run_id},"
    log = stack.logs / "scheduler.log"
    while reported not in log.read_text(encoding="utf-8", errors="replace"):
        assert time.monotonic() < deadline, f"the scheduler never processed approve's paused workload ({log})"
        time.sleep(0.5)
    return ti


def _version(stack, name: str):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    c = MlflowClient(stack.mlflow_url, registry_uri=stack.mlflow_url)
    mv = c.get_model_version(name, "1")
    try:
        champion = c.get_model_version_by_alias(name, "champion").version
    except MlflowException:
        champion = None
    return mv.tags, champion


def test_approve_reject_and_timeout_decide_the_champion(airflow_stack):
    import airflow_client.client as af

    client = airflow_stack.api_client()
    dag_runs, tis, pools = af.DagRunApi(client), af.TaskInstanceApi(client), af.PoolApi(client)
    yes, no, late = unique("approve-yes"), unique("approve-no"), unique("approve-late")
    runs = {}

    def trigger(name: str, **extra) -> None:
        run = dag_runs.trigger_dag_run(DAG_ID, af.TriggerDAGRunPostBody(logical_date=None, conf=_job(name, **extra)))
        runs[name] = run.dag_run_id

    trigger(yes)
    # the approval waits for a person, holding nothing: no worker, no pool slot (its run is the only one)
    ti = _wait_awaiting(tis, runs[yes], airflow_stack)
    trigger(no)
    trigger(late, promote_timeout_hours=0.005)  # 18 s
    assert ti.pool == "default_pool"
    pool = pools.get_pool("default_pool")
    assert (pool.running_slots, pool.queued_slots, pool.deferred_slots) == (0, 0, 0), pool
    detail = tis.get_hitl_detail(DAG_ID, runs[yes], "approve", -1)
    assert detail.options == ["Approve", "Reject"] and detail.defaults == ["Reject"]
    assert "| metric |" in detail.body and "eval_loss" in detail.body, detail.body  # the comparison table
    assert yes in detail.subject

    answer = af.UpdateHITLDetailPayload(chosen_options=["Approve"], params_input={})
    tis.update_hitl_detail(DAG_ID, runs[yes], "approve", -1, answer)
    _wait_awaiting(tis, runs[no], airflow_stack)
    tis.update_hitl_detail(DAG_ID, runs[no], "approve", -1, af.UpdateHITLDetailPayload(chosen_options=["Reject"], params_input={}))

    for name, run_id in runs.items():
        run = airflow_stack.wait_run(run_id, timeout=600)
        states = airflow_stack.task_states(run_id)
        assert run["state"] == "success", (name, states)
        assert states["approve"] == "success" and states["promote"] == "success", states
        assert states["evaluate_local"] == "success" and states["evaluate_kubernetes"] == "skipped", states

    tags, champion = _version(airflow_stack, yes)
    assert champion == "1"
    assert tags["airtune.promotion.outcome"] == "promoted" and tags["airtune.promotion.by"] == "admin", tags
    assert float(tags["eval.tuned.eval_loss"]) > 0 and "eval.base.eval_loss" in tags  # the numbers it was shown

    tags, champion = _version(airflow_stack, no)
    assert champion is None
    assert tags["airtune.promotion.outcome"] == "kept" and tags["airtune.promotion.by"] == "admin", tags

    tags, champion = _version(airflow_stack, late)
    assert champion is None
    assert tags["airtune.promotion.outcome"] == "kept" and tags["airtune.promotion.by"] == "timeout", tags
    assert "promotion of" in airflow_stack.task_log(runs[late], "promote")
