"""`airtune render FILE.yaml`: every Kubernetes object a job would create on its location, built by
the same code the tasks run (the operators' own `build_*_request_obj`), as the API would receive them.

What only the run itself can know is shown as the run would fill it: the DAG run id given, try 1, the
MLflow run id when the spec has one. The provider's label `airflow_kpo_in_cluster` depends on where
the worker runs; it is shown as False.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

from kubernetes.client import ApiClient

from airtune import compat
from airtune.launch import launcher_kind
from airtune.launch.kubernetes import manifests, naming
from airtune.launch.kubernetes.operators import TASK_JOB, TASK_POD, TrainJobOperator, TrainPodOperator
from airtune.names import safe_path_component


class _OfflineHook:
    """Stands in for KubernetesHook where building an object would ask it something: no cluster."""

    is_in_cluster = False

    def get_namespace(self):
        return None


def _quiet(op):
    """The operators log what they build at info level; `airtune render` prints YAML on stdout alone."""
    quiet = logging.getLogger("airtune.launch.kubernetes.rendering.build")
    quiet.setLevel(logging.WARNING)
    compat.set_operator_logger(op, quiet)
    return op


def _context(dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> dict:
    ti = SimpleNamespace(dag_id=dag_id, task_id=task_id, map_index=-1, try_number=try_number)
    return {"ti": ti, "run_id": run_id, "dag": SimpleNamespace(dag_id=dag_id)}


def job_of(resolved: dict, run_id: str) -> dict:
    """The job XCom the tasks would pass: where its folder is on the workspace volume."""
    from airtune.resolved import as_resolved

    resolved = as_resolved(resolved)
    settings = manifests.location_settings(resolved)
    name = resolved.spec.name
    job_dir = f"{settings.workspace.mount_path}/jobs/{name}/{safe_path_component(run_id)}"
    return {"name": name, "job_dir": job_dir, "mlflow_run_id": resolved.tracking.mlflow_run_id if resolved.tracking else None,
            "launcher": launcher_kind(resolved)}


def render(resolved: dict, dag_id: str, run_id: str) -> list[dict]:
    """Every object the job would create, in order: prepare pod, then the train pod, or the Service
    and the indexed Job. A job on `local` creates none."""
    kind = launcher_kind(resolved)
    if kind == "local":
        return []
    job = job_of(resolved, run_id)
    run = manifests.Run(job=job["name"], dag_id=dag_id, run_id=run_id, job_dir=job["job_dir"],
                        mlflow_run_id=job["mlflow_run_id"], try_number=1)
    objects = [manifests.pod(resolved, run, role="prepare", name=naming.pod_name(run.job, dag_id, run_id, "prepare", 1))]
    if kind == "kubernetes_pod":
        op = _quiet(TrainPodOperator(task_id=TASK_POD, airtune_job=job))
        op.configure(resolved, job, dag_id=dag_id, run_id=run_id, try_number=1)
        op.hook = _OfflineHook()
        objects.append(op.build_pod_request_obj(_context(dag_id, run_id, TASK_POD)))
    else:
        service = naming.service_name(run.job, dag_id, run_id)
        objects.append(manifests.headless_service(resolved, run, name=service))
        op = _quiet(TrainJobOperator(task_id=TASK_JOB, airtune_job=job))
        op.configure(resolved, job, dag_id=dag_id, run_id=run_id, try_number=1)
        op.hook = _OfflineHook()
        objects.append(op.build_job_request_obj(_context(dag_id, run_id, TASK_JOB)))
    api = ApiClient()
    return [api.sanitize_for_serialization(o) for o in objects]
