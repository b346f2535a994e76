"""The one mapping from a resolved job spec to Kubernetes objects (one function speaks both
vocabularies). Nothing else in airtune knows what a pod, a Job or a Service looks like.

    location_settings(resolved)   the location's Kubernetes settings (configs/locations.yaml), checked
    pod(resolved, run, role=...)  the pod of a role: `train` (GPUs) or `prepare` (CPU only)
    indexed_job(...)              the Job around the train pod for several machines
    headless_service(...)         the Service the Job's pods find each other through

The operators (`operators.py`) hand these to the cncf.kubernetes provider as its `full_pod_spec` /
`full_job_spec`; the provider adds its own labels (dag_id, task_id, run_id, try_number) and submits.

Paths: the job folder is on the workspace volume, mounted at the same path on the Airflow workers
and in the pods (docs/kubernetes.md), so a path in the resolved spec means the same file on both
sides and nothing is rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Mapping

from kubernetes.client import models as k8s

from airtune.catalog import STORAGE_KINDS, KubernetesSettings, LocationError, SecretRef, Storage, kubernetes_settings  # noqa: F401
from airtune.launch.command import train_command
from airtune.launch.kubernetes import naming
from airtune.resolved import Resolved, as_resolved

# evaluate: the tuned and the base model scored where training ran (GPUs, like train)
ROLES = ("train", "prepare", "evaluate")
GPU_RESOURCE = "nvidia.com/gpu"
SHM_VOLUME = "dshm"


# A location's Kubernetes settings: read, checked and given their defaults by the catalog (the one
# reader of configs/locations.yaml), from the location record the resolved spec carries.
SettingsError = LocationError
Settings = KubernetesSettings


def location_settings(resolved: Resolved | Mapping) -> Settings:
    location = as_resolved(resolved).location
    return kubernetes_settings(location.name if location else "?", location.to_json() if location else {})


@dataclass(frozen=True)
class Run:
    """Which run of which job the objects belong to, and where its folder is (a path on the
    workspace volume, the same in the pods as on the workers)."""

    job: str
    dag_id: str
    run_id: str
    job_dir: str
    mlflow_run_id: str | None = None
    try_number: int = 1

    @property
    def spec_path(self) -> str:
        return f"{self.job_dir}/spec.json"

    @property
    def data_dir(self) -> str:
        return f"{self.job_dir}/data"

    @property
    def output_dir(self) -> str:
        return f"{self.job_dir}/output"


def check_job_dir(settings: Settings, job_dir: str) -> None:
    """The pods read and write the job folder through the workspace volume: it must be on it."""
    mount = PurePosixPath(settings.workspace.mount_path)
    if not PurePosixPath(job_dir).is_relative_to(mount):
        raise SettingsError(
            f"location {settings.name}: the job folder {job_dir} is not on the workspace volume "
            f"(claim {settings.workspace.claim}, mounted at {mount} in the pods). Mount that claim on the "
            f"Airflow workers at {mount} and set AIRTUNE_WORKSPACE={mount} there (docs/kubernetes.md)."
        )


def tracking_uri_for_pods(settings: Settings) -> str | None:
    """MLflow as the pods reach it: the location's setting, else the workers' if it is a server."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    from airtune import tracking

    uri = tracking.tracking_uri()
    return uri if uri.startswith(("http://", "https://")) else None


# --- the mapping ------------------------------------------------------------------------------

def command(resolved: dict, run: Run, *, role: str, rendezvous: dict | None = None) -> list[str]:
    """The container's command: THE training command (launch.command) or the prepare step."""
    if role == "evaluate":  # the operator adds --model / --champion once training has chosen them
        from airtune.launch.command import evaluate_command

        return evaluate_command(resolved, spec_path=run.spec_path, data_dir=run.data_dir,
                                model_dir=f"{run.output_dir}/final", output_dir=f"{run.job_dir}/evaluation",
                                python="python")
    if role == "train":
        return train_command(
            resolved, spec_path=run.spec_path, data_dir=run.data_dir, output_dir=run.output_dir,
            python="python", rendezvous=rendezvous,
        )
    settings = location_settings(resolved)
    cache = f"{settings.workspace.mount_path}/cache/prepared"
    return ["python", "-m", "airtune.launch.kubernetes.in_pod", "prepare",
            "--spec", run.spec_path, "--out", run.data_dir, "--cache", cache]


