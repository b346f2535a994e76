"""The Kubernetes launcher: training pods, multi-machine indexed Jobs, the prepare pod, clean-up.

    naming.py     names and labels of every object (valid and unique per run and try)
    manifests.py  THE mapping from a resolved spec to pods, Jobs and Services
    operators.py  TrainPodOperator (one machine), TrainJobOperator (several): the DAG's train branches
    prepare.py    prepare_dataset as a CPU pod
    objects.py    the Job's headless Service, deleting a run's or a job's objects
    rendering.py  `airtune render`: the objects a job would create (a module name apart from
                  the function `render` below, which the module would otherwise shadow)
    in_pod.py     what the prepare pod runs (inside the image; no Airflow there)

This package is imported inside the training image too (`python -m airtune.launch.kubernetes.in_pod`),
so importing it loads nothing: the functions below import their module when called.
"""

from __future__ import annotations


def render(resolved: dict, dag_id: str, run_id: str) -> list[dict]:
    """Every Kubernetes object the job would create on its location, as the API would receive them."""
    from airtune.launch.kubernetes.rendering import render as _render

    return _render(resolved, dag_id, run_id)


def cleanup_job_objects(name: str, namespace: str | None = None, conn_id: str | None = None) -> list[str]:
    """Delete every object of a job, all runs (`airtune delete`); returns what was done."""
    from airtune.launch.kubernetes.objects import cleanup_job_objects as _cleanup

    return _cleanup(name, namespace, conn_id)


def cleanup_run_objects(job: dict, resolved: dict | None = None) -> list[str]:
    """Delete every object of one run (the DAG's teardown tasks); returns what was done."""
    from airtune.launch.kubernetes.objects import cleanup_run_objects as _cleanup

    return _cleanup(job, resolved)


def prepare_in_cluster(job: dict, resolved: dict, *, echo=None) -> dict:
    """prepare_dataset as a CPU pod; returns the manifest."""
    from airtune.launch.kubernetes.prepare import prepare_in_cluster as _prepare

    return _prepare(job, resolved, echo=echo)


def create_service(job: dict, resolved: dict) -> str:
    """The headless Service of a multi-machine run (the Job's setup task); returns its name."""
    from airtune.launch.kubernetes.objects import create_service as _create, run_facts

    dag_id, run_id = run_facts(job, resolved)
    return _create(job, resolved, dag_id=dag_id, run_id=run_id)
