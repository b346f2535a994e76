"""End to end on the embedded default: a job through the real airtune_finetune DAG (Airflow on
SQLite, the local launcher, MLflow on SQLite), then the registered model version is found in MLflow
and loads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from .conftest import REPO, airtune_env

pytestmark = pytest.mark.slow


def _job(tmp_path, **overrides):
    job = yaml.safe_load((REPO / "examples" / "tiny.yaml").read_text())
    job.update({"max_samples": 120, "cutoff_len": 128, "save_steps": 10, "logging_steps": 2}, **overrides)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_job_runs_through_the_dag_and_registers_a_model(tmp_path, airtune_home):
    env = airtune_env(airtune_home)
    job_file = _job(tmp_path, name="e2e-one")
    out = subprocess.run(
        [sys.executable, "-m", "airtune.cli", "run", str(job_file), "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["state"] == "success"
    # A terminal a person can read: the stages, one line each, and where Airflow's own logs went.
    shown = out.stdout.strip().splitlines()[:-1]
    assert len(shown) < 20, out.stdout
    for task in ("validate", "prepare_dataset", "train_local", "register", "cleanup"):
        assert any(line.split()[:2] == [task, "ok"] for line in shown), (task, out.stdout)
    log_file = summary["log_file"]
    assert f"Airflow's logs: {log_file}" in out.stdout
    logged = open(log_file, encoding="utf-8").read()
    assert "[DAG TEST] starting task_id=train_local" in logged and "[airtune] step" in logged
    assert "[DAG TEST]" not in out.stdout
    for key in ("dag_run_id", "mlflow_run_id", "registered_model", "model_version", "output_dir", "train_loss_first", "train_loss_last"):
        assert summary[key] is not None, key
    assert summary["train_loss_last"] < summary["train_loss_first"]

    # The DAG run is in Airflow's metadata database (so the UI shows it), with its tasks succeeded.
    check_airflow = f"""
from airtune import localstack; localstack.apply()
from airflow import settings; settings.configure_orm()
from airflow.models.dagrun import DagRun
s = settings.Session()
dr = s.query(DagRun).filter(DagRun.dag_id == 'airtune_finetune', DagRun.run_id == {summary['dag_run_id']!r}).one()
print(dr.state, sorted((ti.task_id, ti.state) for ti in dr.get_task_instances(session=s)))
"""
    af = subprocess.run([sys.executable, "-c", check_airflow], env=env, capture_output=True, text=True, check=True)
    assert af.stdout.startswith("success")
    assert "('train_local', 'success')" in af.stdout and "('register', 'success')" in af.stdout

    # The version is in MLflow's registry, tagged with its DAG run, and its files load as a PEFT adapter.
    check_mlflow = f"""
import json
from airtune import localstack, tracking; localstack.apply()
c = tracking.client()
mv = c.get_model_version_by_alias('e2e-one', 'best')
run = c.get_run(mv.run_id)
import mlflow
mlflow.set_tracking_uri(tracking.tracking_uri())
local = mlflow.artifacts.download_artifacts(mv.source)
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained(local)
hist = c.get_metric_history(mv.run_id, 'loss')
print(json.dumps({{"version": mv.version, "run": mv.run_id, "dag_run": run.data.tags.get('airflow.run_id'),
                  "params": len(run.data.params), "loss_points": len(hist), "status": run.info.status}}))
"""
    ml = subprocess.run([sys.executable, "-c", check_mlflow], env=env, capture_output=True, text=True)
    assert ml.returncode == 0, ml.stderr[-3000:]
    info = json.loads(ml.stdout.strip().splitlines()[-1])
    assert str(info["version"]) == str(summary["model_version"])  # MLflow 3 gives an int, the summary a string
    assert info["run"] == summary["mlflow_run_id"]
    assert info["dag_run"] == summary["dag_run_id"]
    assert info["params"] > 40  # the resolved spec
    assert info["loss_points"] >= 3  # the loss curve, logged while training
    assert info["status"] == "FINISHED"


def test_invalid_job_is_refused_by_validate(tmp_path, airtune_home):
    env = airtune_env(airtune_home)
    bad = _job(tmp_path, name="e2e-bad", lora_rank=4, finetuning_method="full")
    out = subprocess.run([sys.executable, "-m", "airtune.cli", "validate", str(bad)], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "lora_rank" in out.stderr


def test_delete_on_a_fresh_embedded_default(tmp_path, airtune_home):
    """`make demo` first deletes an earlier demo job: on a fresh checkout there is no Airflow database yet."""
    env = airtune_env(airtune_home)
    out = subprocess.run([sys.executable, "-m", "airtune.cli", "delete", "never-ran", "--yes"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (airtune_home / "airflow" / "airflow.db").exists()
