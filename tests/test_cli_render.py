"""`airtune render FILE.yaml`: the real CLI (a subprocess), compared with what the operators build.

The objects are those the operators submit: `airtune.launch.kubernetes.render` builds them through
the provider's own `build_pod_request_obj` / `build_job_request_obj`, and the lifecycle tests
(tests/launch/kubernetes, against an API emulator, not a cluster) check that what the operator
submitted equals what render prints.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[1]
AIRTUNE = [sys.executable, "-m", "airtune.cli"]


def job_file(tmp_path: Path, **fields) -> Path:
    job = {"name": "render-me", "base_model": "qwen2.5-0.5b-instruct", "location": "k8s-example",
           "gpu_type": "nvidia-h100-80gb", "dataset": ["alpaca_en_demo"], **fields}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def render_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*AIRTUNE, "render", *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_render_prints_the_objects_the_operators_build(tmp_path):
    from airtune.launch.kubernetes import render
    from airtune.resolve import validate_mapping

    path = job_file(tmp_path, nodes=2, gpus_per_node=8)
    proc = render_cli(str(path), "--run-id", "manual__2026-11-29T04:00:00+00:00")
    assert proc.returncode == 0, proc.stderr
    printed = list(yaml.safe_load_all(proc.stdout))
    assert [o["kind"] for o in printed] == ["Pod", "Service", "Job"]
    for obj in printed:
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
    expected = render(validate_mapping(yaml.safe_load(path.read_text())), "airtune_finetune", "manual__2026-11-29T04:00:00+00:00")
    assert printed == expected
    assert printed[2]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_render_of_a_one_machine_job_and_of_a_local_job(tmp_path):
    proc = render_cli(str(job_file(tmp_path, gpus_per_node=1)))
    assert proc.returncode == 0, proc.stderr
    pods = list(yaml.safe_load_all(proc.stdout))
    assert [(p["kind"], p["metadata"]["labels"]["app.kubernetes.io/component"]) for p in pods] == [("Pod", "prepare"), ("Pod", "train")]
    assert pods[1]["metadata"]["labels"]["run_id"].startswith("manual__render")  # the default --run-id
    local = render_cli(str(REPO / "examples" / "demo.yaml"))
    assert local.returncode == 0 and local.stdout == ""
    assert "location local (kind local): it creates no Kubernetes objects" in local.stderr


def test_render_of_an_invalid_job_names_the_field(tmp_path):
    proc = render_cli(str(job_file(tmp_path, nodes=0)))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "nodes" in proc.stderr
