"""Fixtures for the Kubernetes launcher's tests: the API emulator (k8s_emulator.py, not a cluster),
a Kubernetes location pointing at it, job folders, and `run_task`, which runs an operator the way
Airflow's task runner and triggerer do (execute; on TaskDeferred, the trigger goes through its
serialize() round trip and runs until its first event; a fresh operator resumes with the event).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import socket
import stat
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
NS = "airtune-test"
CONN_ID = "k8s_emulator"
FAKE_IMAGE = "airtune-train:fake"
REAL_IMAGE = "airtune-train:this-venv"
DAG_ID = "airtune_finetune"
RUN_ID = "manual__2026-11-29T04:00:00+00:00"

sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session", autouse=True)
def _airflow_home(tmp_path_factory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow-home")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_dirs(root: Path) -> dict[str, dict]:
    """Two images for the emulator. `fake`: `python -m airtune.train|torch.distributed.run|...in_pod`
    runs fake_trainer.py. `this-venv`: `python` is this virtualenv's, so the real trainer runs."""
    fake = root / "images" / "fake" / "bin"
    fake.mkdir(parents=True)
    script = fake / "python"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in\n'
        f'  "-m airtune.train"|"-m torch.distributed.run"|"-m airtune.launch.kubernetes.in_pod") exec {sys.executable} {HERE / "fake_trainer.py"} "$@";;\n'
        "esac\n"
        f'exec {sys.executable} "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    real = root / "images" / "real" / "bin"
    real.mkdir(parents=True)
    for name, target in (("python", sys.executable), ("torchrun", Path(sys.executable).with_name("torchrun"))):
        # a wrapper, not a symlink: a symlinked interpreter outside the venv does not find pyvenv.cfg
        (real / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (real / name).chmod(0o755)
    common = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
              "AIRTUNE_CONFIG_DIR": str(REPO / "configs")}
    return {FAKE_IMAGE: {"path": [str(fake)], "env": common}, REAL_IMAGE: {"path": [str(real)], "env": common}}


class FakeTI:
    """The task instance as the operators see it in their context."""

    def __init__(self, dag_id: str, task_id: str, try_number: int):
        self.dag_id, self.task_id, self.try_number, self.map_index = dag_id, task_id, try_number, -1
        self.start_date = datetime.now(UTC)
        self.xcom: dict = {}

    def xcom_push(self, key, value, **_):
        self.xcom[key] = value


