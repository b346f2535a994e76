"""extra_args: values checked against the type of the TRL/transformers field they set, and the keys
airtune owns (saving, resuming, data, logging, distribution) refused with the reason."""

from __future__ import annotations

import dataclasses

import pytest

from airtune.resolve import format_errors, validate_mapping
from airtune.spec import SpecError

JOB = {"name": "j", "base_model": "tiny-llama-dev", "dataset": ["identity"]}


def _errors(extra) -> str:
    with pytest.raises(SpecError) as info:
        validate_mapping({**JOB, "extra_args": extra})
    return format_errors(info.value)


@pytest.mark.parametrize(("extra", "expected"), [
    ({"weight_decay": "heavy"}, "extra_args.weight_decay: 'heavy' is not accepted: SFTConfig.weight_decay takes float"),
    ({"torch_compile": "yes"}, "SFTConfig.torch_compile takes bool"),
    ({"save_only_model": True}, "checkpoints stay resumable"),
    ({"dataset_kwargs": {"skip_prepare_dataset": True}}, "the prepare step renders, masks and packs"),
    ({"include_num_input_tokens_seen": False}, "the metrics it records"),
    ({"fsdp": "full_shard"}, "distribution"),
])
def test_refused_with_field_and_reason(extra, expected):
    assert expected in _errors(extra)


def test_right_types_pass():
    resolved = validate_mapping({**JOB, "extra_args": {"weight_decay": 0, "adam_beta2": 0.99, "torch_compile": False}})
    assert resolved["spec"]["extra_args"]["weight_decay"] == 0


def test_every_default_of_the_pinned_trl_configs_fits_its_own_type():
    """The type check matches the pinned TRL: no field's own default would be refused."""
    from trl import DPOConfig, KTOConfig, RewardConfig, SFTConfig

    from airtune.train.args import _field_types, value_fits

    for cls in (SFTConfig, DPOConfig, KTOConfig, RewardConfig):
        types = _field_types(cls)
        for f in dataclasses.fields(cls):
            if f.name in types and f.default is not dataclasses.MISSING and isinstance(f.default, (bool, int, float, str, type(None))):
                assert value_fits(f.default, types[f.name]), (cls.__name__, f.name, f.default, types[f.name])