def resources(resolved: Resolved | Mapping, *, role: str) -> k8s.V1ResourceRequirements:
    """Requests equal limits (Guaranteed QoS): a training pod is never throttled or evicted first."""
    resolved = as_resolved(resolved)
    settings = location_settings(resolved)
    spec = resolved.spec
    if role == "prepare":
        amounts = {"cpu": str(settings.prepare_cpu), "memory": f"{settings.prepare_memory_gib}Gi"}
    else:
        amounts = {"cpu": str(int(spec.cpu)), "memory": f"{int(spec.memory_gib)}Gi"}
        gpus = int(resolved.runtime.gpus_per_node)
        if gpus:
            amounts[GPU_RESOURCE] = str(gpus)
    return k8s.V1ResourceRequirements(requests=dict(amounts), limits=dict(amounts))


def env(resolved: dict, run: Run, *, role: str) -> tuple[list[k8s.V1EnvVar], list[k8s.V1EnvFromSource]]:
    """Plain settings as values; every secret only as a reference to a Kubernetes Secret."""
    from airtune.launch.environment import REPORTING_ROLES, launch_env

    settings = location_settings(resolved)
    where = {"AIRTUNE_WORKSPACE": settings.workspace.mount_path}
    hf_home = settings.hf_home or (
        f"{settings.storage['models'].mount_path}/hf-home"
        if "models" in settings.storage and not settings.storage["models"].read_only else None
    )
    if hf_home:
        where["HF_HOME"] = hf_home
    values = launch_env(role=role, job_dir=run.job_dir, mlflow_run_id=run.mlflow_run_id, where=where,
                        tracking_uri=tracking_uri_for_pods(settings) if role in REPORTING_ROLES else None)
    env_vars = [k8s.V1EnvVar(name=k, value=v) for k, v in values.items()]
    env_from = []
    for s in settings.secrets:
        if not s.for_role(role):
            continue
        if s.env_from:
            env_from.append(k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s.name, optional=s.optional or None)))
        else:
            env_vars.append(k8s.V1EnvVar(
                name=s.env,
                value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=s.name, key=s.key, optional=s.optional or None)),
            ))
    return env_vars, env_from


def volumes(resolved: dict, *, role: str) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    settings = location_settings(resolved)
    vols, mounts = [], []
    for kind in STORAGE_KINDS:
        st = settings.storage.get(kind)
        if st is None:
            continue
        vols.append(k8s.V1Volume(name=kind, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=st.claim, read_only=st.read_only or None)))
        mounts.append(k8s.V1VolumeMount(name=kind, mount_path=st.mount_path, read_only=st.read_only or None))
    # /dev/shm: the runtime's default is 64 MiB, too little for DataLoader workers and NCCL.
    # A memory-backed emptyDir counts against the container's memory limit: half of it by default.
    memory = settings.prepare_memory_gib if role == "prepare" else int(as_resolved(resolved).spec.memory_gib)
    shm = settings.shm_size_gib or max(1, memory // 2)
    vols.append(k8s.V1Volume(name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=f"{shm}Gi")))
    mounts.append(k8s.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm"))
    return vols, mounts


def scheduling(resolved: dict, *, role: str) -> dict[str, Any]:
    """Node selector (the GPU type's label), tolerations and priority."""
    settings = location_settings(resolved)
    selector = dict(settings.node_selector)
    tolerations = []
    if role in ("train", "evaluate"):
        gpu_type = settings.gpu_types.get(as_resolved(resolved).spec.gpu_type) or {}
        selector.update(gpu_type.get("node_selector") or {})
        tolerations = [k8s.V1Toleration(**t) for t in settings.tolerations]
    return {
        "node_selector": selector or None,
        "tolerations": tolerations or None,
        "priority_class_name": settings.priority_class,
    }


def pod(resolved: dict, run: Run, *, role: str, name: str, rendezvous: dict | None = None,
        subdomain: str | None = None) -> k8s.V1Pod:
    """The pod of one role of one run: THE function the operators and `airtune render` build from."""
    if role not in ROLES:
        raise ValueError(f"role: {role!r}; accepted: {', '.join(ROLES)}")
    settings = location_settings(resolved)
    check_job_dir(settings, run.job_dir)
    env_vars, env_from = env(resolved, run, role=role)
    vols, mounts = volumes(resolved, role=role)
    labels = naming.labels(run.job, run.dag_id, run.run_id, role)
    if settings.kueue_queue and subdomain is None:  # a Job's pods are admitted through their Job
        labels[naming.KUEUE_QUEUE_LABEL] = settings.kueue_queue
    container = k8s.V1Container(
        name=role,
        image=settings.image,
        image_pull_policy=settings.image_pull_policy,
        command=command(resolved, run, role=role, rendezvous=rendezvous),
        env=env_vars,
        env_from=env_from or None,
        resources=resources(resolved, role=role),
        volume_mounts=mounts,
        working_dir=run.job_dir,
        security_context=k8s.V1SecurityContext(
            run_as_non_root=True,
            allow_privilege_escalation=False,
            privileged=False,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
    )
    return k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=k8s.V1ObjectMeta(
            name=name,
            namespace=settings.namespace,
            labels=labels,
            annotations={
                naming.ANNOTATION_DAG_ID: run.dag_id,
                naming.ANNOTATION_RUN_ID: run.run_id,
                naming.ANNOTATION_JOB_DIR: run.job_dir,
            },
        ),
        spec=k8s.V1PodSpec(
            containers=[container],
            volumes=vols,
            restart_policy="Never",
            service_account_name=settings.service_account,
            # Training code needs no Kubernetes API: no token in the pod.
            automount_service_account_token=False,
            enable_service_links=False,
            image_pull_secrets=[k8s.V1LocalObjectReference(name=n) for n in settings.image_pull_secrets] or None,
            active_deadline_seconds=settings.active_deadline_seconds,
            termination_grace_period_seconds=settings.termination_grace_seconds,
            subdomain=subdomain,
            security_context=k8s.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=settings.run_as_user,
                run_as_group=settings.run_as_group,
                fs_group=settings.fs_group,
                # chown only when the volume's root is not already ours: a recursive chown of a
                # volume of checkpoints takes minutes
                fs_group_change_policy="OnRootMismatch",
                seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
            ),
            **scheduling(resolved, role=role),
        ),
    )


