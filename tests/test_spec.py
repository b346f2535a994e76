"""airtune.spec: every field of the job form (docs/form.md), its defaults, and every rule that needs no catalog.

Each rule is one row of a table: the bad value must be refused with a message that names the field,
the value and what is accepted (docs/form.md), and a good neighbour of it must pass, so a rule that
refused everything would fail here too.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from airtune import spec as S
from airtune.form import param_schema
from airtune.spec import FIELDS, SECTIONS, FieldError, SpecError, parse, show_value

BASE = {"name": "demo-job", "base_model": "tiny-llama-dev", "dataset": "identity"}

# The form's opening and closing keys (docs/form.md): the table (airtune.spec.FIELDS) is the one list of
# keys; docs/form.md is written from it (tests/test_formdoc.py) and the resolved spec's JobSettings is
# generated from it (tests/test_resolved.py), so a new field is added there only.
FIRST_KEYS = ["name", "location", "base_model", "template", "finetuning_method", "stage", "dataset"]
SECTION_STARTS = {1: "name", 2: "gpu_type", 3: "quantization_bit", 4: "lora_target", 5: "eval_dataset"}

# Defaults that decide how a job trains when its file leaves them out (None: empty, filled in by resolve where
# the option applies): pinned here so that changing one is a deliberate edit of the table.
FORM_DEFAULTS = {
    "location": "local", "template": "auto", "finetuning_method": "lora", "stage": "sft", "gpu_type": None,
    "gpus_per_node": None, "learning_rate": 1e-4, "num_train_epochs": 3.0, "compute_type": "auto", "cutoff_len": 2048,
    "per_device_train_batch_size": 8, "val_size": 0.0, "lora_rank": None, "lora_alpha": None, "lora_dropout": None,
    "booster": "auto", "distributed": "auto", "seed": 42, "extra_args": {}, "packing": None, "promote": None,
}


def refused(mapping: dict) -> list[FieldError]:
    with pytest.raises(SpecError) as info:
        parse(mapping)
    return info.value.errors


# -- the table ------------------------------------------------------------------------------------


def test_every_form_key_in_form_order_and_section():
    names = [f.name for f in FIELDS]
    assert names[: len(FIRST_KEYS)] == FIRST_KEYS and len(set(names)) == len(names)
    sections = [f.section for f in FIELDS]
    assert sections == sorted(sections) and set(sections) == {1, 2, 3, 4, 5}  # each section's keys together
    assert {n: next(f.name for f in FIELDS if f.section == n) for n in SECTION_STARTS} == SECTION_STARTS
    assert [(s.number, s.title_en, s.title_zh) for s in SECTIONS[:3]] == [
        (1, "Basic information", "任务基本信息"), (2, "Task configuration", "任务配置"), (3, "Advanced configuration", "高级配置")]
    assert SECTIONS[3].number == 4


def test_docs_form_md_lists_the_same_keys():
    """docs/form.md (written from the table: tests/test_formdoc.py) has these keys, in this order."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "form.md").read_text(encoding="utf-8")
    keys = re.findall(r"^### `([a-z_0-9]+)`$", text, flags=re.M)
    assert keys == [f.name for f in FIELDS]


def test_defaults_are_form_md_defaults():
    result = parse(BASE).to_dict()
    assert set(result) == {f.name for f in FIELDS}
    assert {k: v for k, v in result.items() if k not in BASE} == {f.name: f.default for f in FIELDS if f.name not in BASE}
    for key, default in FORM_DEFAULTS.items():
        assert result[key] == default, key
    assert result["dataset"] == ["identity"]
    json.dumps(result)  # JSON-able


def test_labels_and_help_in_both_languages():
    cjk = re.compile(r"[\u4e00-\u9fff]")
    for f in FIELDS:
        assert f.label_en and f.help_en and not cjk.search(f.label_en), f.name
        assert cjk.search(f.label_zh) and cjk.search(f.help_zh), f.name
        assert f.help("zh") != f.help("en")


