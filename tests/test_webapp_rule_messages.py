"""validate's messages in Chinese on the create wizard (airtune.webapp.rule_messages, create.check).

Every rule between fields of airtune.spec (formdoc's examples: the jobs docs/form.md quotes), every
single-field refusal a set of wrong values provokes, and resolve's catalog / hardware / earlier-job
rules, as create.check answers them for a Chinese page: each message is Chinese, names fields by the
table's Chinese labels, and the English message (the CLI's, the validate task's) is kept unchanged
beside it.
"""

from __future__ import annotations

import re

import pytest

from airtune import formdoc
from airtune.spec import FIELD_BY_NAME, FIELDS, SpecError, parse_partial
from airtune.webapp import create, rule_messages
from airtune.webapp.rule_messages import message_zh

CJK = re.compile(r"[\u4e00-\u9fff]")
BASE = {"name": "zh-job", "base_model": "tiny-llama-dev", "dataset": ["identity"]}
# Wrong values of every kind: types, number text, case and spaces, limits, empty text, lists, objects.
WRONG = [True, False, 0, 1, -1, 1.5, 10**9, 1e400, "8", "1e-4", "yes", "x", " x", "LoRA", " lora", "SFT", "ppo", "",
         "  ", "ALL", "all, q_proj", "q_proj; v_proj", ["all", "q_proj"], ["x y"], ["identity", "identity"],
         [" identity"], [1], "identity,identity", "a" * 70, {"output_dir": "/x"}, {"optim": "sgd"}, {1: 2}, "Bad_Name"]


def _assert_chinese(field: str, message: str) -> str:
    zh = message_zh(field, message)
    assert zh is not None, f"no Chinese for the message of {field}: {message!r} (add a rule to webapp/rule_messages.py)"
    assert CJK.search(zh), (field, message, zh)
    assert not re.search(r"\b(must|only with|this job|leave it|accepted:|use that|either|instructions|pairs)\b", zh), \
        (field, message, zh)
    return zh


def test_every_rule_between_fields_has_its_chinese():
    rules = formdoc.rule_messages()
    assert sum(len(v) for v in rules.values()) >= 30  # used_with ones and RULE_EXAMPLES
    for field, examples in rules.items():
        for example, message in examples:
            _assert_chinese(field, message)


@pytest.mark.parametrize("name", [f.name for f in FIELDS])
def test_every_single_field_refusal_has_its_chinese(name):
    seen = 0
    for value in WRONG:
        _, errors, _ = parse_partial({**BASE, name: value})
        for e in errors:
            _assert_chinese(e.field, e.message)
            seen += 1
    assert seen, name


def test_the_field_phrases_come_from_the_table():
    lr = FIELD_BY_NAME["learning_rate"]
    assert message_zh("learning_rate", f"must be {lr.limits_text()}") == "须为 > 0 且 <= 1"
    epochs = FIELD_BY_NAME["num_train_epochs"]
    assert message_zh("num_train_epochs", f"must be {epochs.accepted()}, not true/false") == \
        f"须为{epochs.accepted('zh')}，不能是 true/false"
    _, errors, _ = parse_partial({**BASE, "finetuning_method": "full", "lora_rank": 4})
    (e,) = errors
    assert message_zh(e.field, e.message) == "仅用于微调方法为 lora 时（本任务的微调方法为 'full'）；请留空"
    assert rule_messages.message(e.field, e.message, "en") == e.message
    assert message_zh("name", "a message no rule knows") is None


@pytest.fixture
def workspace(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("AIRTUNE_HOME", str(tmp_path / "home"))


# Jobs that break resolve's rules (the catalog, the hardware, earlier jobs); create.check answers them.
RESOLVE_JOBS = [
    {"nodes": 2},
    {"compute_type": "pure_bf16"},  # (bf16 on this CPU depends on its instructions: tested below)
    {"compute_type": "fp16"},
    {"distributed": "zero3"},
    {"booster": "flash_attention_2"},
    {"booster": "liger_kernel"},
    {"booster": "unsloth"},
    {"quantization_bit": "8", "quantization_method": "eetq"},
    {"base_model": "qwen2.5-7b-instruct", "template": "chatml"},
    {"gpus_per_node": 2, "gpu_type": "cpu"},
    {"location": "k8s-example", "gpus_per_node": 0},
    {"location": "k8s-example", "gpu_type": "cpu"},
    {"location": "k8s-example", "gpu_type": "nvidia-t4", "gpus_per_node": 9},
    {"location": "k8s-example", "gpu_type": "nvidia-t4", "compute_type": "bf16", "gpus_per_node": 1},
    {"location": "k8s-example", "gpu_type": "nvidia-t4", "base_model": "qwen2.5-7b-instruct", "finetuning_method": "full",
     "gpus_per_node": 1},
    {"finetuning_method": "freeze", "freeze_trainable_layers": 999},
    {"stage": "dpo"},
    {"parent_job": "no-such-job"},
    {"stage": "grpo", "reward_model": "no-such-rm"},
    {"extra_args": {"no_such_argument": 1}},
    {"extra_args": {"weight_decay": "heavy"}},
]


@pytest.mark.parametrize("job", RESOLVE_JOBS, ids=[",".join(j) for j in RESOLVE_JOBS])
def test_the_wizard_answers_a_chinese_page_in_chinese(workspace, job):
    zh = create.check({**BASE, **job}, "zh")
    en = create.check({**BASE, **job}, "en")
    assert zh["errors"], job
    assert [r["message_en"] for r in zh["errors"]] == [r["message"] for r in en["errors"]] == \
           [r["message_en"] for r in en["errors"]]  # English unchanged, the same in both
    for row in zh["errors"]:
        assert row["message"] == _assert_chinese(row["field"], row["message_en"]), row
    assert zh["by_field"] == en["by_field"]  # the fields a rule names come from the English message


def test_a_job_that_does_not_fit_is_refused_in_chinese(workspace):
    job = {**BASE, "location": "k8s-example", "gpu_type": "nvidia-t4", "base_model": "qwen2.5-7b-instruct",
           "finetuning_method": "full", "gpus_per_node": 1}
    zh, en = create.check(job, "zh"), create.check(job, "en")
    assert zh["fits"] == en["fits"] == "no"
    assert en["refusal"].startswith("this job needs about") and "GPU memory" in en["refusal"]
    assert zh["refusal"].startswith("本任务每个进程约需") and "nvidia-t4" in zh["refusal"]


def test_bf16_on_a_cpu_without_bf16_instructions_in_chinese():
    from airtune.resolve import validate_mapping

    with pytest.raises(SpecError) as info:
        validate_mapping({**BASE, "compute_type": "bf16"}, hardware={"cuda_devices": 0, "cpu_bf16": False})
    (e,) = info.value.errors
    assert message_zh(e.field, e.message) == "在CPU上使用bf16需要支持AVX-512 BF16或AMX指令的CPU，本机CPU两者皆无；请使用 fp32 或 auto"
