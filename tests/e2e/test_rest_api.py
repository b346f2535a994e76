"""Airflow's REST API as a client uses it, with the official `apache-airflow-client`, against a real
api-server + scheduler + dag-processor on PostgreSQL (tests/e2e/stack.py): get a token, trigger
airtune_finetune with a conf, follow the run, read its task logs, cancel a run. A conf that breaks a
single-field rule is refused at trigger time (HTTP 400 naming the param); one that breaks a rule
between fields fails its validate task within seconds, and the task log says why. docs/rest-api.md
shows the same calls."""

from __future__ import annotations

import json
import os
import time

import pytest

from .stack import DAG_ID, airflow_stack, tiny_job, unique  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow

TRAIN_TASKS = ("train_kubernetes_pod", "train_kubernetes_job.start", "train_kubernetes_job.train")


def _apis(stack):
    import airflow_client.client as af

    client = stack.api_client()
    return af, af.DagRunApi(client), af.TaskInstanceApi(client)


def _follow(dag_runs, run_id: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        run = dag_runs.get_dag_run(DAG_ID, run_id)
        if run.state.value in ("success", "failed"):
            return run
        assert time.monotonic() < deadline, f"{run_id} still {run.state.value} after {timeout:.0f} s"
        time.sleep(2)


def _log(tis, run_id: str, task_id: str, try_number: int = 1) -> str:
    """A task's log through the client (GET .../logs/{try_number}), one line per record, with the
    exception of a failed task (its `error_detail`, which the client's model leaves out: so the raw
    JSON, as docs/rest-api.md shows)."""
    resp = tis.get_log_without_preload_content(DAG_ID, run_id, task_id, try_number, full_content=True)
    assert resp.status == 200, resp.data
    lines = []
    for record in json.loads(resp.data)["content"]:
        lines.append(record.get("event", "") if isinstance(record, dict) else str(record))
        for exc in (record.get("error_detail") or []) if isinstance(record, dict) else []:
            lines.append(f"{exc.get('exc_type')}: {exc.get('exc_value')}")
    return "\n".join(lines)


def test_trigger_follow_read_logs_and_refuse_bad_conf(airflow_stack):
    af, dag_runs, tis = _apis(airflow_stack)
    ok, bad = unique("rest-ok"), unique("rest-cross")

    # a good job and one that breaks a rule between fields (LoRA rank with full fine-tuning), at once
    good = dag_runs.trigger_dag_run(DAG_ID, af.TriggerDAGRunPostBody(logical_date=None, conf=tiny_job(ok)))
    cross = dag_runs.trigger_dag_run(DAG_ID, af.TriggerDAGRunPostBody(
        logical_date=None, conf=tiny_job(bad, finetuning_method="full", lora_rank=16)))
    assert good.state.value == "queued" and good.conf["name"] == ok

    # single-field rules: refused at trigger time, HTTP 400 naming the param; no run is created
    for conf, param, why in (
        (tiny_job("rest-bad-lr", learning_rate=5), "learning_rate", "greater than the maximum of 1"),
        (tiny_job("Bad_Name"), "name", "does not match"),
        ({k: v for k, v in tiny_job("rest-no-model").items() if k != "base_model"}, "base_model", ""),
    ):
        with pytest.raises(af.ApiException) as refused:
            dag_runs.trigger_dag_run(DAG_ID, af.TriggerDAGRunPostBody(logical_date=None, conf=conf))
        assert refused.value.status == 400, refused.value.body
        detail = json.loads(refused.value.body)["detail"]
        assert f"param {param}" in detail and why in detail, detail
    names = {(r.conf or {}).get("name") for r in dag_runs.get_dag_runs(DAG_ID, limit=100).dag_runs}
    assert not names & {"rest-bad-lr", "Bad_Name", "rest-no-model"}

    # the cross-field error: validate fails within seconds, nothing trains, the log says why
    failed = _follow(dag_runs, cross.dag_run_id, timeout=180)
    assert failed.state.value == "failed"
    states = {t.task_id: t for t in tis.get_task_instances(DAG_ID, cross.dag_run_id).task_instances}
    assert states["validate"].state.value == "failed"
    assert states["validate"].try_number == 1  # no retry for an invalid job
    assert (states["validate"].end_date - states["validate"].start_date).total_seconds() < 60
    for task_id in ("prepare_dataset", "train_local", *TRAIN_TASKS):
        assert states[task_id].state is None or states[task_id].state.value in ("upstream_failed", "skipped", "removed"), task_id
        assert states[task_id].start_date is None or states[task_id].try_number == 0, task_id
    log = _log(tis, cross.dag_run_id, "validate")
    assert "the job is not valid" in log and "lora_rank" in log, log[-3000:]

    # the good job: followed to success, every task's log readable, the training's in train_local's
    done = _follow(dag_runs, good.dag_run_id)
    states = {t.task_id: t.state.value if t.state else None for t in tis.get_task_instances(DAG_ID, good.dag_run_id).task_instances}
    assert done.state.value == "success", states
    assert {k: states[k] for k in ("validate", "prepare_dataset", "choose_launcher", "train_local", "register", "cleanup")} == dict.fromkeys(
        ("validate", "prepare_dataset", "choose_launcher", "train_local", "register", "cleanup"), "success")
    assert all(states[t] == "skipped" for t in TRAIN_TASKS)
    train_log = _log(tis, good.dag_run_id, "train_local")
    assert "[airtune] step 2/2" in train_log and "[airtune] done: 2 steps" in train_log, train_log[-3000:]
    assert "registered" in _log(tis, good.dag_run_id, "register").lower()

    # the jobs page's JSON knows it: its MLflow run and registered version
    status, job = airflow_stack.request("GET", f"/airtune/api/jobs/{ok}")
    assert status == 200, job
    assert job["run"]["dag_run_id"] == good.dag_run_id and job["run"]["mlflow_run_id"]
    assert job["run"]["model_version"] == "1" and job["registered_model"]["best_version"] == "1"
    assert job["spec_is_resolved"] and job["spec"]["template"] == "chatml"  # auto, resolved by validate


@pytest.mark.parametrize("how", ["task", "run"])
def test_cancel_a_running_job(airflow_stack, how):
    """Cancel a running job, either way a user does it: mark the running task failed (PATCH
    .../taskInstances/{task_id}, new_state failed) or the whole run (PATCH .../dagRuns/{run_id},
    state failed). Airflow stops the task, its training process group goes with it, register never
    runs, cleanup (a teardown) still runs, and the run ends failed: cleanup fails the run when register
    has no result (a run-level mark alone would leave Airflow to judge the run by the skipped register,
    which ends "success")."""
    af, dag_runs, tis = _apis(airflow_stack)
    name = unique("rest-cancel")
    run = dag_runs.trigger_dag_run(DAG_ID, af.TriggerDAGRunPostBody(
        logical_date=None, conf=tiny_job(name, max_samples=400, num_train_epochs=50.0, save_steps=1000)))
    job_dir = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # wait for the trainer to be stepping
        folders = list((airflow_stack.home / "workspace" / "jobs" / name).glob("*/metrics.jsonl"))
        if folders and folders[0].stat().st_size > 0:
            job_dir = folders[0].parent
            break
        time.sleep(1)
    assert job_dir is not None, airflow_stack.task_states(run.dag_run_id)
    from airtune.launch import local

    pid = int((job_dir / local.PID_FILE).read_text().strip())
    os.killpg(pid, 0)  # training is running now

    running = [t.task_id for t in tis.get_task_instances(DAG_ID, run.dag_run_id, state=["running"]).task_instances]
    assert running == ["train_local"]
    if how == "task":
        tis.patch_task_instance(DAG_ID, run.dag_run_id, "train_local", af.PatchTaskInstanceBody(new_state="failed"))
    else:
        dag_runs.patch_dag_run(DAG_ID, run.dag_run_id, af.DAGRunPatchBody(state="failed"))
    done = _follow(dag_runs, run.dag_run_id, timeout=120)
    states = {t.task_id: t.state.value if t.state else None for t in tis.get_task_instances(DAG_ID, run.dag_run_id).task_instances}
    assert done.state.value == "failed", states
    assert states["train_local"] == "failed" and states["register"] in ("upstream_failed", "skipped"), states
    # cleanup did its work and then failed the run on purpose (its log says so)
    assert states["cleanup"] == "failed", states
    assert "the job did not finish" in _log(tis, run.dag_run_id, "cleanup")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the trainer's process group is gone
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"training process group {pid} still alive after the run was cancelled")
    assert not (job_dir / "result.json").exists()  # it never finished
