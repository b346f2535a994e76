"""airtune.resolved: the typed resolved spec, its fields from the spec's table, spec.json in and out."""

from __future__ import annotations

import dataclasses
import json

import pytest

from airtune.catalog import Catalog
from airtune.resolve import validate_mapping, validate_typed
from airtune.resolved import FORMAT_VERSION, JobSettings, Resolved, ResolvedSpecError, as_resolved, load
from airtune.spec import FIELDS

BASE = {"name": "demo-job", "base_model": "tiny-llama-dev", "dataset": "identity"}
TWO_GPUS = {"cuda_devices": 2, "bf16": True, "flash_attn": True, "eetq": False, "gpu_memory_gib": 80.0}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def test_job_settings_are_the_spec_table():
    """One source of truth: JobSettings is generated from airtune.spec.FIELDS, in its order, with its defaults."""
    assert [f.name for f in dataclasses.fields(JobSettings)] == [f.name for f in FIELDS]
    settings = JobSettings()
    for f in FIELDS:
        default = getattr(settings, f.name)
        assert (list(default) if isinstance(default, tuple) else default) == f.default, f.name


@pytest.mark.parametrize("mapping, hardware", [
    ({}, None),
    ({"location": "k8s-example"}, None),
    ({"location": "k8s-example", "base_model": "qwen2.5-7b-instruct", "quantization_bit": 4}, None),
    ({"gpu_type": "auto", "finetuning_method": "full"}, TWO_GPUS),
    ({"stage": "dpo", "dataset": "dpo_en_demo", "lr_scheduler_type": "cosine_with_min_lr"}, None),
    ({"finetuning_method": "freeze", "eval_dataset": "identity", "promote": "auto"}, None),
])
def test_spec_json_round_trip(catalog, mapping, hardware):
    typed = validate_typed({**BASE, **mapping}, catalog, hardware=hardware)
    data = validate_mapping({**BASE, **mapping}, catalog, hardware=hardware)
    assert typed.to_json() == data
    assert data["format_version"] == FORMAT_VERSION
    again = Resolved.from_json(json.loads(json.dumps(data)))
    assert again == typed and again.to_json() == data


def test_attribute_access_and_frozen(catalog):
    r = validate_typed({**BASE, "lora_dropout": 0.0}, catalog)
    assert r.spec.lora_dropout == 0.0 and r.spec.lora_rank == 8 and r.spec.dataset == ("identity",)
    assert r.model.name == "tiny-llama-dev" and r.runtime.device == "cpu" and r.location.kind == "local"
    assert r.datasets[0].kind == "sft" and r.template.name == "chatml"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.spec.lora_rank = 4
    assert as_resolved(r) is r and as_resolved(r.to_json()) == r


def test_an_older_spec_json_is_read(catalog, tmp_path):
    """Before format_version was written (format 1); fields added to the form since take the table's defaults."""
    data = validate_mapping(BASE, catalog)
    del data["format_version"]
    for key in ("eval_dataset", "eval_max_samples", "eval_benchmarks", "promote", "promote_metric",
                "promote_timeout_hours", "notify"):
        del data["spec"][key]
    del data["eval_datasets"], data["benchmarks"]
    (tmp_path / "spec.json").write_text(json.dumps(data))
    r = load(tmp_path / "spec.json")
    assert r.format_version == 1 and r.spec.eval_max_samples == 50 and r.spec.promote is None
    assert r.eval_datasets == () and r.spec.lora_rank == 8


def test_a_newer_or_unknown_spec_json_is_refused_clearly(catalog):
    data = validate_mapping(BASE, catalog)
    with pytest.raises(ResolvedSpecError, match="format 2; this airtune reads formats 1 to 1"):
        Resolved.from_json({**data, "format_version": 2})
    with pytest.raises(ResolvedSpecError, match="spec has key.*no_such_field"):
        Resolved.from_json({**data, "spec": {**data["spec"], "no_such_field": 1}})
    with pytest.raises(ResolvedSpecError, match="key.*surprise"):
        Resolved.from_json({**data, "surprise": 1})
    with pytest.raises(ResolvedSpecError, match="no spec"):
        Resolved.from_json({"model": None})
