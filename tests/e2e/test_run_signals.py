"""Ctrl-C, SIGTERM and SIGHUP stop `airtune run`: the CLI and its trainer are gone within 10 s, the
DAG run is failed (not success, not left running) and the MLflow run is FAILED."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from .conftest import airtune_env

pytestmark = pytest.mark.slow


def _trainer_pids(home, job_name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "--", f"-m airtune[.]train --spec {home}/workspace/jobs/{job_name}/"],
                         capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> str | None:
    """The command line of a live (not zombie) process, else None."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
        cmdline = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        return None
    return None if stat.rsplit(")", 1)[1].split()[0] == "Z" else f"{stat[:60]} {cmdline}"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_run_and_what_it_started(tmp_path, airtune_home, signum):
    name = f"sig-{signal.Signals(signum).name.lower()}"
    job = {"name": name, "base_model": "tiny-llama-dev", "dataset": ["alpaca_en_demo"], "finetuning_method": "lora",
           "stage": "sft", "num_train_epochs": 50, "per_device_train_batch_size": 2, "logging_steps": 1, "cutoff_len": 128}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    env = airtune_env(airtune_home)
    out_file = tmp_path / "out.txt"
    with open(out_file, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "airtune.cli", "run", str(path)], env=env, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until training is under way: its first step is logged
        logs = list((airtune_home / "logs").glob(f"run-{name}-*.log"))
        if logs and "[airtune] step " in logs[0].read_text(errors="replace") and _trainer_pids(airtune_home, name):
            break
        assert proc.poll() is None, out_file.read_text()
        time.sleep(0.5)
    else:
        proc.kill()
        subprocess.run(["pkill", "-f", f"{airtune_home}/workspace/jobs/"])
        pytest.fail("training never started:\n" + out_file.read_text())
    time.sleep(2)
    trainers = _trainer_pids(airtune_home, name)
    assert trainers
    proc.send_signal(signum)
    started = time.monotonic()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        subprocess.run(["pkill", "-f", f"{airtune_home}/workspace/jobs/"])
        pytest.fail("airtune run was still running 10 s after " + signal.Signals(signum).name)
    took = time.monotonic() - started
    output = out_file.read_text()
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], output
    assert took < 10
    assert f"cancelled by {signal.Signals(signum).name}" in output and "training stopped" in output, output
    assert "Traceback" not in output
    for pid in trainers:  # the trainer's process group is gone
        alive = _alive(pid)
        assert not alive, (pid, alive)
    assert not _trainer_pids(airtune_home, name)

    check = f"""
import json
from airtune import localstack, tracking; localstack.apply()
from airflow import settings; settings.configure_orm()
from airflow.models.dagrun import DagRun
s = settings.Session()
dr = s.query(DagRun).filter(DagRun.dag_id == 'airtune_finetune').one()
tis = {{ti.task_id: str(ti.state) for ti in dr.get_task_instances(session=s)}}
c = tracking.client()
exp = c.get_experiment_by_name(tracking.experiment_name({name!r}))
runs = c.search_runs([exp.experiment_id])
print(json.dumps({{"state": str(dr.state), "tis": tis, "mlflow": [r.info.status for r in runs]}}))
"""
    got = json.loads(subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    assert got["state"] == "failed", got
    assert got["tis"]["train_local"] == "failed" and got["tis"]["register"] in ("skipped", "upstream_failed"), got
    assert got["mlflow"] == ["FAILED"], got