@pytest.mark.parametrize("name, label_zh, range_zh", [
    ("learning_rate", "学习率", "1e-5 至 1e-3"),
    ("num_train_epochs", "训练轮数", "1-10"),
    ("max_grad_norm", "最大梯度范数", "0.5-1.0"),
    ("per_device_train_batch_size", "批处理大小", "8-64"),
    ("gradient_accumulation_steps", "梯度累计", "1-8"),
    ("lora_rank", "LoRA秩", "4-16"),
    ("lora_alpha", "LoRA缩放系数", "8-32"),
    ("lora_dropout", "LoRA随机丢弃", "0.1-0.3"),
    ("logging_steps", "日志间隔", "10-1000"),
    ("save_steps", "保存间隔", "1000-5000"),
    ("warmup_steps", "预热步数", "500-2000"),
    ("neftune_noise_alpha", "NEFTune噪声参数", "5"),
    ("name", "任务名称", "由小写字母、数字字符或“-”组成"),
    ("nodes", "任务并行数", "控制多机"),
    ("gpus_per_node", "物理卡数", "控制每台机器使用的卡数"),
])
def test_seed_labels_and_recommended_ranges(name, label_zh, range_zh):
    f = S.field_info(name)
    assert f.label_zh == label_zh
    assert range_zh in f.help("zh")
    if f.recommended_en:
        assert f.recommended_en in f.help("en")


def test_loraplus_help_says_what_it_does():
    f = S.field_info("loraplus_lr_ratio")
    for text in (f.help("en"), f.help("zh")):
        assert "B" in text and "A" in text and "16" in text
        assert "0.5-1.0" not in text  # the seed's recommendation would make B learn slower than A
    assert "LoRA+" in f.help("en")


# -- single-field rules ---------------------------------------------------------------------------

