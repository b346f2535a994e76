"""Promotion against a real `mlflow server` (SQLite): three runs of one job, trained and evaluated for
real with the tiny model (python -m airtune.train, python -m airtune.evaluate through the evaluate
task's local launcher), registered and promoted by the pipeline's own task bodies.

- run 1, promote auto: the first version takes `champion`;
- run 2, promote auto, trained worse on purpose (a learning rate that barely moves the weights): the
  evaluate task scores the champion on the same held-out rows, the new version does not beat it, and
  `champion` stays;
- run 3, promote never: registered, `champion` untouched.
`best` keeps its own meaning (lowest eval loss on the same data) throughout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airtune import pipeline, tracking

from .helpers import make_job, make_resolved, start_training

pytestmark = pytest.mark.slow


def _run(workspace: Path, prepared: Path, url: str, run: str, **overrides) -> dict:
    resolved = make_resolved(Path(overrides.pop("model")), "promo", val_size=0.25, **overrides)
    dag_run = f"manual__{run}"
    mlflow_run_id = tracking.ensure_run(resolved, "airtune_finetune", dag_run)
    job_dir = make_job(workspace, resolved, dag_run, mlflow_run_id)
    proc = start_training(job_dir, prepared, url, mlflow_run_id)
    assert proc.wait(timeout=600) == 0, (job_dir / "train.log").read_text()[-3000:]
    job = {"name": "promo", "job_dir": str(job_dir), "mlflow_run_id": mlflow_run_id, "launcher": "local",
           "data_dir": str(prepared)}
    pipeline.evaluate_local(job)
    registered = pipeline.register(job)
    return pipeline.promote(registered, None)


def _aliases(c) -> dict[str, str]:
    return dict(c.get_registered_model("promo").aliases)


def test_auto_promotes_only_a_better_version_and_never_does_not(sqlite_server, prepared, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_server.url)
    workspace = tmp_path / "workspace"
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(workspace))
    c = tracking.client()

    first = _run(workspace, prepared, sqlite_server.url, "one", model=tiny_model_dir, promote="auto")
    ev1 = json.loads((Path(first["job_dir"]) / "evaluation" / "evaluation.json").read_text())
    assert ev1["tuned"]["eval_loss"] < ev1["base"]["eval_loss"]  # training helped on the held-out rows
    assert first["promoted"] and _aliases(c)["champion"] == "1"
    v1 = c.get_model_version("promo", "1").tags
    assert v1["airtune.promotion.outcome"] == "promoted" and "first version" in v1["airtune.promotion.reason"]
    assert float(v1["eval.tuned.eval_loss"]) == pytest.approx(ev1["tuned"]["eval_loss"], rel=1e-5)
    run_metrics = c.get_run(first["mlflow_run_id"]).data.metrics
    assert run_metrics["tuned/eval_loss"] == pytest.approx(ev1["tuned"]["eval_loss"])
    assert run_metrics["base/eval_loss"] == pytest.approx(ev1["base"]["eval_loss"])

    worse = _run(workspace, prepared, sqlite_server.url, "two", model=tiny_model_dir, promote="auto",
                 learning_rate=1e-7)
    ev2 = json.loads((Path(worse["job_dir"]) / "evaluation" / "evaluation.json").read_text())
    assert ev2["champion_version"] == "1"  # the champion, scored on this run's held-out rows
    assert ev2["champion"]["eval_loss"] == pytest.approx(ev1["tuned"]["eval_loss"], rel=1e-4)  # same rows, same weights
    assert ev2["tuned"]["eval_loss"] > ev2["champion"]["eval_loss"]
    assert not worse["promoted"] and _aliases(c)["champion"] == "1"
    v2 = c.get_model_version("promo", "2").tags
    assert v2["airtune.promotion.outcome"] == "kept" and "does not beat" in v2["airtune.promotion.reason"]
    assert v2["airtune.promotion.champion_version"] == "1"

    never = _run(workspace, prepared, sqlite_server.url, "three", model=tiny_model_dir, promote="never",
                 num_train_epochs=3.0)
    assert not never["promoted"] and _aliases(c)["champion"] == "1"
    assert c.get_model_version("promo", "3").tags["airtune.promotion.mode"] == "never"
    # best: the lowest eval loss on the same data, whichever version holds champion
    losses = {v: float(c.get_model_version("promo", v).tags["eval_loss"]) for v in ("1", "2", "3")}
    assert _aliases(c)["best"] == min(losses, key=losses.get)


def test_airtune_evaluate_rescores_a_version_on_another_dataset(sqlite_server, prepared, tiny_model_dir, tmp_path, monkeypatch):
    """`airtune evaluate NAME --version 1 --eval-dataset identity`: the version's figures are replaced by
    ones measured on the catalog's identity data (recorded as such), and its run gets the files."""
    import subprocess
    import sys

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_server.url)
    workspace = tmp_path / "workspace"
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(workspace))
    monkeypatch.setenv("AIRTUNE_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "models").mkdir(parents=True)
    (tmp_path / "home" / "models" / "tiny-llama-dev").symlink_to(tiny_model_dir)
    c = tracking.client()
    first = _run(workspace, prepared, sqlite_server.url, "re", model=tiny_model_dir, promote="never")
    before = c.get_model_version("promo", first["model_version"]).tags
    out = subprocess.run([sys.executable, "-m", "airtune.cli", "evaluate", "promo", "--version", first["model_version"],
                          "--eval-dataset", "identity", "--max-samples", "3", "--json"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["evaluated_on"] == "identity" and result["version"] == first["model_version"]
    ev = json.loads((Path(result["folder"]) / "evaluation.json").read_text())
    assert ev["samples"] == 3 and set(ev["tuned"]) >= {"eval_loss", "rouge-l"}
    after = c.get_model_version("promo", first["model_version"]).tags
    assert after["eval.evaluated_on"] == "identity"
    assert float(after["eval.tuned.eval_loss"]) == pytest.approx(ev["tuned"]["eval_loss"], rel=1e-5)
    assert after["eval.tuned.eval_loss"] != before["eval.tuned.eval_loss"]  # other data, other figure
    names = {a.path for a in c.list_artifacts(first["mlflow_run_id"], "evaluation")}
    assert any(n.startswith("evaluation/2") for n in names), names  # evaluation/<time>/ beside the task's own

    bad = subprocess.run([sys.executable, "-m", "airtune.cli", "evaluate", "promo", "--eval-dataset", "nope"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "eval_dataset" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
