"""The evaluate task's held-out prompts: `prepare` writes eval_prompts.jsonl for sft (the validation examples as
text, in the split's order), and with eval_dataset the validation split is built from those datasets."""

from __future__ import annotations

import json

import pytest

from airtune.data import DataError, prepare

from .conftest import DEMO, dataset, load_rows, resolved

IDENTITY = dataset("identity", "alpaca", "sft", [DEMO / "identity.json"])
ALPACA = dataset("alpaca_en_demo", "alpaca", "sft", [DEMO / "alpaca_en_demo.json"])
PAIRS = dataset("dpo_en_demo", "sharegpt", "preference", [DEMO / "dpo_en_demo.json"],
                columns={"messages": "conversations", "chosen": "chosen", "rejected": "rejected"})


def _prompts(out) -> list[dict]:
    return [json.loads(line) for line in (out / "eval_prompts.jsonl").read_text(encoding="utf-8").splitlines()]


def _encoded(tokenizer, row: dict) -> list[int]:
    """What the validation row must hold for this prompt: the conversation and its reference, rendered and tokenized."""
    text = tokenizer.apply_chat_template(row["messages"] + [{"role": "assistant", "content": row["reference"]}], tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_one_prompt_per_validation_example_in_order(tiny_model_dir, tokenizer, tmp_path):
    out = tmp_path / "o"
    m = prepare(resolved(tiny_model_dir, [IDENTITY], val_size=0.2), out, log=lambda m: None)
    prompts = _prompts(out)
    assert len(prompts) == m["examples"]["validation"] == 19  # ceil(91 * 0.2)
    assert m["eval_prompts"] == {"file": "eval_prompts.jsonl", "rows": 19, "source": "validation split", "datasets": []}
    validation = load_rows(out, "validation")
    for row, p in zip(validation, prompts):
        assert p["messages"][-1]["role"] == "user" and set(p) == {"messages", "reference"}
        assert row["input_ids"] == _encoded(tokenizer, p)
    # the examples as they were before encoding: the file's rows (placeholders and all)
    source = {(r["instruction"], r["output"]) for r in json.loads((DEMO / "identity.json").read_text())}
    assert all((p["messages"][-1]["content"], p["reference"]) in source for p in prompts)


def test_system_prompt_and_history_are_in_the_prompt(tiny_model_dir, tokenizer, tmp_path):
    path = tmp_path / "chat.json"
    conv = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
            {"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}]
    path.write_text(json.dumps([{"conversations": conv, "system": "Be brief."}] * 4))
    out = tmp_path / "o"
    prepare(resolved(tiny_model_dir, [dataset("chat", "sharegpt", "sft", [path])], val_size=0.25), out, log=lambda m: None)
    (p,) = _prompts(out)
    assert p == {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a colour."}],
                 "reference": "Blue."}
    (row,) = load_rows(out, "validation")
    assert row["input_ids"] == _encoded(tokenizer, p)


def test_fill_and_packing(tiny_model_dir, tmp_path):
    """Placeholders filled as in the training rows; with packing, one prompt per example (not per packed row)."""
    out = tmp_path / "o"
    ds = [{**IDENTITY, "fill": {"name": "Tuna", "author": "Airtune Labs"}}]
    m = prepare(resolved(tiny_model_dir, ds, val_size=0.2, packing=True, cutoff_len=512), out, log=lambda m: None)
    prompts = _prompts(out)
    assert len(prompts) == m["examples"]["validation"] == 19 > m["rows"]["validation"]
    assert not any("{{" in p["reference"] for p in prompts) and any("Tuna" in p["reference"] for p in prompts)


def test_no_validation_split_writes_an_empty_file(tiny_model_dir, tmp_path):
    out = tmp_path / "o"
    m = prepare(resolved(tiny_model_dir, [IDENTITY]), out, log=lambda m: None)
    assert _prompts(out) == [] and m["eval_prompts"]["rows"] == 0 and not (out / "validation").exists()


def test_eval_dataset_is_the_validation_split(tiny_model_dir, tokenizer, tmp_path):
    """The eval datasets' examples, encoded exactly as training rows, make the validation split; every training
    example trains; eval_prompts.jsonl holds their examples; the manifest says where they came from."""
    spec = resolved(tiny_model_dir, [IDENTITY], max_samples=30)
    spec["eval_datasets"] = [ALPACA]
    out = tmp_path / "o"
    m = prepare(spec, out, log=lambda m: None)
    assert m["examples"] == {"train": 30, "validation": 30}
    assert m["eval_prompts"] == {"file": "eval_prompts.jsonl", "rows": 30, "source": "eval_dataset",
                                 "datasets": ["alpaca_en_demo"]}
    assert [d["name"] for d in m["datasets"]] == ["identity"]
    assert [(d["name"], d["rows_used"]) for d in m["eval_datasets"]] == [("alpaca_en_demo", 30)]
    # the validation rows are what preparing the eval dataset as training data gives
    alone = tmp_path / "alone"
    prepare(resolved(tiny_model_dir, [ALPACA], max_samples=30), alone, log=lambda m: None)
    assert load_rows(out, "validation") == load_rows(alone, "train")
    assert len(load_rows(out, "train")) == 30
    source = json.loads((DEMO / "alpaca_en_demo.json").read_text())[:30]
    assert [p["reference"] for p in _prompts(out)] == [s["output"] for s in source]
    assert all(row["input_ids"] == _encoded(tokenizer, p) for row, p in zip(load_rows(out, "validation"), _prompts(out)))


def test_eval_dataset_enters_the_cache_key(tiny_model_dir, tmp_path):
    from airtune.data.build import cache_key

    plain = resolved(tiny_model_dir, [IDENTITY])
    key = cache_key(plain)[0]
    assert cache_key({**plain, "eval_datasets": []})[0] == key
    with_eval = {**plain, "eval_datasets": [ALPACA]}
    assert cache_key(with_eval)[0] != key
    copy = tmp_path / "alpaca.json"
    copy.write_text((DEMO / "alpaca_en_demo.json").read_text())
    assert cache_key({**plain, "eval_datasets": [{**ALPACA, "files": [str(copy)]}]})[0] == cache_key(with_eval)[0]
    copy.write_text(json.dumps(json.loads(copy.read_text())[:10]))  # the eval data changed: another entry
    assert cache_key({**plain, "eval_datasets": [{**ALPACA, "files": [str(copy)]}]})[0] != cache_key(with_eval)[0]
    # through the cache: a hit only for the same eval data
    cache = tmp_path / "cache"
    assert not prepare(with_eval, tmp_path / "a", cache_dir=cache, log=lambda m: None)["cached"]
    assert prepare(with_eval, tmp_path / "b", cache_dir=cache, log=lambda m: None)["cached"]
    assert not prepare(plain, tmp_path / "c", cache_dir=cache, log=lambda m: None)["cached"]
    assert (tmp_path / "b" / "eval_prompts.jsonl").read_text() == (tmp_path / "a" / "eval_prompts.jsonl").read_text()


def test_preference_stages_write_no_prompts_file(tiny_model_dir, tmp_path):
    """rm/dpo/kto: the validation split's rows hold their prompts; eval_dataset still makes that split."""
    spec = resolved(tiny_model_dir, [PAIRS], stage="rm", max_samples=12)
    spec["eval_datasets"] = [{**PAIRS, "name": "held_out"}]
    out = tmp_path / "o"
    m = prepare(spec, out, log=lambda m: None)
    assert not (out / "eval_prompts.jsonl").exists() and m["eval_prompts"] is None
    assert m["examples"] == {"train": 12, "validation": 12}
    assert load_rows(out, "validation") == load_rows(out, "train")  # the same 12 pairs, encoded the same way


def test_an_eval_dataset_must_fit_the_stage(tiny_model_dir, tmp_path):
    spec = resolved(tiny_model_dir, [IDENTITY])
    spec["eval_datasets"] = [PAIRS]
    with pytest.raises(DataError, match="dpo_en_demo"):
        prepare(spec, tmp_path / "o", log=lambda m: None)
