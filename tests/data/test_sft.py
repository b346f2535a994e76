"""Stage sft: alpaca and conversation data rendered with the chat template, labels on the answers only."""

from __future__ import annotations

import json
import math

import pytest

from airtune.data import load_prepared, prepare

from .conftest import DEMO, REPO, dataset, entry_dict, load_rows, resolved, trained_text

IM_END = "<|im_end|>"


def test_alpaca_demo_through_dataset_info(tiny_model_dir, tokenizer, lf_catalog, tmp_path):
    """LLaMA-Factory's alpaca demo, registered through its dataset_info.json: every row, answers only trained."""
    entry = lf_catalog.dataset("alpaca_en_demo")
    out = tmp_path / "data"
    manifest = prepare(resolved(tiny_model_dir, [entry_dict(entry)], cutoff_len=2048), out, log=lambda m: None)
    source = json.loads((DEMO / "alpaca_en_demo.json").read_text())
    assert manifest["rows"] == {"train": 999} and manifest["examples"]["train"] == 999
    assert manifest["stage"] == "sft" and manifest["truncated_rows"] == 0
    rows = load_rows(out)
    for src, row in zip(source, rows):  # no packing, no split: rows keep the file's order
        assert trained_text(tokenizer, row) == src["output"] + IM_END
        prompt = "\n".join(x for x in (src["instruction"], src["input"]) if x)
        expected = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": src["output"]}], tokenize=False)
        assert row["input_ids"] == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert manifest["tokens"]["train"] == sum(len(r["input_ids"]) for r in rows)
    assert manifest["label_tokens"]["train"] == sum(sum(1 for x in r["labels"] if x != -100) for r in rows)
    assert (out / "chat_template.jinja").read_text() == (REPO / "configs" / "templates" / "chatml.jinja").read_text()
    assert manifest["template"]["name"] == "chatml" and len(manifest["template"]["sha256"]) == 64
    train, validation, loaded = load_prepared(out)
    assert len(train) == 999 and validation is None and loaded["content_hash"] == manifest["content_hash"]


def test_sharegpt_multiturn_with_system_and_history_masks(tiny_model_dir, tokenizer, tmp_path):
    conv = [
        {"from": "human", "value": "Hi there"},
        {"from": "gpt", "value": "Hello! How can I help?"},
        {"from": "human", "value": "Name a colour."},
        {"from": "gpt", "value": "Blue."},
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([{"conversations": conv, "system": "Be brief."}]))
    ds = [dataset("chat", "sharegpt", "sft", [path])]
    both = load_rows_of(tiny_model_dir, ds, tmp_path / "a")
    assert trained_text(tokenizer, both) == "Hello! How can I help?" + IM_END + "Blue." + IM_END
    last = load_rows_of(tiny_model_dir, ds, tmp_path / "b", mask_history=True)
    assert trained_text(tokenizer, last) == "Blue." + IM_END
    everything = load_rows_of(tiny_model_dir, ds, tmp_path / "c", train_on_prompt=True)
    assert everything["labels"] == everything["input_ids"]
    text = tokenizer.decode(both["input_ids"])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there")


def load_rows_of(model_dir, ds, out, **spec):
    prepare(resolved(model_dir, ds, **spec), out, log=lambda m: None)
    (row,) = load_rows(out)
    return row


def test_alpaca_system_and_history(tiny_model_dir, tokenizer, tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "And 3+3?", "input": "", "output": "6", "system": "You add.",
                                "history": [["1+1?", "2"], ["2+2?", "4"]]}) + "\n")
    row = load_rows_of(tiny_model_dir, [dataset("a", "alpaca", "sft", [path])], tmp_path / "o")
    assert trained_text(tokenizer, row) == f"2{IM_END}4{IM_END}6{IM_END}"
    assert tokenizer.decode(row["input_ids"]).startswith("<|im_start|>system\nYou add.<|im_end|>")


