"""The table of TRL config fields (airtune.train.trl_fields) that validate checks extra_args with:
it equals what the pinned TRL says (TRL is imported here, in the test only), reads each type as the
trainer's own check does, and keeps validate free of TRL."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings

import pytest

from airtune.train import trl_fields

STAGES = [("pt", None), ("sft", None), ("rm", None), ("kto", None), ("grpo", None),
          *(("dpo", loss) for loss in (None, "sigmoid", "ipo", "hinge", "orpo", "simpo"))]
SAMPLES = [None, True, False, 0, 1, -3, 2.5, 0.0, "", "x", "steps", "cosine", "adamw_torch", "EPOCH", [], ["a"], [1],
           {}, {"a": 1}, "1e-4"]


@pytest.fixture(scope="module")
def classes():
    from airtune.train.args import config_class

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {(stage, loss): config_class(stage, loss) for stage, loss in STAGES}


def test_the_table_is_what_the_pinned_trl_says():
    import importlib.metadata

    versions, configs = trl_fields.generate()
    assert trl_fields.render(versions, configs) == trl_fields.TABLE_PATH.read_text(encoding="utf-8"), (
        "run: python -m airtune.train.trl_fields --write")
    assert trl_fields.table_versions() == {"trl": importlib.metadata.version("trl"),
                                           "transformers": importlib.metadata.version("transformers")}


def test_each_stage_names_the_class_it_trains_with(classes):
    for (stage, loss), cls in classes.items():
        name, fields = trl_fields.config_fields(stage, loss)
        assert name == cls.__name__, (stage, loss)
        assert list(fields) == [f.name for f in dataclasses.fields(cls)]


def test_the_table_reads_each_type_as_the_trainer_does(classes):
    from airtune.train.args import _field_types, _type_name, value_fits

    for (stage, loss), cls in classes.items():
        _, fields = trl_fields.config_fields(stage, loss)
        hints = _field_types(cls)
        for f in dataclasses.fields(cls):
            entry = fields[f.name]
            if f.name not in hints:
                assert entry is None
                continue
            kind, shown = entry
            assert shown == _type_name(hints[f.name])
            for value in SAMPLES:
                assert trl_fields.fits(value, kind) == value_fits(value, hints[f.name]), (cls.__name__, f.name, value)


def test_the_check_command(capsys):
    assert trl_fields.main(["--check"]) == 0
    assert "matches the installed TRL" in capsys.readouterr().out


def test_validate_with_extra_args_imports_no_trl():
    code = ("import sys; from airtune.resolve import validate_mapping; from airtune.spec import SpecError\n"
            "job = {'name': 'a', 'base_model': 'tiny-llama-dev', 'dataset': 'identity', 'gpu_type': 'cpu'}\n"
            "validate_mapping({**job, 'extra_args': {'weight_decay': 0.01, 'adam_beta2': 0.99}})\n"
            "try:\n    validate_mapping({**job, 'extra_args': {'weight_decay': 'heavy', 'weight_decy': 1}})\n"
            "except SpecError as e:\n    print(e)\n"
            "print([m for m in ('torch', 'transformers', 'trl') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "extra_args.weight_decay: 'heavy' is not accepted: SFTConfig.weight_decay takes float" in out
    assert "extra_args.weight_decy: 1 is not accepted: not a field of SFTConfig" in out
    assert out.strip().splitlines()[-1] == "[]"
