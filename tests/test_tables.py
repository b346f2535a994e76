"""One table per rule, owned by one module and read by the others: for each, the former users agree.

    location settings   catalog.py reads configs/locations.yaml (unknown keys refused); validate and
                        the Kubernetes manifests read its records
    launch environment  launch/environment.py: the local launcher and the pods
    the job's spec.json pipeline.load_resolved: the tasks and the Kubernetes operators
    TRL config class    train/trl_fields.STAGE_CONFIGS: the trainer (args.config_class) and validate
    total steps         data/figures.total_steps: the figures shown before training and the schedulers
(the stage -> dataset kinds table: tests/data/test_stage_table.py)
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S_JOB = {"name": "tables", "base_model": "qwen2.5-0.5b-instruct", "location": "k8s-example",
           "gpu_type": "nvidia-h100-80gb", "dataset": ["alpaca_en_demo"]}


# -- locations.yaml ----------------------------------------------------------------------------------

def shipped_locations() -> dict:
    return yaml.safe_load((REPO / "configs" / "locations.yaml").read_text())["locations"]


def load_with(tmp_path: Path, locations: dict):
    from airtune.catalog import Catalog

    configs = tmp_path / "configs"
    (configs / "templates").mkdir(parents=True)
    (configs / "templates" / "chatml.jinja").write_text((REPO / "configs" / "templates" / "chatml.jinja").read_text())
    (configs / "models.yaml").write_text((REPO / "configs" / "models.yaml").read_text())
    for template in (REPO / "configs" / "templates").glob("*.jinja"):
        (configs / "templates" / template.name).write_text(template.read_text())
    identity = REPO / "data" / "llamafactory-demo" / "identity.json"
    (configs / "datasets.yaml").write_text(yaml.safe_dump({"datasets": {"x": {"format": "alpaca", "kind": "sft",
                                                                                "files": [str(identity)]}}}))
    (configs / "locations.yaml").write_text(yaml.safe_dump({"locations": locations}))
    return Catalog.load(configs)


def test_the_shipped_locations_are_typed_records(tmp_path):
    catalog = load_with(tmp_path, shipped_locations())
    local, k8s = catalog.location("local"), catalog.location("k8s-example")
    assert local.kubernetes is None
    s = k8s.kubernetes
    assert (s.connection_id, s.namespace, s.workspace.mount_path, s.poll_interval_seconds) == \
        ("kubernetes_default", "airtune", "/workspace", 15)
    assert [x.name for x in s.secrets] == ["hf-token", "mlflow-credentials"] and s.secrets[1].roles == ("train",)
    assert s.secrets[0].for_role("evaluate") and not s.secrets[1].for_role("prepare")
    assert k8s.gpu_types["nvidia-t4"].flash_attn is False


@pytest.mark.parametrize("change, message", [
    (lambda loc: loc["k8s-example"].update(namepsace="x"), r"k8s-example: unknown key namepsace; accepted: kind, "),
    (lambda loc: loc["local"].update(image="x"), r"local: unknown key image \(Kubernetes settings; this location is kind local\)"),
    (lambda loc: loc["k8s-example"]["gpu_types"]["nvidia-t4"].update(flash=True),
     r"k8s-example: unknown key gpu_types.nvidia-t4.flash; accepted under gpu_types.nvidia-t4: node_selector, "),
    (lambda loc: loc["k8s-example"]["storage"]["workspace"].update(readonly=True),
     r"k8s-example: unknown key storage.workspace.readonly; accepted under storage.workspace: claim, mount_path, read_only"),
    (lambda loc: loc["k8s-example"]["secrets"][0].update(keys="x"), r"k8s-example: unknown key secrets\[\].keys"),
    (lambda loc: loc["k8s-example"]["prepare"].update(gpus=1), r"k8s-example: unknown key prepare.gpus"),
    (lambda loc: loc["k8s-example"].update(kind="slurm"), r"k8s-example: kind 'slurm'; accepted: local, kubernetes"),
    (lambda loc: loc["k8s-example"].pop("image"), r"k8s-example: `image` is required for a Kubernetes location"),
])
def test_a_location_key_no_schema_declares_is_refused_naming_it(tmp_path, change, message):
    from airtune.catalog import CatalogError

    locations = shipped_locations()
    change(locations)
    with pytest.raises(CatalogError, match=r"locations.yaml: " + message):
        load_with(tmp_path, locations)


def test_validate_and_the_manifests_read_the_same_location_record():
    from airtune.catalog import Catalog
    from airtune.launch.kubernetes import manifests
    from airtune.resolve import validate_mapping

    resolved = validate_mapping(K8S_JOB)
    assert manifests.location_settings(resolved) == Catalog.load().location("k8s-example").kubernetes
    broken = copy.deepcopy(resolved)
    del broken["location"]["storage"]["workspace"]
    with pytest.raises(manifests.SettingsError, match="k8s-example: storage.workspace is required"):
        manifests.location_settings(broken)


def test_a_gpu_types_declared_flash_attn_reaches_validate(tmp_path):
    from airtune.resolve import validate_mapping

    locations = shipped_locations()
    locations["k8s-example"]["gpu_types"]["nvidia-t4"]["flash_attn"] = True
    catalog = load_with(tmp_path, locations)
    job = {"name": "fa", "location": "k8s-example", "base_model": "qwen2.5-0.5b-instruct", "dataset": ["x"]}
    for gpu_type, booster in (("nvidia-t4", "flash_attention_2"), ("nvidia-a100-80gb", "sdpa")):
        assert validate_mapping({**job, "gpu_type": gpu_type}, catalog)["spec"]["booster"] == booster


# -- the launch environment ------------------------------------------------------------------------

def test_the_local_launcher_and_the_pods_run_with_the_same_environment(monkeypatch):
    from airtune import pipeline
    from airtune.launch.environment import BASE_ENV
    from airtune.launch.kubernetes import manifests
    from airtune.resolve import validate_mapping

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    resolved = validate_mapping(K8S_JOB)
    job_dir = "/workspace/jobs/tables/manual__1"
    run = manifests.Run(job="tables", dag_id="d", run_id="manual__1", job_dir=job_dir, mlflow_run_id="abc")
    local = pipeline.train_env({"job_dir": job_dir, "mlflow_run_id": "abc"})
    for role in ("train", "evaluate"):
        env_vars, _ = manifests.env(resolved, run, role=role)
        pod = {v.name: v.value for v in env_vars if v.value_from is None}
        assert {k: pod[k] for k in local if k != "MLFLOW_TRACKING_URI"} == {k: v for k, v in local.items()
                                                                          if k != "MLFLOW_TRACKING_URI"}
        # MLflow as the pods reach it: the location's setting
        assert pod["MLFLOW_TRACKING_URI"] == "http://mlflow.airtune.svc:5000" and pod["MLFLOW_RUN_ID"] == "abc"
        assert set(pod) - set(local) == {"AIRTUNE_WORKSPACE", "HF_HOME"}
    prepare = {v.name: v.value for v in manifests.env(resolved, run, role="prepare")[0] if v.value_from is None}
    assert set(prepare) == set(BASE_ENV) | {"AIRTUNE_WORKSPACE", "HF_HOME"}
    assert local["AIRTUNE_METRICS_FILE"] == f"{job_dir}/metrics.jsonl" and local["PYTHONUNBUFFERED"] == "1"


# -- the job's resolved spec -------------------------------------------------------------------------

def test_the_operators_read_the_spec_as_the_tasks_do():
    pytest.importorskip("airflow.providers.cncf.kubernetes")
    from airtune import pipeline
    from airtune.launch.kubernetes import operators

    assert operators.load_resolved is pipeline.load_resolved


# -- stage -> TRL config class -----------------------------------------------------------------------

STAGES = [("pt", None), ("sft", None), ("rm", None), ("kto", None), ("grpo", None),
          *(("dpo", loss) for loss in ("sigmoid", "ipo", "hinge", "orpo", "simpo"))]


@pytest.mark.parametrize("stage, loss", STAGES)
def test_the_trainer_and_validate_name_the_same_trl_config(stage, loss):
    pytest.importorskip("trl")
    from airtune.resolve import validate_mapping
    from airtune.spec import SpecError
    from airtune.train import trl_fields
    from airtune.train.args import config_class

    name = trl_fields.config_name(stage, loss)
    assert config_class(stage, loss).__name__ == name
    job = {"name": "cfg", "base_model": "tiny-llama-dev", "stage": stage, "extra_args": {"no_such_field": 1},
           **({"pref_loss": loss} if loss else {})}
    with pytest.raises(SpecError) as refused:
        validate_mapping(job, hardware={"cuda_devices": 0})
    assert any(e.field == "extra_args.no_such_field" and f"not a field of {name}" in e.message for e in refused.value.errors)


def test_an_unknown_stage_is_an_args_error():
    from airtune.train.args import ArgsError, config_class

    with pytest.raises(ArgsError, match="stage 'ppo' is not supported"):
        config_class("ppo")


# -- total steps -------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, batch, accum, world, epochs, extra", [
    (100, 4, 1, 1, 3.0, {}), (100, 4, 4, 2, 2.5, {}), (7, 8, 2, 1, 1.0, {}), (1000, 2, 8, 8, 0.3, {}),
    (100, 4, 1, 1, 3.0, {"max_steps": 5}), (100, 4, 1, 1, 3.0, {"max_steps": -1}),
])
def test_the_figures_and_the_trainer_count_the_same_steps(rows, batch, accum, world, epochs, extra):
    from airtune.data.figures import training_figures
    from airtune.train.args import total_steps

    spec = {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accum, "num_train_epochs": epochs,
            "nodes": 1, "gpus_per_node": world, "extra_args": extra}
    shown = training_figures({"rows": {"train": rows}}, spec)["total_steps"]
    assert total_steps(rows, spec, world) == shown
    if extra.get("max_steps", 0) > 0:
        assert shown == extra["max_steps"]


def test_warmup_stable_decay_decays_over_a_share_of_max_steps(tmp_path):
    pytest.importorskip("trl")
    from airtune.train.args import map_spec

    from airtune.resolve import validate_mapping

    resolved = validate_mapping({"name": "wsd", "base_model": "tiny-llama-dev", "dataset": "identity",
                                 "per_device_train_batch_size": 4, "num_train_epochs": 3.0, "cutoff_len": 64,
                                 "lr_scheduler_type": "warmup_stable_decay", "decay_ratio": 0.2,
                                 "extra_args": {"max_steps": 20}})
    mapped = map_spec(resolved, output_dir=str(tmp_path), train_rows=400, has_eval=False)
    assert mapped.config.lr_scheduler_kwargs == {"num_decay_steps": 4}  # 0.2 x 20 (max_steps), not 0.2 x 300
