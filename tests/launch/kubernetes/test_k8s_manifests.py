"""The Kubernetes objects a job creates, built by the code the tasks run: the operators' own
`build_pod_request_obj` / `build_job_request_obj` of the cncf.kubernetes provider (through
`airtune.launch.kubernetes.render()`, which is also `airtune render`), for each kind of job on the
catalog's `k8s-example` location, resolved by `validate` as a run would resolve them.

Each object is validated against the Kubernetes 1.37 schema (`kubernetes-validate`, strict: unknown
fields are errors) and its key fields asserted. A schema check is not an API server: the rules a
schema cannot say are enforced by the API emulator (k8s_emulator.py) and tested at the end here.
No cluster is involved anywhere in these tests.
"""

from __future__ import annotations

import copy
import itertools
import re

import kubernetes_validate
import pytest

K8S_VERSION = "1.37.0"
DAG_ID = "airtune_finetune"
RUN_ID = "manual__2026-11-29T04:00:00+00:00"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

BASE = {"base_model": "qwen2.5-0.5b-instruct", "location": "k8s-example", "dataset": ["alpaca_en_demo"]}
JOBS = {
    "one-gpu": dict(name="one-gpu", gpu_type="nvidia-h100-80gb", gpus_per_node=1),
    "eight-gpus": dict(name="eight-gpus", gpu_type="nvidia-h100-80gb", gpus_per_node=8, cpu=32, memory_gib=256),
    "two-nodes": dict(name="two-nodes", gpu_type="nvidia-a100-80gb", gpus_per_node=8, nodes=2, cpu=32, memory_gib=256),
    "t4-qlora": dict(name="t4-qlora", gpu_type="nvidia-t4", gpus_per_node=1, quantization_bit="4", finetuning_method="lora"),
}


def resolve(job: dict, **location_changes) -> dict:
    from airtune.resolve import validate_mapping

    resolved = validate_mapping({**BASE, **job})
    resolved["location"] = {**copy.deepcopy(resolved["location"]), **location_changes}
    return resolved


def render(resolved: dict, run_id: str = RUN_ID) -> list[dict]:
    from airtune.launch.kubernetes import render as _render

    objects = _render(resolved, DAG_ID, run_id)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    return objects


def by_kind(objects: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for o in objects:
        out.setdefault(o["kind"], []).append(o)
    return out


def train_pod_spec(objects: list[dict]) -> dict:
    kinds = by_kind(objects)
    if "Job" in kinds:
        return kinds["Job"][0]["spec"]["template"]["spec"]
    return kinds["Pod"][1]["spec"]  # [0] is the prepare pod


def assert_locked_down(spec: dict) -> None:
    """The restrictive security context the issue asks for, on the pod and on its container."""
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 1000 and psc["runAsGroup"] == 1000
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    [c] = spec["containers"]
    csc = c["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False and csc["privileged"] is False and csc["runAsNonRoot"] is True
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec.get("hostNetwork") in (None, False)


def assert_secrets_by_reference(spec: dict, *, role: str) -> None:
    """Secrets reach the pod only as secretKeyRef / envFrom: no value is in the object at all."""
    [c] = spec["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": True}}}
    for e in c["env"]:
        if re.search(r"TOKEN|PASSWORD|SECRET|KEY", e["name"]) and e["name"] != "TOKENIZERS_PARALLELISM":
            assert "value" not in e, e
    if role == "train":
        assert c["envFrom"] == [{"secretRef": {"name": "mlflow-credentials"}}]
    else:  # the location gives mlflow-credentials to the train role only
        assert "envFrom" not in c