# (field, bad value, extra keys the rule needs, words that must appear in the message, a good value)
SINGLE_FIELD = [
    ("name", "Bad_Name", {}, ["lower-case letters", "63"], "good-name"),
    ("name", "-starts-with-dash", {}, ["starting and ending"], "a1"),
    ("name", "ends-with-dash-", {}, ["starting and ending"], "x"),
    ("name", "a" * 64, {}, ["at most 63 characters"], "a" * 63),
    ("location", 5, {}, ["text"], "k8s-example"),
    ("base_model", ["x"], {}, ["text"], "qwen3-8b"),
    ("finetuning_method", "qlora", {}, ["lora, freeze, full"], "full"),
    ("stage", "ppo", {}, ["grpo", "PPO trainer"], "dpo"),
    ("stage", "orpo", {}, ["pt, sft, rm, dpo, kto, grpo"], "kto"),
    ("dataset", "a,a", {}, ["at most once"], "a,b"),
    ("dataset", [3], {}, ["dataset names"], ["x"]),
    ("reward_model", "Bad_RM", {"stage": "grpo"}, ["lower-case"], "rm-job"),
    ("parent_job", "UPPER", {}, ["lower-case"], "parent-1"),
    ("gpus_per_node", -1, {}, [">= 0"], 0),
    ("gpus_per_node", 1.5, {}, ["an integer >= 0"], 2),
    ("nodes", 0, {}, [">= 1"], 2),
    ("cpu", 0, {}, [">= 1"], 1),
    ("memory_gib", 0, {}, [">= 1"], 1),
    ("learning_rate", 0, {}, ["> 0 and <= 1"], 1),
    ("learning_rate", 1.5, {}, ["> 0 and <= 1"], 1e-5),
    ("learning_rate", "fast", {}, ["a number > 0 and <= 1"], 0.5),
    ("learning_rate", float("nan"), {}, ["a number"], 1e-3),
    ("num_train_epochs", 0, {}, ["> 0 and <= 1000"], 0.5),
    ("num_train_epochs", 1001, {}, ["<= 1000"], 1000),
    ("max_grad_norm", 0, {}, ["> 0"], 0.5),
    ("max_samples", 0, {}, [">= 1"], 1),
    ("compute_type", "fp8", {}, ["auto, bf16, fp16, fp32, pure_bf16"], "fp32"),
    ("cutoff_len", 7, {}, [">= 8 and <= 1048576"], 8),
    ("cutoff_len", 1_048_577, {}, ["<= 1048576"], 1_048_576),
    ("per_device_train_batch_size", 0, {}, [">= 1"], 1),
    ("gradient_accumulation_steps", 0, {}, [">= 1"], 1),
    ("val_size", 1, {}, [">= 0 and < 1"], 0.999),
    ("val_size", -0.1, {}, [">= 0 and < 1"], 0),
    ("lr_scheduler_type", "step", {}, ["cosine_with_min_lr", "warmup_stable_decay"], "linear"),
    ("lora_rank", 0, {}, [">= 1"], 1),
    ("lora_alpha", 0, {}, ["> 0"], 0.5),
    ("lora_dropout", 1, {}, [">= 0 and < 1"], 0),
    ("loraplus_lr_ratio", 0, {}, ["> 0"], 16),
    ("quantization_bit", 3, {}, ["none, 4, 8"], 4),
    ("quantization_method", "gptq", {"quantization_bit": 4}, ["bnb, hqq, eetq"], "hqq"),
    ("rope_scaling", "ntk", {}, ["none, linear, dynamic, yarn, llama3"], "yarn"),
    ("booster", "deepspeed", {}, ["auto, none, flash_attention_2, unsloth, liger_kernel"], "liger_kernel"),
    ("distributed", "fsdp", {}, ["auto, ddp, zero2, zero3, zero3_offload"], "zero2"),
    ("logging_steps", 0, {}, [">= 1"], 1),
    ("save_steps", 0, {}, [">= 1"], 1),
    ("warmup_steps", -1, {}, [">= 0"], 0),
    ("neftune_noise_alpha", -1, {}, [">= 0"], 5),
    ("optimizer", "adam", {}, ["adamw_torch", "lion_8bit"], "adamw_8bit"),
    ("seed", -1, {}, [">= 0"], 0),
    ("seed", 2**32, {}, ["<= 4294967295"], 2**32 - 1),
    ("extra_args", "not-an-object", {}, ["object"], {"weight_decay": 0.01}),
    ("lora_target", "q_proj; v_proj", {}, ["module names"], "q_proj, v_proj"),
    ("lora_target", ["all", "q_proj"], {}, ["not both"], ["q_proj"]),
    ("use_dora", "maybe", {}, ["true or false"], True),
    ("freeze_trainable_layers", 0, {"finetuning_method": "freeze"}, [">= 1"], 1),
    ("pref_loss", "kl", {"stage": "dpo", "dataset": "dpo_en_demo"}, ["sigmoid, ipo, hinge, orpo, simpo"], "simpo"),
    ("pref_beta", 0, {"stage": "kto"}, ["> 0"], 0.5),
    ("packing", "sometimes", {}, ["true or false"], False),
    ("train_on_prompt", 2, {}, ["true or false"], True),
    ("mask_history", "x", {}, ["true or false"], False),
    ("skip_bad_rows", "x", {}, ["true or false"], True),
    ("save_total_limit", 0, {}, [">= 1"], 1),
    ("export_merged", [], {}, ["true or false"], True),
    ("min_lr_rate", 1, {"lr_scheduler_type": "cosine_with_min_lr"}, ["> 0 and < 1"], 0.5),
    ("decay_ratio", 0, {"lr_scheduler_type": "warmup_stable_decay"}, ["> 0 and < 1"], 0.2),
]


@pytest.mark.parametrize("field, bad, extra, words, good", SINGLE_FIELD,
                         ids=[f"{r[0]}={str(r[1])[:20]}" for r in SINGLE_FIELD])
