"""tracking.py without a server (MLflow on a local SQLite file, as the embedded default's tasks use it)
and the trainer's files written by hand: one run per DAG run, the register step, status."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from airtune import status, tracking

from .helpers import make_job, make_resolved


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("tracking-home")


@pytest.fixture(autouse=True)
def local_mlflow(home, monkeypatch):
    monkeypatch.setenv("AIRTUNE_HOME", str(home))
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(home / "workspace"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("AIRTUNE_MLFLOW_UI_URL", "http://mlflow.example")
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example")
    # Airflow's database is not part of these tests (the server tests use it)
    monkeypatch.setattr(status, "_airflow_runs", lambda names=None: ({}, "not configured in this test"))


def fake_training(job_dir: Path, *, evals: dict[int, float], steps: int = 12, save_steps: int = 4, kept: int = 2, best: str | None = None):
    """The files `python -m airtune.train` leaves (docs/architecture.md), with made-up weights."""
    out = job_dir / "output"
    saved = [s for s in range(save_steps, steps + 1, save_steps)]
    for step in saved[-kept:]:  # save_total_limit removed the older ones
        ckpt = out / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "step": step}))
        (ckpt / "adapter_model.safetensors").write_bytes(b"weights-%d" % step)
        (ckpt / "optimizer.pt").write_bytes(b"optimizer state")
        (ckpt / "rng_state.pth").write_bytes(b"rng")
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    final = out / "final"
    final.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (final / name).write_text(f"final {name}")
    (final / "spec.json").write_text((job_dir / "spec.json").read_text())
    lines = []
    for step in range(1, steps + 1):
        lines.append({"step": step, "epoch": step / steps, "loss": 8.0 - step * 0.1, "learning_rate": 1e-3 * (1 - step / steps),
                      "grad_norm": 1.0, "tokens_per_second": 1000.0, "time": 1.7e9 + step})
        if step in evals:
            lines.append({"step": step, "epoch": step / steps, "eval_loss": evals[step], "time": 1.7e9 + step + 0.5})
    (job_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = {
        "global_step": steps, "epoch": 1.0, "train_loss_first": 7.9, "train_loss_last": 8.0 - steps * 0.1,
        "eval_loss": evals.get(steps), "final_dir": "output/final",
        "checkpoints": [f"output/checkpoint-{s}" for s in saved[-kept:]],
        "best_checkpoint": best, "runtime_s": 12.5,
    }
    (job_dir / "result.json").write_text(json.dumps(result))


def new_job(home, tiny_model_dir, name, dag_run_id, **overrides):
    resolved = make_resolved(tiny_model_dir, name, **overrides)
    run_id = tracking.ensure_run(resolved, "airtune_finetune", dag_run_id)
    job_dir = make_job(home / "workspace", resolved, dag_run_id, run_id)
    return json.loads((job_dir / "spec.json").read_text()), run_id, job_dir


def test_one_run_per_dag_run_across_retries(tiny_model_dir, caplog):
    resolved = make_resolved(tiny_model_dir, "one-run")
    first = tracking.ensure_run(resolved, "airtune_finetune", "manual__1")
    # a retry of validate (its first attempt died after creating the run): found again by its tags
    assert tracking.ensure_run(resolved, "airtune_finetune", "manual__1") == first
    # the same spec whose `auto` values resolved differently on the retry: no "changing param values" error
    changed = make_resolved(tiny_model_dir, "one-run", gpus_per_node=1)
    with caplog.at_level(logging.WARNING):
        assert tracking.ensure_run(changed, "airtune_finetune", "manual__1") == first
    assert "spec.gpus_per_node" in caplog.text
    # another DAG run of the same job (a retraining schedule) is another run in the same experiment
    second = tracking.ensure_run(resolved, "airtune_finetune", "manual__2")
    assert second != first
    c = tracking.client()
    run = c.get_run(first)
    assert run.data.params["spec.gpus_per_node"] == "0"
    assert run.data.params["spec.dataset"] == '["identity"]'
    assert len(run.data.params) == len(resolved["spec"])
    tags = run.data.tags
    assert tags["airflow.dag_id"] == "airtune_finetune" and tags["airflow.run_id"] == "manual__1"
    assert tags["airtune.base_model"] == "tiny-llama-dev" and tags["airtune.method"] == "lora"
    assert tags["airtune.stage"] == "sft" and tags["airtune.template"] == "chatml" and tags["airtune.datasets"] == "identity"
    assert tags["airtune.version"] == "0.1.0"
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.name == "airtune/one-run"
    assert len(c.search_runs([exp.experiment_id])) == 2


def test_flatten_keeps_values_within_mlflow_limits():
    flat = tracking.flatten({"spec": {"extra_args": {"x": "y" * 10000}, "dataset": ["a", "b"], "lr": 1e-4}})
    assert flat["spec.dataset"] == '["a", "b"]'
    assert flat["spec.lr"] == "0.0001"
    assert len(flat["spec.extra_args.x"]) == tracking.PARAM_VALUE_LIMIT


def test_register_records_checkpoints_and_registers_the_best(home, tiny_model_dir):
    resolved, run_id, job_dir = new_job(home, tiny_model_dir, "reg-best", "manual__1")
    tracking.record_dataset(run_id, {"content_hash": "abc123", "rows": {"train": 10}}, resolved)
    fake_training(job_dir, evals={4: 7.5, 8: 7.1, 12: 7.3})  # checkpoint-4 was rotated away
    c = tracking.client()
    # live logging sent only part of the metrics (the server was away at the end)
    from mlflow.entities import Metric

    c.log_batch(run_id, metrics=[Metric("loss", 8.0 - s * 0.1, int((1.7e9 + s) * 1000), s) for s in range(1, 6)])

    out = tracking.finish_run(job_dir, resolved, run_id)
    assert out["best_checkpoint"] == "output/checkpoint-8" and out["best_step"] == 8 and out["best_eval_loss"] == 7.1
    assert out["model_version"] == "1" and out["model_uri"] == "models:/reg-best@best"
    assert out["backfilled_metrics"] == 12 * 5 + 3 - 5  # everything metrics.jsonl has that MLflow lacked
    assert [m.step for m in c.get_metric_history(run_id, "loss")] == list(range(1, 13))  # no doubled points

    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["airtune.data.content_hash"] == "abc123"
    models = {m.name: m for m in c.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")}
    assert set(models) == {"checkpoint-8", "checkpoint-12", "final"}
    best = models["checkpoint-8"]
    assert str(best.status) == "READY" and best.tags["airtune.step"] == "8"
    assert {m.key: m.value for m in best.metrics}["eval_loss"] == 7.1
    assert str(models["final"].status) == "READY"  # the final weights are uploaded too
    assert str(models["checkpoint-12"].status) == "PENDING" and "job folder only" in models["checkpoint-12"].tags["airtune.files"]

    mv = c.get_model_version_by_alias("reg-best", "best")
    assert str(mv.version) == "1" and mv.run_id == run_id and mv.source == f"models:/{best.model_id}"
    assert json.loads(c.get_logged_model(best.model_id).tags["mlflow.modelVersions"]) == [{"name": "reg-best", "version": 1}]
    assert mv.tags["airflow_run_id"] == "manual__1" and mv.tags["base_model"] == "tiny-llama-dev"
    assert mv.tags["checkpoint"] == "output/checkpoint-8" and mv.tags["data_content_hash"] == "abc123"
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    files = Path(mlflow.artifacts.download_artifacts("models:/reg-best@best", dst_path=str(home / "dl")))
    names = {p.name for p in files.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
            "spec.json", "README.md", "airtune.json"} <= names
    assert not names & {"optimizer.pt", "rng_state.pth"}  # training state stays in the job folder
    assert (files / "adapter_model.safetensors").read_bytes() == b"weights-8"
    assert "AutoPeftModelForCausalLM" in (files / "README.md").read_text()
    assert json.loads((files / "airtune.json").read_text())["mlflow_run_id"] == run_id

    arts = {a.path for a in c.list_artifacts(run_id, "summary")}
    assert arts == {"summary/curves.png", "summary/summary.md"}
    png = Path(c.download_artifacts(run_id, "summary/curves.png", str(home / "png")))
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    assert "output/checkpoint-8 (step 8, eval loss 7.1)" in run.data.tags["mlflow.note.content"]

    # the register task retried: nothing doubles
    again = tracking.finish_run(job_dir, resolved, run_id)
    assert again["model_version"] == "1"
    assert len(c.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")) == 3
    assert len(c.search_model_versions("name = 'reg-best'")) == 1


def test_best_alias_across_runs_of_a_retraining_job(home, tiny_model_dir):
    def run(dag_run_id, eval_loss, content_hash):
        resolved, run_id, job_dir = new_job(home, tiny_model_dir, "nightly", dag_run_id)
        tracking.record_dataset(run_id, {"content_hash": content_hash}, resolved)
        fake_training(job_dir, evals={8: eval_loss, 12: eval_loss + 1})
        return tracking.finish_run(job_dir, resolved, run_id)

    c = tracking.client()
    assert run("scheduled__1", 7.0, "data-1")["model_version"] == "1"
    second = run("scheduled__2", 7.5, "data-1")  # same data, worse: version 2, `best` stays on 1
    assert second["model_version"] == "2" and second["model_uri"] == "models:/nightly/2"
    assert str(c.get_model_version_by_alias("nightly", "best").version) == "1"
    assert run("scheduled__3", 9.0, "data-2")["model_version"] == "3"  # new data: the newest training wins
    assert str(c.get_model_version_by_alias("nightly", "best").version) == "3"
    assert max(int(v.version) for v in c.search_model_versions("name = 'nightly'")) == 3  # models:/nightly/latest


def test_no_eval_means_the_final_weights_are_registered(home, tiny_model_dir):
    resolved, run_id, job_dir = new_job(home, tiny_model_dir, "no-eval", "manual__1", val_size=0.0)
    fake_training(job_dir, evals={})
    out = tracking.finish_run(job_dir, resolved, run_id)
    assert out["best_checkpoint"] == "output/final" and out["best_step"] == 12 and out["best_eval_loss"] is None


def test_status_and_list_from_mlflow(home, tiny_model_dir):
    resolved, run_id, job_dir = new_job(home, tiny_model_dir, "stat-job", "manual__7")
    tracking.set_tags(run_id, {tracking.TAG_PROGRESS: json.dumps({"step": 30, "max_steps": 120, "percent": 25.0, "eta_seconds": 600.0, "updated": 4e9})})
    from mlflow.entities import Metric

    tracking.client().log_batch(run_id, metrics=[Metric("loss", 6.5, 1, 30), Metric("learning_rate", 2e-4, 1, 30)])
    info = status.status("stat-job")
    assert info["exists"] and info["errors"] == {"airflow": "not configured in this test"}
    (r,) = info["runs"]
    assert r["state"] == "running" and r["mlflow_run_id"] == run_id
    assert r["metrics"] == {"loss": 6.5, "learning_rate": 2e-4}
    assert r["airflow_url"] == "http://airflow.example/dags/airtune_finetune/runs/manual__7"
    # the model-training view of MLflow's UI (tracking.WORKFLOW_QUERY), and the experiment's kind tag
    exp_id = tracking.client().get_run(run_id).info.experiment_id
    assert r["mlflow_url"] == f"http://mlflow.example/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning"
    assert info["experiment"]["url"] == f"http://mlflow.example/#/experiments/{exp_id}?workflowType=machine_learning"
    assert tracking.client().get_experiment(exp_id).tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"
    text = status.format_status(info)
    assert "step 30 of 120 (25%), about 10m00s left" in text
    assert "loss 6.5" in text and "learning_rate 0.0002" in text
    assert "http://airflow.example/dags/airtune_finetune/runs/manual__7" in text

    fake_training(job_dir, evals={8: 7.0, 12: 7.2})
    tracking.finish_run(job_dir, resolved, run_id)
    info = status.status("stat-job")
    (r,) = info["runs"]
    assert r["state"] == "success" and r["progress"]["percent"] == 100.0 and r["model_version"] == "1"
    assert r["best_checkpoint"]["name"] == "checkpoint-8" and r["best_checkpoint"]["eval_loss"] == 7.0
    assert info["registered_model"]["best_version"] == "1"
    assert "best       checkpoint-8 (step 8, eval loss 7)" in status.format_status(info)

    listed = {j["name"]: j for j in status.list_jobs()}
    assert {"stat-job", "reg-best", "nightly"} <= set(listed)
    assert listed["stat-job"]["state"] == "success" and listed["nightly"]["versions"] == 3
    table = status.format_list(list(listed.values()))
    assert table.splitlines()[0].split() == ["NAME", "STATE", "PROGRESS", "EVAL", "LOSS", "VERSIONS", "STARTED"]
    assert not status.status("no-such-job")["exists"]