def job_pod(resolved: dict, run: Run, *, job_name: str, service: str) -> k8s.V1Pod:
    """The pod template of the indexed Job: torchrun on each pod, node rank = completion index,
    rendezvous at pod 0 (`<job>-0.<service>`: the Job names its pods' hosts `<job>-<index>`)."""
    settings = location_settings(resolved)
    rendezvous = {
        "master_addr": f"{job_name}-0.{service}",
        "master_port": settings.rendezvous_port,
        "node_rank": "$(JOB_COMPLETION_INDEX)",  # expanded by Kubernetes from the variable below
    }
    p = pod(resolved, run, role="train", name=job_name, rendezvous=rendezvous, subdomain=service)
    p.spec.containers[0].env.append(k8s.V1EnvVar(
        name="JOB_COMPLETION_INDEX",
        value_from=k8s.V1EnvVarSource(field_ref=k8s.V1ObjectFieldSelector(
            field_path="metadata.annotations['batch.kubernetes.io/job-completion-index']")),
    ))
    p.spec.containers[0].ports = [k8s.V1ContainerPort(name="rendezvous", container_port=settings.rendezvous_port)]
    return p


def indexed_job(resolved: dict, run: Run, *, job_name: str, service: str) -> k8s.V1Job:
    """completions = parallelism = nodes, one pod per index; any pod's failure fails the Job at once
    (torchrun cannot take a replacement into a running static rendezvous)."""
    settings = location_settings(resolved)
    nodes = int(as_resolved(resolved).runtime.nodes)
    labels = naming.labels(run.job, run.dag_id, run.run_id, "train")
    if settings.kueue_queue:
        labels[naming.KUEUE_QUEUE_LABEL] = settings.kueue_queue
    template = job_pod(resolved, run, job_name=job_name, service=service)
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=k8s.V1ObjectMeta(name=job_name, namespace=settings.namespace, labels=labels,
                                  annotations=dict(template.metadata.annotations)),
        spec=k8s.V1JobSpec(
            completion_mode="Indexed",
            completions=nodes,
            parallelism=nodes,
            backoff_limit=0,
            pod_failure_policy=k8s.V1PodFailurePolicy(rules=[
                k8s.V1PodFailurePolicyRule(
                    action="FailJob",
                    on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(
                        container_name="train", operator="NotIn", values=[0]),
                ),
            ]),
            active_deadline_seconds=settings.active_deadline_seconds,
            ttl_seconds_after_finished=settings.job_ttl_seconds,  # a backstop: the teardown deletes it first
            template=k8s.V1PodTemplateSpec(metadata=template.metadata, spec=template.spec),
        ),
    )


def headless_service(resolved: dict, run: Run, *, name: str) -> k8s.V1Service:
    """DNS names for the Job's pods (`<host>.<service>`), published before they are ready: pod 0
    must be resolvable while the others wait for it at the rendezvous."""
    settings = location_settings(resolved)
    labels = naming.labels(run.job, run.dag_id, run.run_id, "rendezvous")
    return k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=k8s.V1ObjectMeta(name=name, namespace=settings.namespace, labels=labels),
        spec=k8s.V1ServiceSpec(
            cluster_ip="None",
            publish_not_ready_addresses=True,
            selector={naming.LABEL_JOB: labels[naming.LABEL_JOB], naming.LABEL_RUN: labels[naming.LABEL_RUN],
                      naming.LABEL_COMPONENT: "train"},
            ports=[k8s.V1ServicePort(name="rendezvous", port=settings.rendezvous_port, target_port=settings.rendezvous_port)],
        ),
    )