def test_single_field_rule(field, bad, extra, words, good):
    mapping = {**BASE, **extra, field: bad}
    if not words:  # an empty value is no error
        assert parse(mapping)
        return
    errors = refused(mapping)
    assert len(errors) == 1, errors
    err = errors[0]
    text = str(err)
    assert err.field == field
    assert text.startswith(f"{field}: {show_value(bad)} is not accepted: "), text
    for word in words:
        assert word in text, (word, text)
    parse({**BASE, **extra, field: good})  # the rule does not refuse everything


def test_error_message_format():
    errors = refused({**BASE, "learning_rate": 0})
    assert str(errors[0]) == "learning_rate: 0 is not accepted: must be > 0 and <= 1"
    assert str(FieldError("stage", "ppo", "x")) == "stage: 'ppo' is not accepted: x"
    assert str(FieldError("max_samples", None, "x")) == "max_samples: empty is not accepted: x"


@pytest.mark.parametrize("field", ["name", "base_model", "dataset"])
@pytest.mark.parametrize("empty", [None, "", "  ", []])
def test_required_fields(field, empty):
    errors = refused({**BASE, field: empty})
    assert [e.field for e in errors] == [field]
    assert "required" in str(errors[0])


def test_missing_keys_are_required_too():
    errors = refused({})
    assert [e.field for e in errors] == ["name", "base_model", "dataset"]


# -- cross-field rules (no catalog) ---------------------------------------------------------------