def assert_storage(spec: dict, memory_gib: int) -> None:
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{memory_gib // 2}Gi"}}
    assert vols["workspace"]["persistentVolumeClaim"] == {"claimName": "airtune-workspace"}
    assert vols["models"]["persistentVolumeClaim"] == {"claimName": "airtune-models"}
    assert vols["datasets"]["persistentVolumeClaim"] == {"claimName": "airtune-datasets", "readOnly": True}
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["/dev/shm"]["name"] == "dshm" and mounts["/workspace"]["name"] == "workspace"
    assert mounts["/datasets"]["readOnly"] is True


@pytest.mark.parametrize("key", JOBS)
def test_objects_validate_and_carry_the_key_fields(key):
    job = JOBS[key]
    resolved = resolve(job)
    objects = render(resolved)
    kinds = by_kind(objects)
    nodes, gpus = job.get("nodes", 1), job["gpus_per_node"]
    cpu, memory = job.get("cpu", resolved["spec"]["cpu"]), job.get("memory_gib", resolved["spec"]["memory_gib"])
    assert sorted(kinds) == (["Job", "Pod", "Service"] if nodes > 1 else ["Pod"])
    assert len(kinds["Pod"]) == (1 if nodes > 1 else 2)

    spec = train_pod_spec(objects)
    [c] = spec["containers"]
    # GPUs, CPU and memory: requests = limits (Guaranteed QoS; the GPU is an extended resource)
    amounts = {"cpu": str(cpu), "memory": f"{memory}Gi", "nvidia.com/gpu": str(gpus)}
    assert c["resources"] == {"limits": amounts, "requests": amounts}
    # the GPU type's node label, the location's tolerations
    gpu_label = {"nvidia-h100-80gb": "NVIDIA-H100-80GB-HBM3", "nvidia-a100-80gb": "NVIDIA-A100-SXM4-80GB", "nvidia-t4": "Tesla-T4"}
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": gpu_label[job["gpu_type"]]}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["activeDeadlineSeconds"] == 604800 and spec["terminationGracePeriodSeconds"] == 60
    assert spec["serviceAccountName"] == "airtune-train" and spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["image"] == "registry.example.com/airtune/train:0.1.0"
    assert_locked_down(spec)
    assert_secrets_by_reference(spec, role="train")
    assert_storage(spec, memory)

    # the command: THE training command, through torchrun when there is more than one process
    job_dir = f"/workspace/jobs/{job['name']}/manual__2026-11-29T04_00_00_00_00"
    program = ["-m", "airtune.train", "--spec", f"{job_dir}/spec.json", "--data", f"{job_dir}/data", "--output", f"{job_dir}/output"]
    assert c["command"][-len(program):] == program and c["workingDir"] == job_dir
    launcher = c["command"][: -len(program)]
    if nodes == 1 and gpus == 1:
        assert launcher == ["python"]
    elif nodes == 1:
        assert launcher == ["python", "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", "--nnodes=1", "--standalone"]
    else:
        job_obj, service = kinds["Job"][0], kinds["Service"][0]
        name, svc = job_obj["metadata"]["name"], service["metadata"]["name"]
        assert launcher == ["python", "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", f"--nnodes={nodes}",
                            "--node_rank=$(JOB_COMPLETION_INDEX)", f"--master_addr={name}-0.{svc}", "--master_port=29500"]
    env = {e["name"]: e for e in c["env"]}
    assert env["AIRTUNE_WORKSPACE"]["value"] == "/workspace" and env["HF_HOME"]["value"] == "/models/hf-home"

    # labels: the job, the run, the DAG; the provider's own (dag_id, task_id, run_id, try_number)
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["airtune.io/job"] == job["name"] and labels["airtune.io/dag-id"] == DAG_ID
        assert labels["app.kubernetes.io/managed-by"] == "airtune" and re.fullmatch(r"[0-9a-f]{6}", labels["airtune.io/run"])
    train_meta = kinds["Job"][0]["spec"]["template"]["metadata"] if nodes > 1 else kinds["Pod"][1]["metadata"]
    assert train_meta["labels"]["dag_id"] == DAG_ID and train_meta["labels"]["try_number"] == "1"
    assert train_meta["labels"]["task_id"] == ("train_kubernetes_job.train" if nodes > 1 else "train_kubernetes_pod")
    assert train_meta["annotations"]["airtune.io/run-id"] == RUN_ID  # labels cannot hold ':' and '+'

    # the prepare pod: the same image, CPU only, no GPU node, no GPU tolerations
    prep = kinds["Pod"][0]
    pc = prep["spec"]["containers"][0]
    assert prep["metadata"]["labels"]["app.kubernetes.io/component"] == "prepare"
    assert pc["image"] == c["image"] and pc["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}
    assert "nodeSelector" not in prep["spec"] and "tolerations" not in prep["spec"]
    assert pc["command"][:4] == ["python", "-m", "airtune.launch.kubernetes.in_pod", "prepare"]
    assert_locked_down(prep["spec"])
    assert_secrets_by_reference(prep["spec"], role="prepare")


def test_the_indexed_job_and_its_headless_service():
    objects = render(resolve(JOBS["two-nodes"]))
    kinds = by_kind(objects)
    job, service = kinds["Job"][0], kinds["Service"][0]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == ("Indexed", 2, 2, 0)
    assert spec["podFailurePolicy"] == {"rules": [{"action": "FailJob", "onExitCodes": {
        "containerName": "train", "operator": "NotIn", "values": [0]}}]}
    assert spec["activeDeadlineSeconds"] == 604800 and spec["ttlSecondsAfterFinished"] == 86400
    tspec = spec["template"]["spec"]
    assert tspec["restartPolicy"] == "Never" and tspec["subdomain"] == service["metadata"]["name"]
    env = {e["name"]: e for e in tspec["containers"][0]["env"]}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert tspec["containers"][0]["ports"] == [{"name": "rendezvous", "containerPort": 29500}]
    # the Service: headless, published before the pods are ready, selecting exactly this run's train pods
    s = service["spec"]
    assert s["clusterIP"] == "None" and s["publishNotReadyAddresses"] is True
    assert s["ports"] == [{"name": "rendezvous", "port": 29500, "targetPort": 29500}]
    template_labels = spec["template"]["metadata"]["labels"]
    assert s["selector"] and all(template_labels[k] == v for k, v in s["selector"].items())
    assert s["selector"]["app.kubernetes.io/component"] == "train"
    # host names `<job>-<index>` stay 63-character DNS labels
    assert len(f"{job['metadata']['name']}-1") <= 63 and DNS_1035.match(service["metadata"]["name"])


def test_kueue_queue_and_env_from_secrets():
    """With a Kueue LocalQueue: the one-machine pod and the multi-machine Job carry the queue label
    (a Job's pods are admitted through their Job, so its template does not)."""
    pod_objects = render(resolve(JOBS["one-gpu"], kueue_queue="gpu-queue"))
    job_objects = render(resolve(JOBS["two-nodes"], kueue_queue="gpu-queue"))
    label = "kueue.x-k8s.io/queue-name"
    assert by_kind(pod_objects)["Pod"][1]["metadata"]["labels"][label] == "gpu-queue"
    job = by_kind(job_objects)["Job"][0]
    assert job["metadata"]["labels"][label] == "gpu-queue"
    assert label not in job["spec"]["template"]["metadata"]["labels"]
    assert label not in by_kind(job_objects)["Service"][0]["metadata"]["labels"]


def test_the_validator_rejects_what_the_api_would():
    """The schema check above can fail: a misspelt field and a wrong type are errors."""
    pod = by_kind(render(resolve(JOBS["one-gpu"])))["Pod"][1]
    typo = copy.deepcopy(pod)
    typo["spec"]["containers"][0]["resource"] = typo["spec"]["containers"][0].pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)
    wrong = copy.deepcopy(pod)
    wrong["spec"]["activeDeadlineSeconds"] = "a week"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, K8S_VERSION, strict=True)


