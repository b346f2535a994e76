"""The train branches for a Kubernetes location: operators of the cncf.kubernetes provider, given
their pod and Job by `manifests` (the one mapping from the spec).

    TrainPodOperator   one machine: a KubernetesPodOperator, deferrable. The pod is deleted however
                       the task ends: success or failure (`on_finish_action`), the task marked failed
                       or timed out while it runs on a worker (`on_kill`) or while it waits in the
                       triggerer (the trigger's `on_kill`, Airflow 3.3+).
    TrainJobOperator   several machines: a KubernetesJobOperator creating an indexed Job, deferrable;
                       the headless Service is made before it and the Job and Service are deleted
                       after it by the DAG's setup and teardown tasks (`objects.py`).

Each try gets new objects (the try number is in their names) that resume from the newest checkpoint
in the job folder. A try whose worker died while its pod still runs reattaches to that pod (the
provider's `durable`); an earlier try's Job still running is deleted before the new one starts, so two
never write the same checkpoints.

Both operators read the job from the `airtune_job` XCom (the validate/prepare result) and the resolved
spec from the job folder when they start, so the DAG file needs no Kubernetes settings at parse time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.triggers.job import KubernetesJobTrigger
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

from airtune import compat
from airtune.launch.kubernetes import manifests, naming
from airtune.pipeline import load_resolved  # the job folder's spec.json, read as the other tasks read it
from airtune.resolved import as_resolved

CONTAINER = "train"
# Task ids in the DAG (dags/airtune_finetune.py): the provider puts the task id in the pod's labels.
TASK_POD = "train_kubernetes_pod"
TASK_JOB_GROUP = "train_kubernetes_job"
TASK_JOB = f"{TASK_JOB_GROUP}.train"
JOB_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def run_of(job: dict, resolved: dict, *, dag_id: str, run_id: str, try_number: int) -> manifests.Run:
    return manifests.Run(
        job=job["name"], dag_id=dag_id, run_id=run_id, job_dir=str(job["job_dir"]),
        mlflow_run_id=job.get("mlflow_run_id"), try_number=try_number,
    )


def container_exit_code(pod, container: str) -> int | None:
    """The exit code of `container` in `pod` once it has terminated, else None."""
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    status = next((s for s in statuses if s.name == container), None)
    terminated = status.state.terminated if status is not None and status.state is not None else None
    return terminated.exit_code if terminated is not None else None


def fail_on_config_error(exc: BaseException, pods, container: str) -> None:
    """A failure whose pod's `container` exited EXIT_CONFIG (the trainer or evaluator refused its
    configuration, as the local launcher's TrainingRefused): fail the task at once, without its
    retries (pipeline.fail_now). Returns for any other failure, to be raised as it is."""
    from airtune.launch.local import EXIT_CONFIG
    from airtune.pipeline import fail_now

    if isinstance(exc, (AirflowFailException, AirflowSkipException)):
        return
    refused = [p for p in pods or [] if container_exit_code(p, container) == EXIT_CONFIG]
    if refused:
        names = ", ".join(p.metadata.name for p in refused)
        fail_now(f"the {container} container of pod {names} refused its configuration (exit {EXIT_CONFIG}; its "
                 f"'[airtune] configuration error: ...' line is in the pod's log above): {str(exc).splitlines()[0]}")


def _ti_facts(context) -> tuple[str, str, int]:
    ti = context["ti"]
    return ti.dag_id, context["run_id"], int(ti.try_number or 1)


class TrainPodOperator(KubernetesPodOperator):
    """Train on one machine: one pod built from the resolved spec, through `torchrun` when it has
    more than one GPU. Deferrable: while the pod trains, no worker slot is held."""

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "airtune_job")
    BASE_CONTAINER_NAME = CONTAINER

    def __init__(self, *, airtune_job: Any, **kwargs) -> None:
        kwargs.setdefault("deferrable", True)
        kwargs.setdefault("get_logs", True)
        kwargs.setdefault("on_finish_action", "delete_pod")
        kwargs.setdefault("on_kill_action", "delete_pod")
        kwargs.setdefault("random_name_suffix", False)  # the name carries run and try already
        kwargs.setdefault("log_events_on_failure", True)
        super().__init__(**kwargs)
        self.airtune_job = airtune_job

    def configure(self, resolved: dict, job: dict, *, dag_id: str, run_id: str, try_number: int) -> None:
        """Everything the pod needs, from the resolved spec: also where (connection, namespace)."""
        settings = manifests.location_settings(resolved)
        run = run_of(job, resolved, dag_id=dag_id, run_id=run_id, try_number=try_number)
        self.kubernetes_conn_id = settings.connection_id
        self.namespace = settings.namespace
        self.name = naming.pod_name(run.job, dag_id, run_id, "train", try_number)
        self.full_pod_spec = manifests.pod(resolved, run, role="train", name=self.name)
        self.base_container_name = CONTAINER
        self.active_deadline_seconds = settings.active_deadline_seconds
        self.termination_grace_period = settings.termination_grace_seconds
        self.schedule_timeout_seconds = settings.schedule_timeout_seconds
        self.startup_timeout_seconds = settings.startup_timeout_seconds
        self.logging_interval = settings.log_interval_seconds or None
        self.poll_interval = settings.poll_interval_seconds
        self.startup_check_interval_seconds = settings.poll_interval_seconds

    def _configure_from_context(self, context) -> None:
        dag_id, run_id, try_number = _ti_facts(context)
        self.configure(load_resolved(self.airtune_job), self.airtune_job, dag_id=dag_id, run_id=run_id, try_number=try_number)

    def execute(self, context):
        self._configure_from_context(context)
        return super().execute(context)

    def trigger_reentry(self, context, event):
        self._configure_from_context(context)
        return super().trigger_reentry(context, event)

    def cleanup(self, pod, remote_pod, xcom_result=None, context=None):
        """The provider's (public) cleanup: the pod deleted, a failed pod raised as AirflowException; a
        train container that exited EXIT_CONFIG fails the task without retries instead."""
        try:
            return super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)
        except AirflowException as exc:
            fail_on_config_error(exc, [remote_pod], self.base_container_name)
            raise


class TrainJobTrigger(KubernetesJobTrigger):
    """The provider's Job trigger, plus: when the user marks the deferred task failed (or success),
    delete the Job and its pods at once, before the DAG's teardown gets to it."""

    async def on_kill(self) -> None:
        hook = AsyncKubernetesHook(conn_id=self.kubernetes_conn_id, in_cluster=self.in_cluster,
                                   config_file=self.config_file, cluster_context=self.cluster_context)
        from kubernetes_asyncio import client as async_client

        async with hook.get_conn() as connection:
            try:
                await async_client.BatchV1Api(connection).delete_namespaced_job(
                    name=self.job_name, namespace=self.job_namespace,
                    body=async_client.V1DeleteOptions(propagation_policy="Foreground"),
                )
            except async_client.ApiException as exc:
                if exc.status != 404:
                    raise

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        return f"{__name__}.TrainJobTrigger", kwargs