# (extra keys, field refused, words in the message; and a mapping that fixes it)
CROSS_FIELD = [
    ({"finetuning_method": "full", "lora_rank": 8}, "lora_rank", ["finetuning_method lora", "'full'"],
     {"finetuning_method": "lora", "lora_rank": 8}),
    ({"finetuning_method": "freeze", "lora_alpha": 16}, "lora_alpha", ["finetuning_method lora"],
     {"finetuning_method": "freeze"}),
    ({"finetuning_method": "full", "lora_dropout": 0.2}, "lora_dropout", ["finetuning_method lora"],
     {"finetuning_method": "full"}),
    ({"finetuning_method": "full", "loraplus_lr_ratio": 16}, "loraplus_lr_ratio", ["finetuning_method lora"],
     {"loraplus_lr_ratio": 16}),
    ({"finetuning_method": "full", "lora_target": "q_proj"}, "lora_target", ["finetuning_method lora"],
     {"lora_target": "q_proj"}),
    ({"finetuning_method": "freeze", "use_dora": True}, "use_dora", ["finetuning_method lora"],
     {"finetuning_method": "freeze", "use_dora": False}),
    ({"finetuning_method": "full", "use_rslora": True}, "use_rslora", ["finetuning_method lora"],
     {"use_rslora": True}),
    ({"finetuning_method": "full", "export_merged": True}, "export_merged", ["finetuning_method lora"],
     {"export_merged": True}),
    ({"quantization_bit": 4, "export_merged": True}, "export_merged", ["quantization"],
     {"quantization_bit": "none", "export_merged": True}),
    ({"finetuning_method": "full", "quantization_bit": 4}, "quantization_bit", ["lora", "QLoRA", "'full'"],
     {"finetuning_method": "lora", "quantization_bit": 4}),
    ({"finetuning_method": "freeze", "quantization_bit": 8}, "quantization_bit", ["lora"],
     {"finetuning_method": "freeze"}),
    ({"quantization_bit": 4, "quantization_method": "eetq"}, "quantization_method", ["8 bits only"],
     {"quantization_bit": 8, "quantization_method": "eetq"}),
    ({"quantization_method": "hqq"}, "quantization_method", ["quantization_bit 4 or 8"],
     {"quantization_method": "hqq", "quantization_bit": 4}),
    ({"quantization_bit": 8, "distributed": "zero3"}, "quantization_bit", ["only 4-bit bnb", "zero3"],
     {"quantization_bit": 4, "distributed": "zero3"}),
    ({"quantization_bit": 4, "quantization_method": "hqq", "distributed": "zero3_offload"}, "quantization_bit",
     ["only 4-bit bnb"], {"quantization_bit": 4, "quantization_method": "hqq", "distributed": "zero2"}),
    ({"booster": "unsloth", "distributed": "zero3"}, "booster", ["ZeRO-3"],
     {"booster": "unsloth", "distributed": "zero2"}),
    ({"stage": "grpo"}, "reward_model", ["required with stage grpo", "rm job"],
     {"stage": "grpo", "reward_model": "my-rm"}),
    ({"stage": "sft", "reward_model": "my-rm"}, "reward_model", ["stage grpo", "'sft'"],
     {"stage": "grpo", "reward_model": "my-rm"}),
    ({"finetuning_method": "lora", "freeze_trainable_layers": 2}, "freeze_trainable_layers",
     ["finetuning_method freeze"], {"finetuning_method": "freeze", "freeze_trainable_layers": 2}),
    ({"stage": "kto", "pref_loss": "ipo"}, "pref_loss", ["stage dpo", "'kto'"], {"stage": "dpo", "pref_loss": "ipo"}),
    ({"stage": "sft", "pref_beta": 0.2}, "pref_beta", ["stage dpo or kto"], {"stage": "kto", "pref_beta": 0.2}),
    ({"stage": "dpo", "packing": True}, "packing", ["stage pt or sft"], {"stage": "pt", "packing": True}),
    ({"stage": "rm", "train_on_prompt": True}, "train_on_prompt", ["stage sft"], {"stage": "sft", "train_on_prompt": True}),
    ({"stage": "pt", "mask_history": True}, "mask_history", ["stage sft"], {"stage": "sft", "mask_history": True}),
    ({"lr_scheduler_type": "cosine", "min_lr_rate": 0.1}, "min_lr_rate", ["cosine_with_min_lr"],
     {"lr_scheduler_type": "cosine_with_min_lr", "min_lr_rate": 0.1}),
    ({"lr_scheduler_type": "linear", "decay_ratio": 0.2}, "decay_ratio", ["warmup_stable_decay"],
     {"lr_scheduler_type": "warmup_stable_decay", "decay_ratio": 0.2}),
    ({"extra_args": {"output_dir": "/tmp/x"}}, "extra_args.output_dir", ["airtune sets this itself"],
     {"extra_args": {"weight_decay": 0.1}}),
    ({"extra_args": {"report_to": "wandb"}}, "extra_args.report_to", ["airtune sets this itself"], {}),
    ({"extra_args": {"deepspeed": "x.json"}}, "extra_args.deepspeed", ["airtune sets this itself"], {}),
    ({"extra_args": {"hub_model_id": "me/x"}}, "extra_args.hub_model_id", ["airtune sets this itself"], {}),
    ({"extra_args": {"local_rank": 0}}, "extra_args.local_rank", ["airtune sets this itself"], {}),
    ({"extra_args": {"learning_rate": 0.1}}, "extra_args.learning_rate", ["the field learning_rate"], {}),
    ({"extra_args": {"optim": "sgd"}}, "extra_args.optim", ["the field optimizer"], {"optimizer": "sgd"}),
]


@pytest.mark.parametrize("extra, field, words, fixed", CROSS_FIELD, ids=[r[1] + "-" + str(i) for i, r in enumerate(CROSS_FIELD)])
def test_cross_field_rule(extra, field, words, fixed):
    errors = refused({**BASE, **extra})
    assert [e.field for e in errors] == [field], errors
    if field.startswith("extra_args."):
        value = extra["extra_args"][field.removeprefix("extra_args.")]
    else:
        value = S.parse_partial({**BASE, **extra})[0].to_dict()[field]  # as parse converted it
    text = str(errors[0])
    assert text.startswith(f"{field}: {show_value(value)} is not accepted: "), text
    for word in words:
        assert word in text, (word, text)
    parse({**BASE, **fixed})


