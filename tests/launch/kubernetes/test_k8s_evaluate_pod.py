"""The evaluate task's pod on a Kubernetes location (EvaluatePodOperator): built by the provider's own
`build_pod_request_obj` from the job folder as the task finds it after training, validated against the
Kubernetes schema. It runs `python -m airtune.evaluate` on the weights register will register, on the
GPU type the job trained on, with the same storage and secrets-by-reference as the train pod."""

from __future__ import annotations

import json

import kubernetes_validate
from kubernetes.client import ApiClient

from test_k8s_manifests import DAG_ID, JOBS, K8S_VERSION, RUN_ID, assert_locked_down, resolve


def test_the_evaluate_pod_scores_the_best_checkpoint_where_training_ran(tmp_path):
    from airtune.launch.kubernetes.evaluate import EvaluatePodOperator
    from airtune.launch.kubernetes.rendering import _context, _OfflineHook, _quiet

    base = resolve(JOBS["one-gpu"])
    storage = {**base["location"]["storage"], "workspace": {"claim": "airtune-workspace", "mount_path": str(tmp_path)}}
    resolved = resolve(JOBS["one-gpu"], storage=storage)  # the workers' workspace mount: this test's folder
    job_dir = tmp_path / "job"
    (job_dir / "output" / "checkpoint-20").mkdir(parents=True)
    (job_dir / "output" / "final").mkdir()
    (job_dir / "spec.json").write_text(json.dumps(resolved))
    (job_dir / "result.json").write_text(json.dumps({"final_dir": "output/final", "best_checkpoint": "output/checkpoint-20"}))
    job = {"name": "one-gpu", "job_dir": str(job_dir), "mlflow_run_id": None, "launcher": "kubernetes_pod"}

    op = _quiet(EvaluatePodOperator(task_id="evaluate_kubernetes", airtune_job=job))
    op.configure(resolved, job, dag_id=DAG_ID, run_id=RUN_ID, try_number=1)
    op.hook = _OfflineHook()
    pod = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(_context(DAG_ID, RUN_ID, "evaluate_kubernetes")))
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)

    spec = pod["spec"]
    [c] = spec["containers"]
    assert c["name"] == "evaluate" and op.base_container_name == "evaluate"
    cmd = c["command"]
    assert cmd[:3] == ["python", "-m", "airtune.evaluate"]
    assert cmd[cmd.index("--model") + 1] == str(job_dir / "output" / "checkpoint-20")  # what register registers
    assert cmd[cmd.index("--output") + 1].endswith("/evaluation") and "--champion" not in cmd  # promote never
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"  # on the GPUs the job trained on
    assert spec.get("nodeSelector")  # the GPU type's node labels, as the train pod
    assert "-eval-" in pod["metadata"]["name"] and pod["metadata"]["name"].endswith("-t1")
    assert_locked_down(spec)
