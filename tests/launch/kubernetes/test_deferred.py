"""KubernetesTask (launch/kubernetes/deferred.py): the DAG's Kubernetes tasks build their provider
operator when they run. The pod and Job lifecycles through it are in test_k8s_pod_lifecycle.py and
test_k8s_job_lifecycle.py (against the API emulator); here: what it hands the operator, and that the
operator it names exists."""

from __future__ import annotations

import contextvars
import importlib
from datetime import timedelta

import pytest
from airflow.sdk import BaseOperator

CALLS: list = []


class Recorder(BaseOperator):
    """Stands in for a provider operator: records what the task hands it."""

    def __init__(self, *, airtune_job, **kwargs):
        super().__init__(**kwargs)
        self.airtune_job = airtune_job
        CALLS.append(("built", self.task_id, airtune_job, self.execution_timeout))

    def execute(self, context):
        CALLS.append(("execute", context["marker"]))
        return "executed"

    def trigger_reentry(self, context, event):
        CALLS.append(("trigger_reentry", event))
        return "reentered"

    def execute_complete(self, context, event, **kwargs):
        CALLS.append(("execute_complete", event, kwargs))
        return "completed"

    def on_kill(self):
        CALLS.append(("on_kill",))


def _run_as_task_runner(op, fn):
    """As the task runner calls execute: the safeguard knows the running operator."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    ctx = contextvars.copy_context()
    ctx.run(ExecutorSafeguard.tracker.set, op)
    return ctx.run(fn)


def test_the_task_builds_its_operator_once_and_hands_it_every_call(capfd):
    from airtune.launch.kubernetes.deferred import KubernetesTask

    CALLS.clear()
    task = KubernetesTask(task_id="train_kubernetes_pod", operator=f"{__name__}.Recorder", airtune_job={"name": "j"},
                          execution_timeout=timedelta(minutes=5), retries=2)
    assert CALLS == [] and task.operator_name == "Recorder" and task.retries == 2
    task.on_kill()  # killed before it built anything: nothing to stop
    assert CALLS == []
    capfd.readouterr()
    assert _run_as_task_runner(task, lambda: task.execute({"marker": 1})) == "executed"
    seen = capfd.readouterr()
    assert "outside of the Task Runner" not in seen.out + seen.err  # Airflow's guard knows it is the task's work
    assert task.trigger_reentry({}, {"status": "done"}) == "reentered"
    assert task.execute_complete({}, {"status": "ok"}, extra=1) == "completed"
    task.on_kill()
    assert CALLS == [("built", "train_kubernetes_pod", {"name": "j"}, timedelta(minutes=5)), ("execute", 1),
                     ("trigger_reentry", {"status": "done"}), ("execute_complete", {"status": "ok"}, {"extra": 1}),
                     ("on_kill",)]


@pytest.mark.parametrize("name", ["TRAIN_POD", "TRAIN_JOB", "EVALUATE_POD"])
def test_each_named_operator_exists_and_resumes_as_the_task_does(name):
    from airtune.launch.kubernetes import deferred

    module, _, cls_name = getattr(deferred, name).rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    # the methods a deferral resumes with, which KubernetesTask forwards
    assert callable(cls.execute) and (hasattr(cls, "trigger_reentry") or hasattr(cls, "execute_complete"))
    op = cls(task_id="t", airtune_job={}, execution_timeout=timedelta(seconds=1))
    assert op.execution_timeout == timedelta(seconds=1)
