"""The real programs in the emulator's pods: the prepare pod runs `airtune.launch.kubernetes.in_pod`
(the real data preparation), then an indexed Job of 2 pods runs THE training command through
`torchrun` on each (`python -m airtune.train`, the tiny model, 2 CPU processes meeting over gloo at
pod 0's address), driven by the real TrainJobOperator and the provider's trigger.

The emulator is not a cluster (k8s_emulator.py): the "pods" are processes on this machine, the image
is this virtualenv (`airtune-train:this-venv`), and `<job>-0.<service>` is resolved to 127.0.0.1 by
the emulator only when the headless Service selects pod 0; real cluster DNS, two machines and NCCL
over a network are not exercised.

The resolver refuses CPU-only jobs on a Kubernetes location (a cluster trains on GPUs), so the job
is resolved for `local` on the CPU and then moved to the emulated location with nodes = 2: exactly
the spec a two-machine run gets, less the GPUs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DAG_ID, NS, REAL_IMAGE, RUN_ID

pytestmark = pytest.mark.slow


def two_machine_spec(cluster, tiny_model_dir: Path) -> dict:
    from airtune.resolve import validate_mapping

    resolved = validate_mapping({
        "name": "multi-real", "base_model": "tiny-llama-dev", "dataset": ["identity"], "cutoff_len": 128,
        "num_train_epochs": 1, "per_device_train_batch_size": 2, "save_steps": 4, "logging_steps": 2,
        "val_size": 0, "learning_rate": 5e-3, "cpu": 2, "memory_gib": 4,
    })
    resolved["model"]["weights"] = str(tiny_model_dir)
    resolved["location"] = {**cluster.location, "image": REAL_IMAGE}
    resolved["location"].pop("mlflow_tracking_uri")  # no MLflow server in this test: nothing is sent
    resolved["spec"].update(location="emulated", nodes=2)
    resolved["runtime"].update(nodes=2, world_size=2, processes_per_node=1, gpus_per_node=0, device="cpu")
    resolved["tracking"] = {"dag_id": DAG_ID, "run_id": RUN_ID}
    return resolved


def test_two_indexed_pods_train_the_tiny_model_over_gloo(cluster, tiny_model_dir, capsys):
    from airtune.launch import kubernetes
    from airtune.launch.kubernetes.operators import TASK_JOB, TrainJobOperator

    resolved = two_machine_spec(cluster, tiny_model_dir)
    job = cluster.job("multi-real", resolved=resolved)
    job.pop("mlflow_run_id")

    manifest = kubernetes.prepare_in_cluster(job, resolved, echo=print)  # the real prepare, in a pod
    assert manifest["rows"]["train"] > 8 and (Path(job["job_dir"]) / "data" / "train").is_dir()

    kubernetes.create_service(job, resolved)
    cluster.run_task(lambda: TrainJobOperator(task_id=TASK_JOB, airtune_job=job))
    out = capsys.readouterr().out

    result = json.loads((Path(job["job_dir"]) / "result.json").read_text())
    rows = manifest["rows"]["train"]
    assert result["global_step"] == -(-rows // (2 * 2))  # one epoch, global batch 2 pods x 2 rows
    assert (Path(job["job_dir"]) / result["final_dir"] / "adapter_model.safetensors").is_file()  # relative to the job folder
    assert result["train_loss_last"] < result["train_loss_first"]
    # both pods ran torchrun with their own node rank, one world of 2 processes on gloo
    pods = sorted(cluster.created("pods")[1:], key=lambda p: p["metadata"]["name"])  # [0]: the prepare pod
    assert [p["spec"]["hostname"] for p in pods] == [f"{cluster.created('jobs')[0]['metadata']['name']}-{i}" for i in (0, 1)]
    for index, p in enumerate(pods):
        argv = cluster.emu.procs[(NS, p["metadata"]["name"])]["argv"]
        assert f"--node_rank={index}" in argv and "--nnodes=2" in argv and "--master_addr=127.0.0.1" in argv
    logs = [cluster.emu.log_text(NS, p["metadata"]["name"]) for p in pods]
    # one world of 2 processes: half the steps one process would take (asserted above), DDP's rank
    # marker in pod 0's log, progress from rank 0 alone; on the CPU, torch's process group is gloo
    assert "[rank0]" in logs[0] and f"[airtune] step {result['global_step']}/{result['global_step']}" in logs[0]
    assert "[airtune] step" not in logs[1] and "Loading weights" in logs[1], logs[1][-2000:]
    import torch.distributed as dist

    assert dist.Backend.default_device_backend_map["cpu"] == "gloo"
    assert "[airtune] done:" in out  # the pods' logs reached the task log

    done = kubernetes.cleanup_run_objects(job, resolved)
    assert any(line.startswith("deleted job") for line in done)
    cluster.wait_no_pods()
    assert cluster.emu.list("jobs", NS) == [] and cluster.emu.list("services", NS) == []
