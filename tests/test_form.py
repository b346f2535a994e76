"""airtune.form: the Airflow Params of the job form, and Airflow itself refusing single-field errors.

The trigger-time check is proven the way the API server does it: the DAG is serialized and
deserialized, and its params are merged with the conf and validated
(`SerializedParamsDict.deep_merge(conf).validate()`, which `create_dagrun` runs); the SDK's
`ParamsDict` is checked too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from airtune import form
from airtune.catalog import Catalog
from airtune.resolve import validate_mapping
from airtune.spec import FIELDS, SECTIONS, parse

GOOD = {"name": "demo-job", "base_model": "tiny-llama-dev", "dataset": ["identity"]}
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def params():
    return form.dag_params("en")


@pytest.fixture(scope="module")
def server_params(params, tmp_path_factory):
    """The params as the API server holds them: a DAG serialized and deserialized."""
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG("form_test", schedule=None, params=params) as dag:
        pass
    return DagSerialization.from_dict(DagSerialization.to_dict(dag)).params


def trigger(server_params, conf: dict) -> dict:
    """What Airflow does with a run's conf: merge into the params and validate each one."""
    return server_params.deep_merge(conf).validate()


# -- the Params -----------------------------------------------------------------------------------


def test_one_param_per_field_in_form_order(params):
    assert list(params) == [f.name for f in FIELDS]
    sections = [p.schema["section"] for p in params.values()]
    assert list(dict.fromkeys(sections)) == [s.title_en for s in SECTIONS]  # four sections, in order


def test_required_and_defaults(params):
    from airflow.sdk.definitions._internal.types import NOTSET

    for f in FIELDS:
        p = params[f.name]
        if f.required:
            assert p.value is NOTSET, f.name
            assert "null" not in p.schema["type"], f.name
        else:
            assert p.value == f.default, f.name
            assert "null" in p.schema["type"], f.name  # empty means the default
    assert params["learning_rate"].value == 1e-4 and params["location"].value == "local"


def test_labels_help_and_limits(params):
    lr = params["learning_rate"]
    assert lr.schema["title"] == "Learning rate"
    assert "1e-5 to 1e-3" in lr.description and "> 0 and <= 1" in lr.description
    assert lr.schema["exclusiveMinimum"] == 0 and lr.schema["maximum"] == 1
    assert params["name"].schema["maxLength"] == 63 and params["name"].schema["pattern"].startswith("^[a-z0-9]")


def test_enums_come_from_the_catalog(params):
    catalog = Catalog.load()
    assert params["base_model"].schema["enum"] == list(catalog.models)
    # the default (local, auto) is pre-selected, so no empty entry beside it; null stays accepted
    assert params["location"].schema["enum"] == list(catalog.locations)
    assert params["template"].schema["enum"] == ["auto", *catalog.templates]
    assert params["location"].schema["definitions"]["accepted"]["enum"] == [*catalog.locations, None]
    assert params["dataset"].schema["items"]["enum"] == list(catalog.datasets)
    assert params["dataset"].schema["examples"] == list(catalog.datasets)  # Airflow's multi-select
    assert {"cpu", "auto", "nvidia-h100-80gb", "nvidia-t4"} <= set(params["gpu_type"].schema["enum"])
    assert "16 GiB" in params["gpu_type"].schema["values_display"]["nvidia-t4"]


def test_enums_have_readable_names(params):
    for f in FIELDS:
        schema = params[f.name].schema
        if "enum" in schema and f.choice_labels:
            shown = schema["values_display"]
            assert set(f.choices) <= set(shown), f.name
            # the empty choice is listed (and named) only where the default is no value of the list
            assert ("null" in shown) == (None in schema["enum"]) == (f.default is None or f.default not in f.choices), f.name
    assert "null" not in params["stage"].schema["values_display"]
    assert params["promote"].schema["values_display"]["null"].startswith("(empty; never for a one-off job")


