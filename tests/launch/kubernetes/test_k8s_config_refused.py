"""A train container that exits 78 (EX_CONFIG: the trainer refused its configuration, which a retry
cannot change) fails the Kubernetes task at once, without its retries, as the local launcher does
(AirflowFailException, marked "not retried"); any other failure stays an ordinary, retried one.
Against the API emulator (k8s_emulator.py), with the fake trainer (fake_trainer.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import NS


def _pod_op(job):
    from airtune.launch.kubernetes.operators import TASK_POD, TrainPodOperator

    return lambda: TrainPodOperator(task_id=TASK_POD, airtune_job=job)


def _job_op(job):
    from airtune.launch.kubernetes.operators import TASK_JOB, TrainJobOperator

    return lambda: TrainJobOperator(task_id=TASK_JOB, airtune_job=job)


def test_a_pod_that_refuses_its_configuration_is_not_retried(cluster, capsys):
    from airflow.sdk.exceptions import AirflowFailException

    job = cluster.job("refused", fake={"exit_code": 78})
    with pytest.raises(AirflowFailException) as info:
        cluster.run_task(_pod_op(job))
    text = str(info.value)
    assert "train container of pod refused-train-139212-t1 refused its configuration (exit 78" in text
    assert "(not retried: this error does not go away by running the task again)" in text
    assert "failing with exit code 78" in capsys.readouterr().out  # the pod's log is in the task log
    cluster.wait_no_pods()  # deleted as on any failure
    assert len(cluster.created("pods")) == 1


def test_a_pod_failing_otherwise_is_still_retried(cluster):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    job = cluster.job("crashed", fake={"exit_code": 1})
    with pytest.raises(AirflowException) as info:
        cluster.run_task(_pod_op(job))
    assert not isinstance(info.value, AirflowFailException), info.value
    assert "not retried" not in str(info.value)
    cluster.wait_no_pods()


def test_an_indexed_job_whose_pod_refuses_its_configuration_is_not_retried(cluster, capsys):
    from airflow.sdk.exceptions import AirflowFailException

    from airtune.launch import kubernetes

    job = cluster.job("refusedjob", nodes=2, fake={"exit_code": 78})
    kubernetes.create_service(job, json.loads((Path(job["job_dir"]) / "spec.json").read_text()))
    with pytest.raises(AirflowFailException) as info:
        cluster.run_task(_job_op(job))
    text = str(info.value)
    assert "refused its configuration (exit 78" in text and "not retried" in text
    assert "failing with exit code 78" in capsys.readouterr().out
    kubernetes.cleanup_run_objects(job)
    cluster.wait_no_pods()
    assert cluster.emu.list("jobs", NS) == []


def test_exit_codes_are_read_from_the_named_container():
    from kubernetes.client import models as k8s

    from airtune.launch.kubernetes.operators import container_exit_code

    def pod(name, state):
        return k8s.V1Pod(status=k8s.V1PodStatus(container_statuses=[
            k8s.V1ContainerStatus(name=name, image="i", image_id="", ready=False, restart_count=0, state=state)]))

    done = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=78))
    running = k8s.V1ContainerState(running=k8s.V1ContainerStateRunning())
    assert container_exit_code(pod("train", done), "train") == 78
    assert container_exit_code(pod("sidecar", done), "train") is None
    assert container_exit_code(pod("train", running), "train") is None
    assert container_exit_code(k8s.V1Pod(), "train") is None and container_exit_code(None, "train") is None
