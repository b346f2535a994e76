"""A forced delete racing a running `airtune run` of the same job ends with no job left: the CLI sees
its run deleted, stops it before `dag.test()` writes the DAG run back, and exits non-zero saying so.
Before, the CLI printed success and its DAG run came back (a ghost job in Airflow and `airtune list`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from .conftest import airtune_env
from .test_run_signals import _alive, _trainer_pids

pytestmark = pytest.mark.slow


def test_a_forced_delete_while_airtune_run_trains_leaves_no_job(tmp_path, airtune_home):
    name = "raced"
    job = {"name": name, "base_model": "tiny-llama-dev", "dataset": ["alpaca_en_demo"], "finetuning_method": "lora",
           "stage": "sft", "num_train_epochs": 50, "per_device_train_batch_size": 2, "logging_steps": 1, "cutoff_len": 128}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    env = airtune_env(airtune_home)
    out_file = tmp_path / "out.txt"
    with open(out_file, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "airtune.cli", "run", str(path)], env=env, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # train_local is under way: its first step is logged
            logs = list((airtune_home / "logs").glob(f"run-{name}-*.log"))
            if logs and "[airtune] step " in logs[0].read_text(errors="replace") and _trainer_pids(airtune_home, name):
                break
            assert proc.poll() is None, out_file.read_text()
            time.sleep(0.5)
        else:
            pytest.fail("training never started:\n" + out_file.read_text())
        trainers = _trainer_pids(airtune_home, name)

        started = time.monotonic()
        deleted = subprocess.run([sys.executable, "-m", "airtune.cli", "delete", name, "--force", "--yes"], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
        assert "cancelled DAG run airtune_finetune" in deleted.stdout, deleted.stdout
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("airtune run was still running 60 s after its job was deleted:\n" + out_file.read_text())
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = out_file.read_text()
    assert proc.returncode != 0, output
    assert took < 90, took
    assert f"job {name} was deleted while it ran" in output, output
    assert "airtune job finished" not in output and ": success" not in output, output
    assert "Traceback" not in output, output
    for pid in trainers:
        assert not _alive(pid), pid

    # no trace of the job anywhere
    listed = subprocess.run([sys.executable, "-m", "airtune.cli", "list", "--json"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert name not in [j["name"] for j in json.loads(listed.stdout)], listed.stdout
    shown = subprocess.run([sys.executable, "-m", "airtune.cli", "status", name], env=env, capture_output=True, text=True)
    assert shown.returncode == 1 and f"no job named {name!r}" in shown.stdout, shown.stdout + shown.stderr
    workspace = airtune_home / "workspace"
    assert not (workspace / "jobs" / name).exists()
    assert not [p for p in workspace.rglob("*") if name in p.name], list(workspace.rglob("*"))
    assert not (workspace / ".deleted").exists(), list((workspace / ".deleted").iterdir())  # the tombstone is gone too
    check = f"""
import json
from airtune import localstack, tracking; localstack.apply()
from airflow import settings; settings.configure_orm()
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from mlflow.entities import ViewType
s = settings.Session()
c = tracking.client()
print(json.dumps({{
    "dag_runs": [[dr.dag_id, dr.run_id, str(dr.state)] for dr in s.query(DagRun).all()],
    "task_instances": s.query(TaskInstance).count(),
    "experiments": [e.name for e in c.search_experiments(view_type=ViewType.ALL) if {name!r} in e.name],
    "models": [m.name for m in c.search_registered_models()],
}}))
"""
    got = json.loads(subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    assert got == {"dag_runs": [], "task_instances": 0, "experiments": [], "models": []}, got
