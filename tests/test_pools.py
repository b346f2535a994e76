"""Capacity: one pool per location sized from locations.yaml (local = 1, deferred tasks counted), written
into a real Airflow metadata database (SQLite), and the mutation hook of deploy/ loaded by Airflow's own
policy machinery, setting a train task's pool and slots from the run's conf."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airtune import pools
from airtune.catalog import Catalog

REPO = Path(__file__).resolve().parents[1]


def test_one_pool_per_location_sized_from_locations_yaml():
    catalog = Catalog.load()
    sizes = pools.pool_sizes(catalog)
    assert set(sizes) == {f"airtune_{name}" for name in catalog.locations}
    assert sizes["airtune_local"] == 1  # local: one job at a time
    assert sizes["airtune_k8s-example"] == catalog.location("k8s-example").gpu_quota == 16
    assert pools.pool_sizes(catalog, {"local": 2})["airtune_local"] == 2


def test_bad_overrides_are_refused():
    with pytest.raises(ValueError, match="mars not in locations.yaml; accepted: local"):
        pools.pool_sizes(overrides={"mars": 2})
    with pytest.raises(ValueError, match="0 slots; accepted: 1 or more"):
        pools.pool_sizes(overrides={"local": 0})


@pytest.mark.parametrize(
    "conf, expected",
    [
        ({}, ("airtune_local", 1)),
        ({"location": "local", "gpus_per_node": 4}, ("airtune_local", 1)),  # local: one job, the whole machine
        ({"location": "k8s-example"}, ("airtune_k8s-example", 1)),  # empty gpus_per_node: 1 on Kubernetes
        ({"location": "k8s-example", "gpus_per_node": 4}, ("airtune_k8s-example", 4)),
        ({"location": "k8s-example", "gpus_per_node": "8", "nodes": 2}, ("airtune_k8s-example", 16)),
        ({"location": "k8s-example", "gpus_per_node": 8, "nodes": 4}, ("airtune_k8s-example", 16)),  # capped: runs alone
        ({"location": "mars"}, None),
    ],
)
def test_train_slots(conf, expected):
    assert pools.train_slots(conf) == expected


def _airflow_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AIRTUNE", "MLFLOW"))}
    env.update(AIRTUNE_HOME=str(tmp_path / "home"), **extra)
    return env


def test_ensure_pools_writes_the_metadata_database(tmp_path):
    """Against a real (SQLite) Airflow metadata database: created, then updated in place."""
    code = """
import json
from airtune import localstack, pools
localstack.ensure_airflow_db()
pools.main([])
pools.main(["--slots", "local=2"])
from airflow.models.pool import Pool
print(json.dumps({p.pool: [p.slots, p.include_deferred, p.description] for p in Pool.get_pools()}))
"""
    out = subprocess.run([sys.executable, "-c", code], env=_airflow_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["airtune_local"][:2] == [2, True]
    assert got["airtune_k8s-example"][:2] == [16, True]
    assert "one job at a time" in got["airtune_local"][2]
    assert "pool airtune_local: 2 slots" in out.stdout


def test_mutation_hook_sets_pool_and_slots_per_run(tmp_path):
    """deploy/airflow_local_settings.py on PYTHONPATH: Airflow loads it as its policy, and a real task
    instance of airtune_finetune (from the serialized DAG, as the scheduler holds it) gets its pool and
    slots from the run's conf when Airflow re-applies the policy (refresh_from_task, as on creation)."""
    code = f"""
import json
from airtune import localstack; localstack.apply()
from airflow import settings
from airflow.dag_processing.dagbag import DagBag
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.serialization.serialized_objects import DagSerialization

assert settings.task_instance_mutation_hook.is_noop is False, "airflow_local_settings not loaded"
dag = DagSerialization.from_dict(DagSerialization.to_dict(DagBag(dag_folder={str(REPO / 'dags')!r}).dags["airtune_finetune"]))
out = {{}}
for name, conf in {{"k8s": {{"location": "k8s-example", "gpus_per_node": 4, "nodes": 2}},
                    "huge": {{"location": "k8s-example", "gpus_per_node": 8, "nodes": 8}},
                    "bad": {{"location": "mars", "gpus_per_node": 4}}, "none": {{}}}}.items():
    dr = DagRun(dag_id="airtune_finetune", run_id="manual__" + name, conf=conf)
    for task_id in ("train_kubernetes_pod", "train_kubernetes_job.train", "train_local", "prepare_dataset"):
        ti = TaskInstance(dag.get_task(task_id), run_id=dr.run_id, dag_version_id=None)
        ti.refresh_from_task(dag.get_task(task_id), dag_run=dr)
        out[name + ":" + task_id] = [ti.pool, ti.pool_slots]
print(json.dumps(out))
"""
    env = _airflow_env(tmp_path, PYTHONPATH=str(REPO / "deploy"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["k8s:train_kubernetes_pod"] == ["airtune_k8s-example", 8]
    assert got["k8s:train_kubernetes_job.train"] == ["airtune_k8s-example", 8]
    assert got["huge:train_kubernetes_job.train"] == ["airtune_k8s-example", 16]  # capped at the pool
    assert got["k8s:train_local"] == ["airtune_local", 1]
    assert got["k8s:prepare_dataset"] == ["default_pool", 1]  # no GPU, no GPU pool
    assert got["bad:train_kubernetes_pod"] == ["default_pool", 1]  # unknown location: validate fails the run
    assert got["none:train_kubernetes_pod"] == ["airtune_local", 1]  # local job: never reaches this task
