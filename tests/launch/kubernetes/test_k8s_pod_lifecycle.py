"""The one-machine train branch (TrainPodOperator, the provider's KubernetesPodOperator underneath)
run as Airflow runs it, against the API emulator (an emulator, not a cluster: k8s_emulator.py says
what it does not exercise). The pod runs the fake trainer (fake_trainer.py): seconds, not minutes.

Whatever happens to the task, the pod ends up deleted and its processes stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import DAG_ID, NS, RUN_ID


def _op(job, **kwargs):
    """The DAG's task: TrainPodOperator, built when the task runs (launch/kubernetes/deferred.py)."""
    from airtune.launch.kubernetes.deferred import TRAIN_POD, KubernetesTask
    from airtune.launch.kubernetes.operators import TASK_POD

    return lambda: KubernetesTask(task_id=TASK_POD, operator=TRAIN_POD, airtune_job=job, **kwargs)


def _running(cluster):
    return [p for p in cluster.pods() if p["status"]["phase"] == "Running"]


def test_pod_trains_logs_reach_the_task_and_the_pod_is_deleted(cluster, capsys):
    from airtune.launch.kubernetes import render

    job = cluster.job("demo", fake={"steps": 3})
    cluster.run_task(_op(job))
    assert json.loads((Path(job["job_dir"]) / "result.json").read_text())["global_step"] == 3
    out = capsys.readouterr().out
    assert "fake trainer: rank 0 of 1" in out and "step 3" in out and "done" in out  # the pod's log, in the task log
    assert "HF_TOKEN set=True" in out and "hf_secret_value" not in out
    cluster.wait_no_pods()
    [pod] = cluster.created("pods")
    assert ("pods", NS, pod["metadata"]["name"]) in cluster.emu.deleted
    assert pod["metadata"]["name"] == "demo-train-139212-t1"
    # What the operator submitted is what `airtune render` prints (one object per kind, same build).
    rendered = render(json.loads((Path(job["job_dir"]) / "spec.json").read_text()), DAG_ID, RUN_ID)
    submitted = {k: v for k, v in pod.items() if k != "status"}
    submitted["metadata"] = {k: v for k, v in pod["metadata"].items()
                             if k not in ("uid", "creationTimestamp", "generation", "resourceVersion", "namespace")}
    expected = rendered[1]
    expected["metadata"].pop("namespace")
    assert submitted["spec"] == expected["spec"]
    assert submitted["metadata"]["labels"] == expected["metadata"]["labels"]


def test_nonzero_exit_fails_the_task_and_the_pod_is_deleted(cluster, capsys):
    from airflow.sdk.exceptions import AirflowException

    job = cluster.job("boom", fake={"exit_code": 5})
    with pytest.raises(AirflowException, match="Trigger emitted an failed event|returned a failure|failed"):
        cluster.run_task(_op(job))
    assert "failing with exit code 5" in capsys.readouterr().out
    cluster.wait_no_pods()
    assert len(cluster.created("pods")) == 1


def test_marking_the_deferred_task_failed_deletes_the_pod(cluster):
    """The triggerer (Airflow 3.3+) cancels the trigger with its user-action message, then calls the
    trigger's on_kill: the provider's deletes the pod, and the emulator stops its processes."""
    job = cluster.job("killme", fake={"hang": True})

    async def mark_failed(trigger, task):
        while not _running(cluster):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        task.cancel("__airflow_user_action__")
        await trigger.on_kill()

    assert cluster.run_task(_op(job), on_trigger_task=mark_failed) == "cancelled"
    cluster.wait_no_pods()
    assert cluster.emu.running_processes() == []
    assert "Killing" in [reason for reason, _ in cluster.emu.events(NS, "killme-train-139212-t1")] or \
        ("pods", NS, "killme-train-139212-t1") in cluster.emu.deleted


def test_on_kill_on_the_worker_deletes_the_pod(cluster):
    """What Airflow's task runner calls on SIGTERM (the task marked failed while on a worker)."""
    job = cluster.job("killme2", fake={"hang": True})

    def kill(op, trigger):
        cluster.emu.wait(lambda: _running(cluster), 20, "the pod to run")
        op.on_kill()
        return "stop"

    assert cluster.run_task(_op(job), on_defer=kill) == "stopped"
    cluster.wait_no_pods()
    assert cluster.emu.running_processes() == []


def test_a_timeout_fails_the_task_and_deletes_the_pod(cluster):
    from airflow.sdk.exceptions import AirflowException

    job = cluster.job("slow", fake={"hang": True})
    with pytest.raises(AirflowException, match="execution_timeout|returned a failure"):
        cluster.run_task(_op(job, execution_timeout=timedelta(seconds=2)))
    cluster.wait_no_pods()
    assert cluster.emu.running_processes() == []