def test_off_booleans_are_no_error_with_any_method():
    """false is the 'off' state of a section-4 switch: no meaning, no harm (the form sends it)."""
    spec = parse({**BASE, "finetuning_method": "full", "use_dora": False, "stage": "dpo", "packing": False,
                  "train_on_prompt": False, "export_merged": False})
    assert spec.use_dora is False and spec.packing is False


def test_all_errors_at_once():
    errors = refused({"name": "Bad Name", "base_model": "tiny-llama-dev", "dataset": "identity", "learning_rate": 0,
                      "cutoff_len": 4, "stage": "ppo", "finetuning_method": "full", "lora_rank": 8, "typo_key": 1,
                      "extra_args": {"report_to": "x"}})
    fields = sorted(e.field for e in errors)
    assert fields == sorted(["name", "learning_rate", "cutoff_len", "stage", "lora_rank", "typo_key",
                             "extra_args.report_to"])
    assert str(SpecError(errors)).count("\n") == len(errors) - 1


def test_unknown_keys_are_refused_by_name():
    errors = refused({**BASE, "learning_rat": 1e-4, "epochs": 3})
    assert [e.field for e in errors] == ["learning_rat", "epochs"]
    assert "did you mean 'learning_rate'" in str(errors[0])
    assert "unknown key" in str(errors[1]) and "did you mean 'num_train_epochs'" in str(errors[1])
    assert "did you mean" not in str(refused({**BASE, "zzzz": 1})[0])


def test_not_a_mapping():
    with pytest.raises(SpecError):
        parse(["name", "x"])


# -- conversions ----------------------------------------------------------------------------------


def test_empty_values_mean_the_default():
    spec = parse({**BASE, "learning_rate": None, "cpu": None, "template": None, "extra_args": {}, "lora_target": [],
                  "gpus_per_node": None, "packing": None, "parent_job": "", "eval_dataset": []})
    assert (spec.learning_rate, spec.cpu, spec.template, spec.extra_args, spec.lora_target) == (1e-4, 8, "auto", {}, None)
    assert spec.parent_job is None and spec.eval_dataset is None
    # Empty is null (YAML: no value), or an empty list / object where the field takes one; "" and spaces are
    # values, refused as the params' schema refuses them (only reward_model / parent_job take "").
    assert [e.field for e in refused({**BASE, "cpu": "", "template": "  ", "use_dora": ""})] == ["cpu", "template", "use_dora"]


def test_dataset_string_or_list():
    assert parse({**BASE, "dataset": "identity, alpaca_en_demo"}).dataset == ["identity", "alpaca_en_demo"]
    assert parse({**BASE, "dataset": " identity ,c4_demo "}).dataset == ["identity", "c4_demo"]
    assert parse({**BASE, "dataset": ["identity", "c4_demo"]}).dataset == ["identity", "c4_demo"]
    assert parse({**BASE, "dataset": ("identity",)}).to_dict()["dataset"] == ["identity"]


def test_yaml_style_values_are_converted():
    spec = parse({**BASE, "learning_rate": 1e-4, "quantization_bit": 4, "use_dora": True, "cutoff_len": 512.0,
                  "stage": "sft", "lora_target": "q_proj, v_proj", "nodes": 2, "num_train_epochs": 1})
    assert spec.learning_rate == 1e-4 and isinstance(spec.learning_rate, float)
    assert spec.quantization_bit == "4" and spec.use_dora is True and spec.cutoff_len == 512
    assert spec.stage == "sft" and spec.lora_target == ["q_proj", "v_proj"] and spec.nodes == 2
    assert isinstance(spec.num_train_epochs, float)
    assert parse({**BASE, "quantization_bit": "int8"}).quantization_bit == "8"
    assert parse({**BASE, "lora_target": " all "}).lora_target == "all"
    assert [e.field for e in refused({**BASE, "cutoff_len": 512.5})] == ["cutoff_len"]
    assert [e.field for e in refused({**BASE, "nodes": True})] == ["nodes"]


