"""`prepare_dataset` for a Kubernetes location: a CPU pod with the training image does the work, so
large datasets are never processed on an Airflow worker. The task follows the pod's log and waits.

The pod is deleted however the task ends: done, failed, or stopped (Airflow sends SIGTERM when the
task is marked failed or times out; we turn it into an exception so `finally` runs). The DAG's
teardown deletes anything left by a worker that died outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
from pathlib import Path

from kubernetes.client.exceptions import ApiException

from airtune.launch.kubernetes import manifests, naming
from airtune.launch.kubernetes.objects import clients, run_facts

log = logging.getLogger(__name__)
CONTAINER = "prepare"


class PrepareFailed(RuntimeError):
    pass


class TaskStopped(RuntimeError):
    """SIGTERM: the task was marked failed, timed out, or its worker is shutting down."""


@contextlib.contextmanager
def stop_on_sigterm():
    """Raise TaskStopped in this (main) thread on SIGTERM, after Airflow's own handler has run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        if callable(previous):
            previous(signum, frame)
        raise TaskStopped("the task was stopped (SIGTERM)")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _try_number() -> int:
    try:
        from airflow.sdk import get_current_context

        return int(get_current_context()["ti"].try_number or 1)
    except Exception:  # outside a task (a test, the CLI)
        return 1


def prepare_in_cluster(job: dict, resolved: dict, *, try_number: int | None = None, echo=None) -> dict:
    """Run the prepare step as a pod; return the manifest it wrote to `<job>/data/manifest.json`."""
    from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager

    echo = echo or log.info
    settings = manifests.location_settings(resolved)
    dag_id, run_id = run_facts(job, resolved)
    try_number = try_number or _try_number()
    run = manifests.Run(job=job["name"], dag_id=dag_id, run_id=run_id, job_dir=str(job["job_dir"]),
                        mlflow_run_id=job.get("mlflow_run_id"), try_number=try_number)
    name = naming.pod_name(run.job, dag_id, run_id, "prepare", try_number)
    pod = manifests.pod(resolved, run, role="prepare", name=name)
    core, _ = clients(settings.connection_id)
    manager = PodManager(kube_client=core)
    _delete_earlier_tries(core, settings.namespace, run, keep=name)
    echo(f"preparing the data in pod {settings.namespace}/{name} (image {settings.image})")
    with stop_on_sigterm():
        try:
            manager.create_pod(pod)
            asyncio.run(manager.await_pod_start(
                pod=pod, schedule_timeout=settings.schedule_timeout_seconds,
                startup_timeout=settings.startup_timeout_seconds, check_interval=1,
            ))
            manager.fetch_container_logs(pod=pod, container_name=CONTAINER, follow=True)
            remote = manager.await_pod_completion(pod, container_name=CONTAINER)
            if remote.status.phase != "Succeeded":
                raise PrepareFailed(f"the prepare pod {name} ended {remote.status.phase}: {_termination(remote)}")
        finally:
            _delete(core, settings.namespace, name)
    return json.loads((Path(run.data_dir) / "manifest.json").read_text())


def _termination(pod) -> str:
    for status in (pod.status.container_statuses or []):
        t = status.state.terminated if status.state else None
        if t is not None:
            return f"exit code {t.exit_code} ({t.reason}){': ' + t.message if t.message else ''}"
    return pod.status.reason or pod.status.message or "no container ran"


def _delete(core, namespace: str, name: str) -> None:
    try:
        core.delete_namespaced_pod(name, namespace)
        log.info("deleted pod %s/%s", namespace, name)
    except ApiException as exc:
        if exc.status != 404:
            log.warning("could not delete pod %s/%s: %s", namespace, name, exc.reason)


def _delete_earlier_tries(core, namespace: str, run: manifests.Run, *, keep: str) -> None:
    selector = f"{naming.run_selector(run.job, run.dag_id, run.run_id)},{naming.LABEL_COMPONENT}=prepare"
    for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
        if pod.metadata.name != keep:
            _delete(core, namespace, pod.metadata.name)