class Cluster:
    def __init__(self, emu, workspace: Path, location: dict):
        self.emu, self.workspace, self.location = emu, workspace, location

    def resolved(self, name: str, *, nodes: int = 1, gpus: int = 0, gpu_type: str = "cpu", **spec) -> dict:
        return {
            "airtune_version": "0.1.0",
            "spec": {"name": name, "location": self.location["name"], "gpu_type": gpu_type, "gpus_per_node": gpus,
                     "nodes": nodes, "cpu": 2, "memory_gib": 4, **spec},
            "model": {"name": "tiny-llama-dev", "weights": "/models/tiny"},
            "template": {"name": "chatml", "path": str(REPO / "configs" / "templates" / "chatml.jinja")},
            "datasets": [],
            "location": self.location,
            "runtime": {"nodes": nodes, "gpus_per_node": gpus, "world_size": nodes * max(gpus, 1),
                        "device": "cuda" if gpus else "cpu"},
            "tracking": {"mlflow_run_id": "mlflow-run-1", "dag_id": DAG_ID, "run_id": RUN_ID},
            "warnings": [],
        }

    def job(self, name: str = "demo", *, fake: dict | None = None, resolved: dict | None = None, **kwargs) -> dict:
        """A job folder as validate leaves it (spec.json), and the XCom the tasks pass along."""
        from airtune.names import safe_path_component

        job_dir = self.workspace / "jobs" / name / safe_path_component(RUN_ID)  # as paths.job_dir names it
        job_dir.mkdir(parents=True, exist_ok=True)
        resolved = resolved or self.resolved(name, **kwargs)
        (job_dir / "spec.json").write_text(json.dumps(resolved))
        if fake is not None:
            (job_dir / "fake.json").write_text(json.dumps(fake))
        return {"name": name, "job_dir": str(job_dir), "mlflow_run_id": "mlflow-run-1",
                "launcher": "kubernetes_job" if resolved["runtime"]["nodes"] > 1 else "kubernetes_pod",
                "data_dir": str(job_dir / "data")}

    def pods(self, **selector) -> list[dict]:
        sel = ",".join(f"{k}={v}" for k, v in selector.items()) or None
        return self.emu.list("pods", NS, sel)

    def run_task(self, make_op, *, try_number: int = 1, run_id: str = RUN_ID, on_defer=None, on_trigger_task=None):
        """Run an operator as Airflow would: execute(); when it defers, serialize the trigger, make it
        again from its classpath (what the triggerer does), run it to its first event, then resume a
        fresh operator (made again from the DAG, as on a worker) with the event."""
        from airflow.sdk._shared.module_loading import import_string
        from airflow.sdk.bases.operator import ExecutorSafeguard
        from airflow.sdk.exceptions import TaskDeferred

        op = make_op()
        ti = FakeTI(DAG_ID, op.task_id, try_number)
        context = {"ti": ti, "task_instance": ti, "run_id": run_id, "dag": SimpleNamespace(dag_id=DAG_ID), "task": op}
        call = lambda: op.execute(context)  # noqa: E731
        while True:
            try:
                ctx = contextvars.copy_context()  # as the task runner does: execute() is allowed here
                ctx.run(ExecutorSafeguard.tracker.set, op)
                return ctx.run(call)
            except TaskDeferred as deferred:
                classpath, kwargs = deferred.trigger.serialize()
                trigger = import_string(classpath)(**kwargs)
                if on_defer is not None and on_defer(op, trigger) == "stop":
                    return "stopped"
                event = asyncio.run(_first_event(trigger, on_trigger_task))
                if event is None:
                    return "cancelled"
                op = make_op()
                context["task"] = op
                method = getattr(op, deferred.method_name)
                call = lambda m=method, e=event.payload, kw=deferred.kwargs or {}: m(context, event=e, **kw)  # noqa: E731

    def wait_no_pods(self, timeout: float = 30) -> None:
        self.emu.wait(lambda: not self.pods(), timeout, "every pod to be gone")

    def created(self, resource: str = "pods") -> list[dict]:
        """Every object of a kind as the API received it (first version), in order."""
        return [o for _, t, r, _, o in self.emu.changes if t == "ADDED" and r == resource]


async def _first_event(trigger, on_trigger_task):
    async def first():
        async for event in trigger.run():
            return event
        return None

    task = asyncio.ensure_future(first())
    if on_trigger_task is not None:
        await on_trigger_task(trigger, task)
    try:
        return await task
    except asyncio.CancelledError:
        return None


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """The emulator with a namespace's worth of objects a real cluster would have: the workspace
    claim, the hf-token Secret; and a location of kind kubernetes pointing at it."""
    from k8s_emulator import Emulator

    emu = Emulator(tmp_path / "emulator", images=image_dirs(tmp_path)).start()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    for k, v in emu.connection_uri_env(CONN_ID).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(workspace))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    emu.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "airtune-workspace"},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}, NS)
    emu.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token"}, "stringData": {"token": "hf_secret_value"}}, NS)
    location = {
        "name": "emulated", "kind": "kubernetes", "connection_id": CONN_ID, "namespace": NS, "image": FAKE_IMAGE,
        "service_account": "airtune-train", "image_pull_secrets": [],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "gpu_types": {"cpu": {"gpus_per_node": 0, "memory_gib": 0, "bf16": False},
                      "nvidia-t4": {"node_selector": {"nvidia.com/gpu.product": "Tesla-T4"}, "gpus_per_node": 4, "memory_gib": 16, "bf16": False}},
        "storage": {"workspace": {"claim": "airtune-workspace", "mount_path": str(workspace)}},
        "secrets": [{"name": "hf-token", "env": "HF_TOKEN", "key": "token"}],
        "mlflow_tracking_uri": "http://mlflow.invalid:5000",
        "termination_grace_seconds": 5, "schedule_timeout_seconds": 20, "startup_timeout_seconds": 20,
        "poll_interval_seconds": 0.3, "rendezvous_port": free_port(), "active_deadline_seconds": 600,
    }
    c = Cluster(emu, workspace, location)
    yield c
    emu.stop()
    assert not emu.running_processes()


@pytest.fixture
def run_in_thread():
    """Run a callable in a thread; the test gets (thread, result holder)."""
    threads = []

    def start(fn, *args, **kwargs):
        box = {}

        def target():
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                box["error"] = exc

        t = threading.Thread(target=target, daemon=True)
        t.start()
        threads.append(t)
        return t, box

    yield start
    for t in threads:
        t.join(timeout=60)
