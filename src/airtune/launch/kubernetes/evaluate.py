"""The evaluate step on a Kubernetes location: one pod on the GPU type the job trained on, running
`python -m airtune.evaluate` (launch.command.evaluate_command) on the job folder of the shared
workspace volume, so the tuned model never has to fit on an Airflow worker.

It is the train pod's operator with the `evaluate` role: deferrable, deleted however the task ends,
a new pod per try; the weights it scores (the checkpoint register will register, and the current
champion's when the job may move it) are chosen when the task starts, from the job folder.
"""

from __future__ import annotations

from airtune.launch.kubernetes import manifests, naming
from airtune.launch.kubernetes.operators import CONTAINER, TrainPodOperator, run_of


class EvaluatePodOperator(TrainPodOperator):
    """Score the tuned model and the model the job started from in a pod where training ran."""

    def configure(self, resolved: dict, job: dict, *, dag_id: str, run_id: str, try_number: int) -> None:
        super().configure(resolved, job, dag_id=dag_id, run_id=run_id, try_number=try_number)
        from airtune import pipeline

        run = run_of(job, resolved, dag_id=dag_id, run_id=run_id, try_number=try_number)
        self.name = naming.pod_name(run.job, dag_id, run_id, "evaluate", try_number)
        self.full_pod_spec = manifests.pod(resolved, run, role="evaluate", name=self.name)
        inputs = pipeline.evaluate_inputs(job)
        container = next(c for c in self.full_pod_spec.spec.containers if c.name in ("evaluate", CONTAINER))
        command = [a for a in container.command]
        i = command.index("--model")
        command[i + 1] = inputs["model_dir"]
        if inputs["champion_dir"]:
            command += ["--champion", inputs["champion_dir"], "--champion-version", inputs["champion_version"]]
        container.command = command
        self.base_container_name = container.name