class TrainJobOperator(KubernetesJobOperator):
    """Train on several machines: an indexed Job (completions = parallelism = nodes), `torchrun` on
    each pod with its node rank from the completion index, rendezvous at pod 0 through the headless
    Service. A pod's failure fails the Job at once (podFailurePolicy, backoffLimit 0)."""

    template_fields: Sequence[str] = (*KubernetesJobOperator.template_fields, "airtune_job")
    BASE_CONTAINER_NAME = CONTAINER
    POD_DISCOVERY_SECONDS = 60

    def __init__(self, *, airtune_job: Any, **kwargs) -> None:
        kwargs.setdefault("deferrable", True)
        kwargs.setdefault("wait_until_job_complete", True)
        kwargs.setdefault("get_logs", True)
        kwargs.setdefault("on_finish_action", "delete_pod")
        kwargs.setdefault("random_name_suffix", False)
        kwargs.setdefault("completion_mode", "Indexed")
        kwargs.setdefault("backoff_limit", 0)
        super().__init__(**kwargs)
        self.airtune_job = airtune_job

    def configure(self, resolved: dict, job: dict, *, dag_id: str, run_id: str, try_number: int) -> None:
        settings = manifests.location_settings(resolved)
        run = run_of(job, resolved, dag_id=dag_id, run_id=run_id, try_number=try_number)
        nodes = int(as_resolved(resolved).runtime.nodes)
        full_name = naming.job_name(run.job, dag_id, run_id, try_number, nodes)
        service = naming.service_name(run.job, dag_id, run_id)
        self.kubernetes_conn_id = settings.connection_id
        self.namespace = settings.namespace
        self.name = naming.job_base_name(run.job, dag_id, run_id, try_number, nodes)  # the provider adds "job-"
        self.base_container_name = CONTAINER
        self.completions = nodes
        self.parallelism = nodes
        self.active_deadline_seconds = settings.active_deadline_seconds
        self.termination_grace_period = settings.termination_grace_seconds
        self.ttl_seconds_after_finished = settings.job_ttl_seconds
        self.job_poll_interval = settings.poll_interval_seconds
        # The provider builds the pod template from full_pod_spec and wraps it in full_job_spec; the
        # Job given here therefore carries no template of its own (it would be merged in twice).
        self.full_pod_spec = manifests.job_pod(resolved, run, job_name=full_name, service=service)
        job_spec = manifests.indexed_job(resolved, run, job_name=full_name, service=service)
        job_spec.spec.template = k8s.V1PodTemplateSpec()
        self.full_job_spec = job_spec
        self._run = run

    def _configure_from_context(self, context) -> None:
        dag_id, run_id, try_number = _ti_facts(context)
        self.configure(load_resolved(self.airtune_job), self.airtune_job, dag_id=dag_id, run_id=run_id, try_number=try_number)

    def execute(self, context):
        self._configure_from_context(context)
        self._delete_earlier_tries()
        return super().execute(context)

    def create_job(self, job_request_obj: k8s.V1Job) -> k8s.V1Job:
        try:
            return super().create_job(job_request_obj)
        except ApiException as exc:
            if exc.status != 409:  # this try's Job exists already (a worker died after creating it)
                raise
            self.log.info("Job %s exists already; following it", job_request_obj.metadata.name)
            return job_request_obj

    def _delete_earlier_tries(self) -> None:
        """An earlier try's Job may still run (its worker died): stop it before this try starts."""
        selector = f"{naming.run_selector(self._run.job, self._run.dag_id, self._run.run_id)},{naming.LABEL_COMPONENT}=train"
        current = naming.job_name(self._run.job, self._run.dag_id, self._run.run_id, self._run.try_number, self.parallelism)
        for job in self.job_client.list_namespaced_job(self.namespace, label_selector=selector).items:
            if job.metadata.name != current:
                self.log.info("Deleting Job %s of an earlier try", job.metadata.name)
                try:
                    self.job_client.delete_namespaced_job(job.metadata.name, self.namespace, propagation_policy="Foreground")
                except ApiException as exc:
                    if exc.status != 404:
                        raise

    def get_pods(self, pod_request_obj: k8s.V1Pod, context, *, exclude_checked: bool = True) -> Sequence[k8s.V1Pod]:
        """The Job's pods, by its name, in index order. The provider's version lists four times back to
        back and fails when the Job controller has not made the pods yet; here we wait for them a
        while, and carry on without them when the Job is queued (e.g. by Kueue): the trigger waits
        for the Job, and the pods are looked up again when it is done."""
        deadline = time.monotonic() + self.POD_DISCOVERY_SECONDS
        pods: list[k8s.V1Pod] = []
        while time.monotonic() < deadline:
            pods = self._job_pods()
            if len(pods) >= self.parallelism or self._job_finished():
                break
            time.sleep(1)
        if not pods:
            self.log.info("The Job's pods do not exist yet (queued?); waiting for the Job itself")
        return pods

    def _job_finished(self) -> bool:
        """Complete or Failed already (a pod failed at once, and the Job's other pods are gone)."""
        job = self.job_client.read_namespaced_job_status(self.job.metadata.name, self.job.metadata.namespace)
        return any(c.type in ("Complete", "Failed") and c.status == "True" for c in (job.status.conditions or []))

    def _job_pods(self) -> list[k8s.V1Pod]:
        name = self.job.metadata.name if self.job is not None else None
        if not name:
            return []
        items = self.client.list_namespaced_pod(self.namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
        return sorted(items, key=lambda p: int((p.metadata.labels or {}).get(JOB_INDEX_LABEL) or
                                               (p.metadata.annotations or {}).get(JOB_INDEX_LABEL) or 0))

    # The provider's private methods this class overrides are listed in airtune.compat.RELIES_ON
    # (tests/test_compat.py fails when a provider version renames or stops calling one).
    def execute_deferrable(self):
        self.defer(
            trigger=TrainJobTrigger(
                job_name=self.job.metadata.name,
                job_namespace=self.job.metadata.namespace,
                pod_names=[pod.metadata.name for pod in self.pods],
                pod_namespace=self.job.metadata.namespace,
                base_container_name=self.base_container_name,
                kubernetes_conn_id=self.kubernetes_conn_id,
                cluster_context=self.cluster_context,
                config_file=self.config_file,
                in_cluster=self.in_cluster,
                poll_interval=self.job_poll_interval,
                get_logs=self.get_logs,
                do_xcom_push=self.do_xcom_push,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context, event: dict, **kwargs):
        self._configure_from_context(context)
        self.job = k8s.V1Job(metadata=k8s.V1ObjectMeta(name=event["name"], namespace=event["namespace"]))
        pods = self._job_pods()
        event = {**event, "pod_names": [p.metadata.name for p in pods], "pod_namespace": event["namespace"]}
        if event["status"] == "error" and self.get_logs:
            # The provider reads the pods' logs only on success; a failure's traceback matters more.
            for p in pods:
                try:
                    self._write_logs(p)
                except Exception as exc:  # a pod gone already: its log is gone with it
                    self.log.warning("no log from pod %s: %s", p.metadata.name, exc)
            event["pod_names"] = []  # logged above; the provider would skip them anyway
            self._pods_for_cleanup = pods
        try:
            return super().execute_complete(context, event, **kwargs)
        except AirflowException as exc:  # a pod whose train container exited EXIT_CONFIG: not retried
            fail_on_config_error(exc, pods, self.base_container_name)
            raise

    def _write_logs(self, pod, follow: bool = False, since_time=None) -> None:
        self.log.info("--- log of pod %s (node %s) ---", pod.metadata.name,
                      (pod.metadata.labels or {}).get(JOB_INDEX_LABEL, "?"))
        compat.inherited(self, TrainJobOperator, "_write_logs")(pod, follow=follow, since_time=since_time)

    def _cleanup_monitoring_pods_from_dict(self, context, pods_by_name, **kwargs):
        for p in getattr(self, "_pods_for_cleanup", []):
            pods_by_name.setdefault(p.metadata.name, p)
        return compat.inherited(self, TrainJobOperator, "_cleanup_monitoring_pods_from_dict")(context, pods_by_name, **kwargs)