def test_a_retry_starts_a_new_pod_that_resumes_from_the_checkpoint(cluster, capsys):
    from airflow.sdk.exceptions import AirflowException

    job = cluster.job("retry", fake={"steps": 4, "crash_at_step": 2})
    with pytest.raises(AirflowException):
        cluster.run_task(_op(job), try_number=1)
    cluster.wait_no_pods()
    cluster.run_task(_op(job), try_number=2)
    names = [p["metadata"]["name"] for p in cluster.created("pods")]
    assert names == ["retry-train-139212-t1", "retry-train-139212-t2"]
    result = json.loads((Path(job["job_dir"]) / "result.json").read_text())
    assert result == {"global_step": 4, "resumed_from": 2}
    assert "resuming from" in capsys.readouterr().out
    cluster.wait_no_pods()


def test_a_retry_after_a_lost_worker_follows_the_running_pod(cluster):
    """The worker died while the pod trained: the next try reattaches to that pod (the provider's
    `durable`) instead of starting a second one on the same checkpoints."""
    job = cluster.job("lost", fake={"steps": 6, "step_seconds": 0.3})

    def lose_worker(op, trigger):
        cluster.emu.wait(lambda: _running(cluster), 20, "the pod to run")
        return "stop"  # the try ends without cleaning up: its worker is gone

    cluster.run_task(_op(job), try_number=1, on_defer=lose_worker)
    cluster.run_task(_op(job), try_number=2)
    assert [p["metadata"]["name"] for p in cluster.created("pods")] == ["lost-train-139212-t1"]
    assert json.loads((Path(job["job_dir"]) / "result.json").read_text())["resumed_from"] == 0
    cluster.wait_no_pods()


def test_a_pod_that_cannot_be_scheduled_fails_and_is_deleted(cluster, capsys):
    """A GPU pod on the emulator (no GPUs, no T4 node label) stays Pending: FailedScheduling is
    logged and the task fails after the schedule timeout; the pod does not stay behind."""
    from airflow.sdk.exceptions import AirflowException

    cluster.location["schedule_timeout_seconds"] = 2
    job = cluster.job("gpu", gpus=1, gpu_type="nvidia-t4")
    with pytest.raises(AirflowException):
        cluster.run_task(_op(job))
    [pod] = cluster.created("pods")
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-T4"}
    assert "didn't match Pod's node affinity/selector" in capsys.readouterr().out
    cluster.wait_no_pods()


def test_prepare_runs_as_a_cpu_pod_and_is_deleted(cluster):
    from airtune.launch.kubernetes import prepare_in_cluster

    job = cluster.job("prep")
    resolved = json.loads((Path(job["job_dir"]) / "spec.json").read_text())
    lines = []
    manifest = prepare_in_cluster(job, resolved, echo=lines.append)
    assert manifest["rows"]["train"] == 3
    [pod] = cluster.created("pods")
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "prepare"
    assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"]["limits"]
    assert pod["spec"]["containers"][0]["command"][:3] == ["python", "-m", "airtune.launch.kubernetes.in_pod"]
    cluster.wait_no_pods()


def test_a_failed_prepare_fails_and_its_pod_is_deleted(cluster):
    from airtune.launch.kubernetes.prepare import PrepareFailed, prepare_in_cluster

    cluster.location["image"] = "airtune-train:this-venv"  # the real in_pod module: the dataset file is missing
    resolved = cluster.resolved("prepbad")
    resolved["datasets"] = [{"name": "nowhere", "format": "alpaca", "kind": "sft", "files": ["/no/such/file.json"]}]
    job = cluster.job("prepbad", resolved=resolved)
    with pytest.raises(PrepareFailed, match="exit code 2"):
        prepare_in_cluster(job, resolved)
    cluster.wait_no_pods()


def test_stopping_the_prepare_task_deletes_its_pod(cluster):
    """Airflow sends SIGTERM to a task marked failed or timed out: the prepare pod goes with it."""
    from airtune.launch.kubernetes.prepare import TaskStopped, prepare_in_cluster

    job = cluster.job("prepstop", fake={"hang": True})
    resolved = json.loads((Path(job["job_dir"]) / "spec.json").read_text())

    def stop_when_running():
        cluster.emu.wait(lambda: _running(cluster), 30, "the prepare pod to run")
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_running, daemon=True).start()
    with pytest.raises(TaskStopped):
        prepare_in_cluster(job, resolved)
    cluster.wait_no_pods()
    assert cluster.emu.running_processes() == []
