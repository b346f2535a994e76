"""Which training processes `airtune delete --force` stops: local process groups always, Kubernetes
objects through the Kubernetes launcher's clean-up only when the job ran (or may have run) there."""

from __future__ import annotations

import json
import sys
import types

import pytest

from airtune import jobs


@pytest.fixture
def k8s_calls(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    calls = []
    fake = types.ModuleType("airtune.launch.kubernetes")
    fake.cleanup_job_objects = lambda name: calls.append(name) or [f"deleted pod {name}-train-0"]
    monkeypatch.setitem(sys.modules, "airtune.launch.kubernetes", fake)
    # `from airtune.launch import kubernetes` reads the package's attribute first, set once the real
    # module has been imported (the DAG file imports it): replace that too.
    import airtune.launch

    monkeypatch.setattr(airtune.launch, "kubernetes", fake, raising=False)
    return calls


def job_with_location(tmp_path, name: str, location: str) -> None:
    folder = tmp_path / "workspace" / "jobs" / name / "manual__1"
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"location": {"name": location, "kind": "local" if location == "local" else "kubernetes"}}))


def test_a_kubernetes_job_has_its_objects_cleaned_up(tmp_path, k8s_calls):
    job_with_location(tmp_path, "gpu-job", "k8s-example")
    assert jobs._stop_processes("gpu-job", set()) == ["kubernetes: deleted pod gpu-job-train-0"]
    assert k8s_calls == ["gpu-job"]


def test_a_local_job_does_not_ask_the_cluster(tmp_path, k8s_calls):
    job_with_location(tmp_path, "cpu-job", "local")
    assert jobs._stop_processes("cpu-job", {"local"}) == []
    assert jobs._stop_processes("no-trace-at-all", set()) == []
    assert k8s_calls == []
    # an Airflow run whose conf names a Kubernetes location is enough
    jobs._stop_processes("cpu-job", {"k8s-example"})
    assert k8s_calls == ["cpu-job"]