# One grammar (tests/test_grammar.py holds the schema to it): a near miss is refused, naming the spelling.
NEAR_MISSES = [
    ("learning_rate", "1e-4", "'1e-4' is text, not a number: write it without quotes"),
    ("nodes", "2", "'2' is text, not a number"),
    ("use_dora", "yes", "'yes' is text: write true without quotes"),
    ("use_dora", 1, "true or false, not the number 1"),
    ("stage", " SFT ", "write 'sft' (lower case, no spaces around it)"),
    ("finetuning_method", "LoRA", "write 'lora'"),
    ("quantization_bit", "INT4", "write 'int4'"),
    ("lora_target", "ALL", "write all in lower case"),
    ("template", " chatml", "without spaces around it: 'chatml'"),
    ("dataset", [" identity"], "without spaces around it ('identity')"),
    ("max_samples", "", "leave the key out or give no value (null), not an empty text"),
    ("name", True, "it was read as true/false"),
]


@pytest.mark.parametrize("field, value, words", NEAR_MISSES, ids=[f"{r[0]}={r[1]!r}" for r in NEAR_MISSES])
def test_near_misses_name_the_spelling(field, value, words):
    errors = refused({**BASE, field: value})
    assert [e.field for e in errors] == [field] and words in str(errors[0]), errors


def test_to_dict_round_trips():
    spec = parse({**BASE, "extra_args": {"weight_decay": 0.01}, "lora_target": ["q_proj"]})
    again = parse({k: v for k, v in spec.to_dict().items()})
    assert again == spec
    d = spec.to_dict()
    d["extra_args"]["weight_decay"] = 1  # a copy, not the spec's own dict
    assert spec.extra_args == {"weight_decay": 0.01}


# -- JSON schema ----------------------------------------------------------------------------------


def test_param_schema_shapes():
    assert param_schema("name") == {"type": "string", "pattern": S.DNS_LABEL_PATTERN, "maxLength": 63, "minLength": 1}
    lr = param_schema("learning_rate")
    assert lr["type"] == ["number", "null"] and lr["exclusiveMinimum"] == 0 and lr["maximum"] == 1
    assert param_schema("val_size")["exclusiveMaximum"] == 1 and param_schema("val_size")["minimum"] == 0
    stage = param_schema("stage")
    assert stage["enum"] == ["pt", "sft", "rm", "dpo", "kto", "grpo", None]
    assert param_schema("base_model")["type"] == "string"
    assert "null" not in param_schema("dataset")["type"]
    assert param_schema("seed")["maximum"] == 2**32 - 1
    extra = param_schema("extra_args")
    jsonschema.validate({"weight_decay": 0.1, "adam_beta2": 0.95}, extra)
    for key in ("output_dir", "report_to", "hub_model_id", "learning_rate", "optim"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({key: 1}, extra)


# Not single-field for the schema: duplicates inside "a,a" text, and NaN (no JSON has it).
SCHEMA_CASES = [r for r in SINGLE_FIELD if r[3] and (r[0], r[1]) != ("dataset", "a,a")
                and not (isinstance(r[1], float) and math.isnan(r[1]))]


@pytest.mark.parametrize("field, bad, extra, words, good", SCHEMA_CASES,
                         ids=[f"{r[0]}={str(r[1])[:20]}" for r in SCHEMA_CASES])
def test_param_schema_refuses_what_parse_refuses(field, bad, extra, words, good):
    """Airflow checks the schema alone at trigger time: it must refuse each single-field bad value,
    and accept the good one as parse writes it (its JSON form)."""
    schema = param_schema(field)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    jsonschema.validate(parse({**BASE, **extra, field: good}).to_dict()[field], schema)


def test_param_schema_accepts_every_default():
    for f in FIELDS:
        if not f.required:
            jsonschema.validate(f.default, param_schema(f.name))
            jsonschema.validate(None, param_schema(f.name))  # empty: the default


def test_import_is_cheap():
    code = ("import sys, airtune.spec; heavy = ['torch', 'transformers', 'airflow', 'mlflow', 'pydantic', 'yaml']; "
            "print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
