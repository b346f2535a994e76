"""Objects beside the operators': the headless Service of a multi-machine job, and deleting
everything of a run or of a job (the DAG's teardown tasks, `airtune delete`).

Every object airtune creates carries `airtune.io/job` and `airtune.io/run` labels (`naming.py`), so
deleting by label finds them all: pods of any try, Jobs, Services, including those of a task whose
worker died before it could clean up.
"""

from __future__ import annotations

import logging

from kubernetes.client.exceptions import ApiException

from airtune.launch.kubernetes import manifests, naming

log = logging.getLogger(__name__)


def clients(conn_id: str):
    """(CoreV1Api, BatchV1Api) of an Airflow Kubernetes connection."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    hook = KubernetesHook(conn_id=conn_id)
    return hook.core_v1_client, hook.batch_v1_client


def run_facts(job: dict, resolved: dict) -> tuple[str, str]:
    """(dag_id, run_id) of the run that made this job folder: validate records them in the spec."""
    from airtune.resolved import as_resolved

    tracking = as_resolved(resolved).tracking
    return ((tracking.dag_id if tracking else None) or job.get("dag_id"),
            (tracking.run_id if tracking else None) or job.get("run_id"))


def create_service(job: dict, resolved: dict, *, dag_id: str, run_id: str) -> str:
    """Create the run's headless Service (idempotent: a retry finds it there). Returns its name."""
    settings = manifests.location_settings(resolved)
    run = manifests.Run(job=job["name"], dag_id=dag_id, run_id=run_id, job_dir=str(job["job_dir"]))
    name = naming.service_name(run.job, dag_id, run_id)
    core, _ = clients(settings.connection_id)
    try:
        core.create_namespaced_service(settings.namespace, manifests.headless_service(resolved, run, name=name))
        log.info("created headless Service %s/%s", settings.namespace, name)
    except ApiException as exc:
        if exc.status != 409:
            raise
        log.info("headless Service %s/%s exists already", settings.namespace, name)
    return name


def delete_selected(core, batch, namespace: str, selector: str) -> list[str]:
    """Delete the Jobs (with their pods), Services and pods that match a label selector."""
    done = []

    def delete(kind: str, name: str, call, **kwargs) -> None:
        try:
            call(name, namespace, **kwargs)
            done.append(f"deleted {kind} {namespace}/{name}")
        except ApiException as exc:
            if exc.status != 404:
                raise

    # Jobs first: a Job whose pods were deleted before it would make new ones.
    for job in batch.list_namespaced_job(namespace, label_selector=selector).items:
        delete("job", job.metadata.name, batch.delete_namespaced_job, propagation_policy="Background")
    for svc in core.list_namespaced_service(namespace, label_selector=selector).items:
        delete("service", svc.metadata.name, core.delete_namespaced_service)
    for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
        if pod.metadata.deletion_timestamp is None:
            delete("pod", pod.metadata.name, core.delete_namespaced_pod)
    for line in done:
        log.info("%s", line)
    return done


def cleanup_run_objects(job: dict, resolved: dict | None = None) -> list[str]:
    """Delete every object of one run of a job (the DAG's teardown). Returns what it deleted."""
    if resolved is None:
        from airtune.pipeline import load_resolved

        resolved = load_resolved(job)
    from airtune.resolved import as_resolved

    if as_resolved(resolved).location.kind == "local":
        return []
    settings = manifests.location_settings(resolved)
    dag_id, run_id = run_facts(job, resolved)
    core, batch = clients(settings.connection_id)
    return delete_selected(core, batch, settings.namespace, naming.run_selector(job["name"], dag_id, run_id))


def cleanup_job_objects(name: str, namespace: str | None = None, conn_id: str | None = None) -> list[str]:
    """Delete every object of a job, all its runs (`airtune delete`). Without a namespace and
    connection, every Kubernetes location of the catalog is searched. A cluster that cannot be
    reached is reported, not raised: deleting the rest of the job goes on."""
    if namespace and conn_id:
        targets = [(f"{conn_id}/{namespace}", conn_id, namespace)]
    else:
        from airtune.catalog import Catalog

        targets = [
            (loc.name, loc.connection_id, loc.namespace)
            for loc in Catalog.load().locations.values()
            if not loc.is_local and loc.connection_id and loc.namespace
        ]
    out = []
    for where, conn, ns in targets:
        try:
            core, batch = clients(conn)
            out += delete_selected(core, batch, ns, naming.job_selector(name))
        except Exception as exc:  # unreachable cluster, missing connection: say so and go on
            out.append(f"{where}: could not look for objects of {name!r}: {type(exc).__name__}: {str(exc)[:200]}")
    return out