def test_a_local_job_creates_no_kubernetes_objects():
    from airtune.launch.kubernetes import render as _render
    from airtune.resolve import validate_mapping

    resolved = validate_mapping({"name": "here", "base_model": "tiny-llama-dev", "dataset": ["alpaca_en_demo"]})
    assert _render(resolved, DAG_ID, RUN_ID) == []


def test_a_location_missing_a_required_setting_is_named():
    from airtune.launch.kubernetes.manifests import SettingsError

    resolved = resolve(JOBS["one-gpu"])
    del resolved["location"]["storage"]["workspace"]
    with pytest.raises(SettingsError, match=r"k8s-example: storage.workspace is required"):
        render(resolved)
    resolved = resolve(JOBS["one-gpu"], image=None)
    with pytest.raises(SettingsError, match=r"k8s-example: `image` is required"):
        render(resolved)


# --- names -----------------------------------------------------------------------------------------

NAMES = [
    "a", "0", "demo", "x" * 63, "a" * 62 + "b", "a" * 62 + "c", "q" * 40 + "-" + "7" * 22, "7" * 63,
    "sft-qwen2-5-7b-instruct-alpaca-zh-lora-rank-64-alpha-128-v20261129",  # 66: longer than the spec allows
    "Upper_Case.and spaces", "模型微调", "-leading-and-trailing-", "a--b", "job-demo",
]
RUN_IDS = [RUN_ID, "scheduled__2026-11-29T00:00:00+00:00", "manual__2026-11-29T04:00:00.123456+00:00", "x" * 250]