def _select_entries(schema: dict) -> list[str]:
    """What Airflow 3.3.2's select lists (airflow/ui FieldDropdown): one entry per item of `enum`, named
    by values_display (the key "null" for null), else the value itself."""
    shown = schema.get("values_display") or {}
    return [shown.get("null" if v is None else str(v), "null" if v is None else str(v)) for v in schema["enum"]]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_select_lists_each_value_once(lang):
    """The issue's "(default: X)" entry beside X: a drop-down shows each value once, the default among them."""
    from airtune.spec import FIELD_BY_NAME

    params = form.dag_params(lang)
    selects = {name: p.schema for name, p in params.items() if isinstance(p.schema.get("enum"), list)}
    assert {"location", "template", "stage", "lr_scheduler_type", "quantization_bit", "gpu_type"} <= set(selects)
    for name, schema in selects.items():
        f = FIELD_BY_NAME[name]
        entries = _select_entries(schema)
        assert len(entries) == len(set(entries)), (name, entries)
        assert not any(e.startswith(("(default", "（默认")) for e in entries), (name, entries)
        if f.default is not None:
            assert f.default in schema["enum"] and None not in schema["enum"], name
            assert params[name].value == f.default  # what the form pre-selects


def test_an_empty_select_still_means_the_default(server_params):
    """A cleared select (null) and a REST null are accepted though null is no longer listed."""
    conf = {**GOOD, "lr_scheduler_type": None, "location": None, "template": None, "quantization_bit": None}
    values = trigger(server_params, conf)
    spec = parse(form.conf_to_mapping(values))
    assert (spec.lr_scheduler_type, spec.location, spec.template, spec.quantization_bit) == ("cosine", "local", "auto", "none")


def test_chinese_form(monkeypatch):
    zh = form.dag_params("zh")
    for name, p in zh.items():
        assert CJK.search(p.schema["title"]), name
        assert CJK.search(p.description), name
    assert zh["learning_rate"].schema["title"] == "学习率"
    assert "1e-5 至 1e-3" in zh["learning_rate"].description
    assert list(dict.fromkeys(p.schema["section"] for p in zh.values())) == [s.title_zh for s in SECTIONS]
    assert zh["finetuning_method"].schema["values_display"]["full"] == "全参数微调"
    monkeypatch.setenv("AIRTUNE_FORM_LANG", "zh")
    assert form.dag_params()["name"].schema["title"] == "任务名称"
    monkeypatch.setenv("AIRTUNE_FORM_LANG", "fr")
    with pytest.raises(ValueError, match="AIRTUNE_FORM_LANG"):
        form.dag_params()


def test_params_serialize_to_json(params):
    for name, p in params.items():
        json.dumps(p.dump())


# -- Airflow refuses single-field errors at trigger time ------------------------------------------

# (param, bad value): each refused by the param's own JSON schema, before any task runs.
BAD = [
    ("name", "Bad_Name"), ("name", "a" * 64), ("name", ""), ("name", None),
    ("base_model", "gpt-5"), ("base_model", None),
    ("location", "mars"), ("template", "vicuna"),
    ("finetuning_method", "qlora"), ("stage", "ppo"),
    ("dataset", ["nope"]), ("dataset", []), ("dataset", ["identity", "identity"]), ("dataset", None),
    ("reward_model", "Bad_RM"), ("parent_job", "UPPER"),
    ("gpu_type", "tpu-v5"), ("gpus_per_node", -1), ("gpus_per_node", 1.5), ("nodes", 0), ("cpu", 0), ("memory_gib", 0),
    ("learning_rate", 0), ("learning_rate", 2), ("learning_rate", "fast"), ("num_train_epochs", 0),
    ("num_train_epochs", 1001), ("max_grad_norm", 0), ("max_samples", 0), ("compute_type", "fp8"),
    ("cutoff_len", 7), ("cutoff_len", 1_048_577), ("per_device_train_batch_size", 0),
    ("gradient_accumulation_steps", 0), ("val_size", 1), ("val_size", -0.1), ("lr_scheduler_type", "step"),
    ("lora_rank", 0), ("lora_alpha", 0), ("lora_dropout", 1), ("loraplus_lr_ratio", 0),
    ("quantization_bit", "3"), ("quantization_method", "gptq"), ("rope_scaling", "ntk"), ("booster", "deepspeed"),
    ("distributed", "fsdp"), ("logging_steps", 0), ("save_steps", 0), ("warmup_steps", -1),
    ("neftune_noise_alpha", -1), ("optimizer", "adam"), ("seed", -1), ("extra_args", "x"), ("extra_args", [1]),
    ("extra_args", {"output_dir": "/tmp"}), ("extra_args", {"hub_token": "t"}), ("extra_args", {"optim": "sgd"}),
    ("lora_target", "q_proj; v_proj"), ("lora_target", ["all", "q_proj"]), ("use_dora", "maybe"), ("use_rslora", 1),
    ("freeze_trainable_layers", 0), ("pref_loss", "kl"), ("pref_beta", 0), ("packing", "x"),
    ("train_on_prompt", 2), ("mask_history", "x"), ("skip_bad_rows", "x"), ("save_total_limit", 0),
    ("export_merged", "x"), ("min_lr_rate", 1), ("min_lr_rate", 0), ("decay_ratio", 1), ("decay_ratio", 0),
    ("eval_dataset", ["nope"]), ("eval_dataset", ["identity", "identity"]), ("eval_max_samples", -1),
    ("eval_benchmarks", ["mmlu"]), ("promote", "always"), ("promote_metric", "accuracy"),
    ("promote_metric", "benchmark:"), ("promote_timeout_hours", 0), ("notify", ["team mail"]),
]


