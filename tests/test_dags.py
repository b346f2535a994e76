"""DAG integrity (as in the Astronomer template): every DAG imports, has tags and retries, and parsing
loads none of the heavy training or tracking libraries (DAG files must parse in well under a second)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the Kubernetes clients too: the DAG's Kubernetes tasks build their operators when they run
HEAVY = ["torch", "transformers", "datasets", "mlflow", "peft", "trl", "deepspeed", "kubernetes", "kubernetes_asyncio",
         "airflow.providers.cncf.kubernetes.operators.pod"]


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow")
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "airtune_finetune" in dagbag.dags
    # dags/airtune_retrain.py: one DAG per file of configs/jobs/ (tests/test_retrain.py has the rest)
    jobs = sorted(p.stem for p in (REPO / "configs" / "jobs").glob("*.yaml"))
    assert jobs and all(f"airtune_retrain__{j}" in dagbag.dags for j in jobs)


def test_every_dag_has_tags_and_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        train_tasks = [t for t in dag.tasks if t.task_id.startswith("train_")]
        for t in train_tasks:
            assert t.retries >= 1, f"{dag_id}.{t.task_id} must retry (it resumes from its checkpoint)"


def test_finetune_dag_shape(dagbag):
    dag = dagbag.dags["airtune_finetune"]
    ids = {t.task_id for t in dag.tasks}
    assert {"validate", "prepare_dataset", "choose_launcher", "train_local", "register", "cleanup"} <= ids
    assert dag.get_task("validate").retries == 0  # an invalid job never waits for a retry
    assert dag.get_task("cleanup").is_teardown
    assert "prepare_dataset" in dag.get_task("validate").downstream_task_ids
    assert "evaluate_local" in dag.get_task("train_local").downstream_task_ids
    assert "register" in dag.get_task("evaluate_local").downstream_task_ids
    assert dag.get_task("evaluate_kubernetes").upstream_task_ids >= {"train_kubernetes_pod", "train_kubernetes_job.train",
                                                                    "choose_launcher"}
    # the approval, then promote whatever the answer (and directly for promote auto / never)
    assert dag.get_task("choose_promotion").downstream_task_ids == {"approve", "promote"}
    assert dag.get_task("approve").downstream_task_ids == {"promote"}
    assert dag.get_task("promote").trigger_rule == "none_failed_min_one_success"
    assert "promote" in dag.get_task("cleanup").upstream_task_ids
    # the Kubernetes tasks name the operator they run (built when the task runs) and show its name
    for task_id, name in (("train_kubernetes_pod", "TrainPodOperator"), ("train_kubernetes_job.train", "TrainJobOperator"),
                          ("evaluate_kubernetes", "EvaluatePodOperator")):
        t = dag.get_task(task_id)
        assert t.operator_name == name and t.operator.endswith("." + name) and t.template_fields == ("airtune_job",)


def test_parsing_loads_no_heavy_module(tmp_path):
    code = f"""
import sys, time, json
t = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
t_airflow = time.perf_counter()
bag = DagBag(dag_folder={str(REPO / 'dags')!r})
t_parse = time.perf_counter()
assert not bag.import_errors, bag.import_errors
assert any(d.startswith("airtune_retrain__") for d in bag.dags), sorted(bag.dags)  # the retraining DAG file too
print(json.dumps({{"loaded": [m for m in {HEAVY!r} if m in sys.modules], "parse_s": t_parse - t_airflow}}))
"""
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [], f"parsing dags/ imported {result['loaded']}"