def test_every_name_is_valid_and_unique_per_run_and_try():
    from airtune.launch.kubernetes import naming

    seen: dict[str, tuple] = {}
    for job, run_id, try_number in itertools.product(NAMES, RUN_IDS, (1, 2, 10)):
        for nodes in (2, 16):
            jname = naming.job_name(job, DAG_ID, run_id, try_number, nodes)
            assert len(f"{jname}-{nodes - 1}") <= 63 and DNS_LABEL.match(f"{jname}-{nodes - 1}"), jname
            assert jname.startswith(naming.JOB_NAME_PREFIX)
        names = {
            "train": naming.pod_name(job, DAG_ID, run_id, "train", try_number),
            "prepare": naming.pod_name(job, DAG_ID, run_id, "prepare", try_number),
            "job": naming.job_name(job, DAG_ID, run_id, try_number, 16),
        }
        if try_number == 1:
            names["service"] = naming.service_name(job, DAG_ID, run_id)
            assert DNS_1035.match(names["service"]) and len(names["service"]) <= 63, names["service"]
        for kind, name in names.items():
            assert len(name) <= 63 and DNS_LABEL.match(name), (kind, job, name)
            key = (kind, job, run_id, try_number)
            assert seen.setdefault(name, key) == key, f"{name} names both {seen[name]} and {key}"
        for value in naming.labels(job, DAG_ID, run_id, "train").values():
            assert len(value) <= 63 and re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", value), value


def test_the_run_key_tells_runs_apart_and_is_stable_across_tries():
    from airtune.launch.kubernetes import naming

    keys = {naming.run_key(DAG_ID, r) for r in RUN_IDS}
    assert len(keys) == len(RUN_IDS)
    assert naming.run_key(DAG_ID, RUN_ID) == naming.run_key(DAG_ID, RUN_ID)
    assert naming.run_key("retrain_demo", RUN_ID) != naming.run_key(DAG_ID, RUN_ID)  # same run id, other DAG
    sel = naming.run_selector("demo", DAG_ID, RUN_ID)
    assert sel == f"airtune.io/job=demo,airtune.io/run={naming.run_key(DAG_ID, RUN_ID)}"


# --- what the API emulator enforces beyond the schema ---------------------------------------------

@pytest.fixture
def emulator(tmp_path):
    from k8s_emulator import Emulator

    emu = Emulator(tmp_path / "emu").start()
    yield emu
    emu.stop()


def _api(emu):
    from kubernetes import client, config

    api_client = config.new_client_from_config(str(emu.kubeconfig))
    return client.BatchV1Api(api_client), client.CoreV1Api(api_client)


def _job_object(name: str = "job-two-nodes-139212-t1") -> dict:
    [job] = by_kind(render(resolve(JOBS["two-nodes"])))["Job"]
    job = copy.deepcopy(job)
    job["metadata"]["name"] = name
    job["metadata"].pop("namespace")
    return job


def test_the_emulator_accepts_the_rendered_job(emulator):
    batch, _ = _api(emulator)
    created = batch.create_namespaced_job("airtune", _job_object())
    assert created.spec.completion_mode == "Indexed"


def test_the_emulator_refuses_a_pod_failure_policy_without_restart_policy_never(emulator):
    """Valid against the schema, refused by the API server: podFailurePolicy needs restartPolicy Never."""
    from kubernetes.client.exceptions import ApiException

    job = _job_object()
    job["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)  # the schema cannot tell
    batch, _ = _api(emulator)
    with pytest.raises(ApiException) as err:
        batch.create_namespaced_job("airtune", job)
    assert err.value.status == 422 and "podFailurePolicy: only allowed when spec.template.spec.restartPolicy is Never" in err.value.body


def test_the_emulator_refuses_an_indexed_job_whose_pod_host_names_would_be_too_long(emulator):
    """A 62-character Job name is a valid name, but `<name>-1` (its pod's host name) is 64 characters."""
    from kubernetes.client.exceptions import ApiException

    job = _job_object("j" * 62)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    batch, _ = _api(emulator)
    with pytest.raises(ApiException) as err:
        batch.create_namespaced_job("airtune", job)
    assert err.value.status == 422 and "a Job's name plus -<index> must fit 63" in err.value.body
    batch.create_namespaced_job("airtune", _job_object("j" * 61))  # 61 + "-1" = 63: accepted


def test_the_emulator_refuses_gpu_requests_below_limits(emulator):
    from kubernetes.client.exceptions import ApiException

    pod = copy.deepcopy(by_kind(render(resolve(JOBS["one-gpu"])))["Pod"][1])
    pod["metadata"].pop("namespace")
    pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "0"
    _, core = _api(emulator)
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("airtune", pod)
    assert err.value.status == 422 and "must be equal to the limit" in err.value.body