def test_every_field_has_a_trigger_time_row():
    assert {name for name, _ in BAD} == {f.name for f in FIELDS}


@pytest.mark.parametrize("name, bad", BAD, ids=[f"{n}={str(v)[:16]}" for n, v in BAD])
def test_airflow_refuses_a_bad_value(server_params, params, name, bad):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=f"Invalid input for param {name}:"):
        trigger(server_params, {**GOOD, name: bad})
    sdk = ParamsDict(form.dag_params("en"))
    with pytest.raises(ParamValidationError, match=name):
        sdk.update({**GOOD, name: bad})
        sdk.validate()


def test_airflow_accepts_the_defaults_and_they_validate(server_params, tmp_path, monkeypatch):
    values = trigger(server_params, GOOD)
    assert values["learning_rate"] == 1e-4 and values["dataset"] == ["identity"]
    resolved = validate_mapping(form.conf_to_mapping(values))
    assert resolved["spec"]["name"] == "demo-job" and resolved["spec"]["compute_type"] == "fp32"


def test_airflow_accepts_empty_optional_values(server_params):
    conf = {**GOOD, **{f.name: None for f in FIELDS if not f.required}}
    values = trigger(server_params, conf)
    mapping = form.conf_to_mapping(values)
    assert set(mapping) == {"name", "base_model", "dataset"}
    assert parse(mapping).learning_rate == 1e-4


def test_airflow_accepts_good_values(server_params):
    conf = {**GOOD, "location": "k8s-example", "base_model": "qwen2.5-7b-instruct", "gpu_type": "nvidia-t4",
            "gpus_per_node": 4, "quantization_bit": "4", "dataset": "identity, alpaca_en_demo",
            "lora_target": ["q_proj", "v_proj"], "extra_args": {"weight_decay": 0.01}, "val_size": 0.1,
            "lr_scheduler_type": "cosine_with_min_lr", "min_lr_rate": 0.05, "packing": True}
    values = trigger(server_params, conf)
    spec = parse(form.conf_to_mapping(values))
    assert spec.dataset == ["identity", "alpaca_en_demo"] and spec.quantization_bit == "4"


def test_conf_to_mapping_drops_empty_values_only():
    conf = {"name": "x", "max_samples": None, "template": "", "extra_args": {}, "dataset": [], "typo": 1,
            "use_dora": False, "warmup_steps": 0}
    assert form.conf_to_mapping(conf) == {"name": "x", "typo": 1, "use_dora": False, "warmup_steps": 0}


def test_form_imports_no_heavy_module(tmp_path):
    code = ("import sys; from airtune import form; form.dag_params(); "
            "print([m for m in ('torch', 'transformers', 'datasets', 'mlflow', 'trl', 'peft') if m in sys.modules])")
    env = {"AIRFLOW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "[]"
