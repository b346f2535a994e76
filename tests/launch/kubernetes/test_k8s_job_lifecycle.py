"""The several-machine train branch against the API emulator (not a cluster): the headless Service
(setup), the indexed Job (TrainJobOperator, the provider's KubernetesJobOperator underneath), and the
teardown that deletes Job and Service however the training ended.

The pods run the fake trainer, whose ranks meet over TCP at `<job>-0.<service>`: the emulator
resolves that name only for a pod the Service selects (k8s_emulator.py: no real DNS).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import DAG_ID, NS, RUN_ID


def _op(job):
    """The DAG's task: TrainJobOperator, built when the task runs (launch/kubernetes/deferred.py)."""
    from airtune.launch.kubernetes.deferred import TRAIN_JOB, KubernetesTask
    from airtune.launch.kubernetes.operators import TASK_JOB

    return lambda: KubernetesTask(task_id=TASK_JOB, operator=TRAIN_JOB, airtune_job=job)


def _setup(job):
    from airtune.launch import kubernetes

    return kubernetes.create_service(job, json.loads((Path(job["job_dir"]) / "spec.json").read_text()))


def _teardown(job):
    from airtune.launch import kubernetes

    return kubernetes.cleanup_run_objects(job)


def test_two_indexed_pods_meet_and_train_then_teardown_leaves_nothing(cluster, capsys):
    job = cluster.job("multi", nodes=2, fake={"steps": 3})
    service = _setup(job)
    cluster.run_task(_op(job))
    out = capsys.readouterr().out
    assert "rank 0 met ranks [1]" in out and "rank 1 reached 127.0.0.1" in out  # both pods' logs
    assert json.loads((Path(job["job_dir"]) / "result.json").read_text())["global_step"] == 3

    [created_job] = cluster.created("jobs")
    spec = created_job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == ("Indexed", 2, 2, 0)
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    assert spec["template"]["spec"]["subdomain"] == service
    pods = sorted(cluster.created("pods"), key=lambda p: p["metadata"]["name"])
    assert [p["spec"]["hostname"] for p in pods] == [f"{created_job['metadata']['name']}-{i}" for i in (0, 1)]
    cmd = pods[0]["spec"]["containers"][0]["command"]
    assert "--node_rank=$(JOB_COMPLETION_INDEX)" in cmd
    assert f"--master_addr={created_job['metadata']['name']}-0.{service}" in cmd

    # what the operator and the setup task submitted is what `airtune render` prints
    from airtune.launch.kubernetes import render

    rendered = render(json.loads((Path(job["job_dir"]) / "spec.json").read_text()), DAG_ID, RUN_ID)
    assert [o["kind"] for o in rendered] == ["Pod", "Service", "Job"]
    assert created_job["spec"] == rendered[2]["spec"]
    assert created_job["metadata"]["labels"] == rendered[2]["metadata"]["labels"]
    [created_service] = cluster.created("services")
    assert created_service["spec"] == rendered[1]["spec"] and created_service["metadata"]["name"] == rendered[1]["metadata"]["name"]

    assert cluster.emu.get("jobs", NS, created_job["metadata"]["name"]) is not None  # kept for the teardown
    done = _teardown(job)
    assert any(line.startswith("deleted job") for line in done) and any(line.startswith("deleted service") for line in done)
    cluster.wait_no_pods()
    assert cluster.emu.list("jobs", NS) == [] and cluster.emu.list("services", NS) == []


def test_one_failing_pod_fails_the_job_at_once_and_teardown_cleans_up(cluster, capsys):
    from airflow.sdk.exceptions import AirflowException

    job = cluster.job("multifail", nodes=2, fake={"fail_rank": 1, "steps": 200, "step_seconds": 0.2})
    _setup(job)
    with pytest.raises(AirflowException, match="PodFailurePolicy"):
        cluster.run_task(_op(job))
    assert "rank 1 fails" in capsys.readouterr().out  # the failed pod's log reaches the task log
    cluster.emu.wait(lambda: not [p for p in cluster.pods() if p["status"]["phase"] == "Running"], 20, "rank 0 to stop")
    _teardown(job)
    cluster.wait_no_pods()
    assert cluster.emu.list("jobs", NS) == [] and cluster.emu.list("services", NS) == []
    assert cluster.emu.running_processes() == []


def test_without_the_headless_service_the_rendezvous_fails(cluster, capsys):
    from airflow.sdk.exceptions import AirflowException

    job = cluster.job("nosvc", nodes=2, fake={"steps": 2})
    with pytest.raises(AirflowException, match="PodFailurePolicy"):
        cluster.run_task(_op(job))
    assert "rendezvous failed" in capsys.readouterr().out
    _teardown(job)
    cluster.wait_no_pods()


def test_marking_the_deferred_job_task_failed_deletes_the_job_and_pods(cluster):
    job = cluster.job("multikill", nodes=2, fake={"hang": True})
    _setup(job)

    async def mark_failed(trigger, task):
        while len([p for p in cluster.pods() if p["status"]["phase"] == "Running"]) < 2:
            await asyncio.sleep(0.05)
        task.cancel("__airflow_user_action__")
        await trigger.on_kill()

    assert cluster.run_task(_op(job), on_trigger_task=mark_failed) == "cancelled"
    cluster.wait_no_pods()
    assert cluster.emu.list("jobs", NS) == []
    _teardown(job)
    assert cluster.emu.list("services", NS) == []


def test_a_retry_replaces_an_earlier_try_still_running(cluster):
    """Try 1's worker died with its Job running: try 2 deletes it and starts its own Job, which
    resumes from the checkpoints in the job folder."""
    job = cluster.job("multiretry", nodes=2, fake={"steps": 30, "step_seconds": 0.1})
    _setup(job)
    cluster.run_task(_op(job), try_number=1, on_defer=lambda op, trigger: "stop")
    output = Path(job["job_dir"]) / "output"
    cluster.emu.wait(lambda: len(list(output.glob("checkpoint-*"))) >= 3, 30, "try 1 to write checkpoints")
    cluster.run_task(_op(job), try_number=2)
    names = [j["metadata"]["name"] for j in cluster.created("jobs")]
    assert len(names) == 2 and names[0].endswith("-t1") and names[1].endswith("-t2")
    assert ("jobs", NS, names[0]) in cluster.emu.deleted
    assert json.loads((Path(job["job_dir"]) / "result.json").read_text())["resumed_from"] >= 3
    _teardown(job)
    cluster.wait_no_pods()
