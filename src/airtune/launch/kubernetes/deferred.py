"""The DAG's Kubernetes tasks, without the Kubernetes clients at parse time.

The train and evaluate operators (`operators.py`, `evaluate.py`) are the cncf.kubernetes provider's
KubernetesPodOperator and KubernetesJobOperator. Importing them imports the `kubernetes` and
`kubernetes_asyncio` clients: ~1.5 s, against ~0.2 s for the rest of the DAG file. Every parse pays it
(the dag-processor's, and the one each task's process does before it runs, validate and prepare too),
though a job on the embedded default never talks to a cluster.

`KubernetesTask` is the task the DAG holds instead: a plain BaseOperator that names its operator
class by import path and builds it when the task runs, on the worker, then hands it each call the
task runner makes: `execute`, the method a deferral resumes with (`trigger_reentry`,
`execute_complete`; the trigger itself is the provider's, serialized by import path as always) and
`on_kill`. The operator gets the task's id, its `execution_timeout` and its rendered `airtune_job`; its other settings come
from the resolved spec when it starts (`configure`), as before. The UI shows the operator's class
name (`custom_operator_name`).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

# the operators this module stands in for (tests/launch/kubernetes/test_deferred.py imports each)
TRAIN_POD = "airtune.launch.kubernetes.operators.TrainPodOperator"
TRAIN_JOB = "airtune.launch.kubernetes.operators.TrainJobOperator"
EVALUATE_POD = "airtune.launch.kubernetes.evaluate.EvaluatePodOperator"


class KubernetesTask(BaseOperator):
    """A task that runs the Kubernetes operator `operator` (an import path), built when it runs."""

    template_fields: Sequence[str] = ("airtune_job",)
    ui_color = "#e4f0e8"

    def __init__(self, *, operator: str, airtune_job: Any, **kwargs) -> None:
        super().__init__(**kwargs)
        self.operator = operator
        self.airtune_job = airtune_job
        self.custom_operator_name = operator.rsplit(".", 1)[1]
        self._built = None

    def built(self):
        """The operator itself (made once per task process, after the task's fields are rendered)."""
        if self._built is None:
            module, _, name = self.operator.rpartition(".")
            cls = getattr(importlib.import_module(module), name)
            # execution_timeout: the provider's pod operator hands it to its trigger as a deadline
            self._built = cls(task_id=self.task_id, airtune_job=self.airtune_job, execution_timeout=self.execution_timeout)
        return self._built

    def execute(self, context):
        from airtune import compat

        return compat.execute_nested(self.built(), context)

    # the methods a deferral of the provider's operators resumes with (its method_name)
    def trigger_reentry(self, context, event):
        return self.built().trigger_reentry(context, event)

    def execute_complete(self, context, event, **kwargs):
        return self.built().execute_complete(context, event, **kwargs)

    def on_kill(self) -> None:
        if self._built is not None:
            self._built.on_kill()