def test_openai_messages(tiny_model_dir, tokenizer, tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
                          {"role": "assistant", "content": "A1"}]},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "Q2"}]},
                          {"role": "assistant", "content": "A2"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "o"
    prepare(resolved(tiny_model_dir, [dataset("m", "openai", "sft", [path])]), out, log=lambda m: None)
    got = [trained_text(tokenizer, r) for r in load_rows(out)]
    assert got == ["A1" + IM_END, "A2" + IM_END]


def test_truncation_split_and_max_samples(tiny_model_dir, tokenizer, tmp_path):
    ds = [dataset("alpaca_en_demo", "alpaca", "sft", [DEMO / "alpaca_en_demo.json"])]
    out = tmp_path / "o"
    m = prepare(resolved(tiny_model_dir, ds, cutoff_len=64, val_size=0.25, max_samples=200), out, log=lambda m: None)
    kept = 200 - sum(m["dropped_rows"].values())  # a prompt longer than 64 tokens leaves nothing to train on
    assert m["datasets"][0]["rows_read"] == 200
    assert m["rows"] == {"train": kept - math.ceil(kept * 0.25), "validation": math.ceil(kept * 0.25)}
    lengths = [len(r["input_ids"]) for split in ("train", "validation") for r in load_rows(out, split)]
    assert max(lengths) == 64 and 0 < m["truncated_rows"] - sum(m["dropped_rows"].values()) <= lengths.count(64)
    # the same seed gives the same split; another seed another one
    again = prepare(resolved(tiny_model_dir, ds, cutoff_len=64, val_size=0.25, max_samples=200), tmp_path / "p", log=lambda m: None)
    assert load_rows(out, "validation") == load_rows(tmp_path / "p", "validation") and again["content_hash"] == m["content_hash"]
    other = tmp_path / "q"
    prepare(resolved(tiny_model_dir, ds, cutoff_len=64, val_size=0.25, max_samples=200, seed=7), other, log=lambda m: None)
    assert load_rows(other, "validation") != load_rows(out, "validation")


def test_rows_with_nothing_to_train_are_dropped(tiny_model_dir, tmp_path):
    path = tmp_path / "long.json"
    path.write_text(json.dumps([{"instruction": "word " * 200, "input": "", "output": "yes"},
                                {"instruction": "short", "input": "", "output": "ok"}]))
    m = prepare(resolved(tiny_model_dir, [dataset("l", "alpaca", "sft", [path])], cutoff_len=32), tmp_path / "o",
                log=lambda m: None)
    assert m["rows"] == {"train": 1} and m["dropped_rows"] == {"no_labels_after_truncation": 1}
    assert m["truncated_rows"] == 1


@pytest.mark.parametrize("num_proc", [2])
def test_several_processes_give_the_same_rows(tiny_model_dir, tmp_path, num_proc):
    ds = [dataset("alpaca_en_demo", "alpaca", "sft", [DEMO / "alpaca_en_demo.json"])]
    a = prepare(resolved(tiny_model_dir, ds, cutoff_len=256, max_samples=600), tmp_path / "a", num_proc=1, log=lambda m: None)
    b = prepare(resolved(tiny_model_dir, ds, cutoff_len=256, max_samples=600), tmp_path / "b", num_proc=num_proc, log=lambda m: None)
    assert a["content_hash"] == b["content_hash"]
    assert load_rows(tmp_path / "a") == load_rows(tmp_path / "b")


def test_cache_hit_prepares_nothing(tiny_model_dir, tmp_path, monkeypatch):
    ds = [dataset("identity", "alpaca", "sft", [DEMO / "identity.json"])]
    spec = resolved(tiny_model_dir, ds, val_size=0.1)
    first = prepare(spec, tmp_path / "job1" / "data", cache_dir=tmp_path / "cache", log=lambda m: None)
    assert first["cached"] is False

    import airtune.data.build as prep

    def fail(*a, **k):
        raise AssertionError("prepared twice")

    monkeypatch.setattr(prep, "_build", fail)
    second = prepare(spec, tmp_path / "job2" / "data", cache_dir=tmp_path / "cache", log=lambda m: None)
    assert second["cached"] is True and second["content_hash"] == first["content_hash"]
    assert load_rows(tmp_path / "job2" / "data") == load_rows(tmp_path / "job1" / "data")
    assert json.loads((tmp_path / "job2" / "data" / "manifest.json").read_text())["cached"] is True
    # the job's files are links into the cache, not copies
    arrow = next((tmp_path / "job2" / "data" / "train").glob("*.arrow"))
    assert arrow.stat().st_nlink >= 2
    # another option is another entry
    monkeypatch.undo()
    third = prepare(resolved(tiny_model_dir, ds, val_size=0.1, cutoff_len=100), tmp_path / "job3" / "data",
                    cache_dir=tmp_path / "cache", log=lambda m: None)
    assert third["cached"] is False and third["content_hash"] != first["content_hash"]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]


def test_sharegpt_function_calls_and_observations(tiny_model_dir, tokenizer, tmp_path):
    """LLaMA-Factory's tool-call form: function_call and observation turns, tools as a JSON string."""
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    tools = [{"name": "get_weather", "description": "Weather of a city", "parameters": {"type": "object"}}]
    row = {"conversations": [{"from": "human", "value": "Weather in Paris?"},
                             {"from": "function_call", "value": json.dumps(call)},
                             {"from": "observation", "value": "sunny"},
                             {"from": "gpt", "value": "It is sunny."}],
           "tools": json.dumps(tools)}
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([row]))
    out = tmp_path / "o"
    m = prepare(resolved(tiny_model_dir, [dataset("t", "sharegpt", "sft", [path])]), out, log=lambda m: None)
    (r,) = load_rows(out)
    # chatml has no tool syntax: the call is written as JSON, the observation is a "tool" turn (not trained)
    assert trained_text(tokenizer, r) == json.dumps(call) + IM_END + "It is sunny." + IM_END
    assert "<|im_start|>tool\nsunny<|im_end|>" in tokenizer.decode(r["input_ids"])
    assert any("does not render tool descriptions: 1 rows" in w for w in m["warnings"])


def test_prepare_can_be_called_twice_in_one_process(tiny_model_dir, tmp_path):
    """The package's prepare() stays a function once its implementation module has been imported."""
    from airtune import data

    rows = [{"instruction": "Say hi", "input": "", "output": "Hi"}] * 4
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows))
    for k in range(2):
        m = data.prepare(resolved(tiny_model_dir, [dataset("a", "alpaca", "sft", [path])]), tmp_path / f"o{k}", log=lambda m: None)
        assert m["rows"]["train"] == 4
