"""Against a real `mlflow server` on SQLite (the embedded default's): the real trainer's metrics
appear while it runs and survive the server going away mid-run; the registered version loads and
generates; deleting an active job is refused without --force and changes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from airtune import tracking

from .conftest import add_dag_run, airflow_state, airtune
from .helpers import make_job, make_resolved, records, start_training, wait_for

pytestmark = pytest.mark.slow


def history(c, run_id: str, key: str) -> set[int]:
    return {m.step for m in c.get_metric_history(run_id, key)}


def test_live_metrics_survive_a_server_outage_and_the_version_loads(sqlite_server, prepared, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_server.url)
    resolved = make_resolved(tiny_model_dir, "live", num_train_epochs=4.0)  # 32 steps, checkpoints every 5
    run_id = tracking.ensure_run(resolved, "airtune_finetune", "manual__live")
    job = make_job(tmp_path / "workspace", resolved, "manual__live", run_id)
    c = tracking.client()
    proc = start_training(job, prepared, sqlite_server.url, run_id, pace=0.5)
    try:
        # 1. live: the loss is in MLflow while the trainer still runs
        wait_for(lambda: len(history(c, run_id, "loss")) >= 2, 120, "the first loss values in MLflow")
        assert proc.poll() is None, "training ended before its metrics were seen live"
        progress = json.loads(c.get_run(run_id).data.tags["airtune.progress"])
        assert progress["max_steps"] == 32 and 0 < progress["step"] < 32

        # 2. the server goes away; training goes on and says so in its log
        sqlite_server.stop()
        step_at_stop = max(r["step"] for r in records(job))
        wait_for(lambda: max(r["step"] for r in records(job)) >= step_at_stop + 4, 60, "training to go on without MLflow")
        wait_for(lambda: "MLflow unreachable" in (job / "train.log").read_text(), 30, "the outage in the task log")
        assert proc.poll() is None
        sqlite_server.start()
        assert proc.wait(timeout=240) == 0, (job / "train.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (job / "train.log").read_text()
    assert "MLflow reachable again" in log

    # 3. every value the trainer logged reached MLflow, the ones of the outage included
    recs = records(job)
    for key in ("loss", "learning_rate", "grad_norm", "epoch", "tokens_per_second", "eval_loss"):
        want = {r["step"] for r in recs if key in r}
        assert want and history(c, run_id, key) == want, key
    assert len(c.get_metric_history(run_id, "loss")) == 32  # and once each
    cpu = c.get_metric_history(run_id, "system/node0/cpu_utilization_percentage")
    assert len(cpu) >= 3 and any(m.step > step_at_stop for m in cpu)  # system metrics, the node named
    assert "system/node0/system_memory_usage_megabytes" in c.get_run(run_id).data.metrics
    run = c.get_run(run_id)
    assert run.data.tags["airtune.node.node0"]
    models = c.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    recorded = {m.name: {x.key: x.value for x in m.metrics} for m in models}
    assert set(recorded) == {f"checkpoint-{s}" for s in (5, 10, 15, 20, 25, 30, 32)}  # recorded while training
    evals = {r["step"]: r["eval_loss"] for r in recs if "eval_loss" in r}
    assert recorded["checkpoint-10"]["eval_loss"] == pytest.approx(evals[10])

    # 4. register: nothing was missing, the best checkpoint becomes version 1 and loads
    out = tracking.finish_run(job, json.loads((job / "spec.json").read_text()), run_id)
    assert out["backfilled_metrics"] == 0
    result = json.loads((job / "result.json").read_text())
    assert out["model_version"] == "1"
    assert out["best_checkpoint"] == result["best_checkpoint"] and out["best_eval_loss"] == result["best_eval_loss"]

    import mlflow
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    mlflow.set_tracking_uri(sqlite_server.url)
    path = mlflow.artifacts.download_artifacts("models:/live@best", dst_path=str(tmp_path / "download"))
    model = AutoPeftModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    inputs = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(tok.decode(generated[0][inputs["input_ids"].shape[1]:]), str)
    assert "models:/live@best" in (Path(path) / "README.md").read_text()


def test_delete_refuses_an_active_job_and_force_cancels_it(sqlite_server, airflow_home, tiny_model_dir, monkeypatch):
    env = {"MLFLOW_TRACKING_URI": sqlite_server.url, "AIRTUNE_MLFLOW_BACKEND_STORE_URI": sqlite_server.backend_uri}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_server.url)
    resolved = make_resolved(tiny_model_dir, "busy")
    run_id = tracking.ensure_run(resolved, "airtune_finetune", "manual__busy")
    job = make_job(airflow_home / "workspace", resolved, "manual__busy", run_id)
    add_dag_run(airflow_home, "busy", "manual__busy", "running", [("validate", "success"), ("train_local", "running")])
    trainer = subprocess.Popen(["sleep", "300"], start_new_session=True)  # the training process group
    (job / "train.pid").write_text(str(trainer.pid))
    try:
        refused = airtune(airflow_home, "delete", "busy", "--yes", **env)
        assert refused.returncode == 1
        assert "active run (airtune_finetune / manual__busy)" in refused.stderr and "--force" in refused.stderr
        # nothing changed
        assert trainer.poll() is None
        assert (job / "spec.json").exists()
        c = tracking.client()
        assert c.get_run(run_id).info.lifecycle_stage == "active"
        state = airflow_state(airflow_home)
        assert {"run_id": "manual__busy", "state": "running", "name": "busy"} in state["runs"]

        shown = airtune(airflow_home, "status", "busy", **env)
        assert shown.returncode == 0, shown.stderr
        assert "run manual__busy  [running]" in shown.stdout
        assert "Airflow    http://127.0.0.1:8080/dags/airtune_finetune/runs/manual__busy" in shown.stdout
        assert f"/runs/{run_id}" in shown.stdout
        listed = airtune(airflow_home, "list", "--json", **env)
        assert {"name": "busy", "state": "running"}.items() <= {j["name"]: j for j in json.loads(listed.stdout)}["busy"].items()

        forced = airtune(airflow_home, "delete", "busy", "--yes", "--force", **env)
        assert forced.returncode == 0, forced.stderr
        assert "cancelled DAG run airtune_finetune / manual__busy (1 unfinished tasks marked failed)" in forced.stdout
        assert trainer.wait(timeout=20) is not None  # the training process group was stopped
        assert not job.parent.exists()
        assert c.get_experiment_by_name("airtune/busy") is None
        state = airflow_state(airflow_home)
        assert not [r for r in state["runs"] if r["name"] == "busy"]
        assert not [t for t in state["tis"] if t["run_id"] == "manual__busy"]
        assert airtune(airflow_home, "status", "busy", **env).returncode == 1
    finally:
        if trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
