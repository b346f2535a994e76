"""Packing, several datasets mixed, and the figures shown before training."""

from __future__ import annotations

import json

from airtune.data import prepare, training_figures

from .conftest import DEMO, SPEC, dataset, load_rows, resolved


def _segments(row: dict) -> list[tuple[tuple, tuple]]:
    """A packed row cut where position_ids restart: (input_ids, labels) of each example."""
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
    return [(tuple(row["input_ids"][a:b]), tuple(row["labels"][a:b])) for a, b in zip(starts, starts[1:])]


def test_sft_packing_keeps_every_example_whole(tiny_model_dir, tmp_path):
    ds = [dataset("alpaca_en_demo", "alpaca", "sft", [DEMO / "alpaca_en_demo.json"])]
    plain = prepare(resolved(tiny_model_dir, ds, cutoff_len=512, val_size=0.1), tmp_path / "plain", log=lambda m: None)
    packed = prepare(resolved(tiny_model_dir, ds, cutoff_len=512, val_size=0.1, packing=True), tmp_path / "packed",
                     log=lambda m: None)
    assert packed["packing"] is True and packed["content_hash"] != plain["content_hash"]
    for split in ("train", "validation"):
        examples = sorted((tuple(r["input_ids"]), tuple(r["labels"])) for r in load_rows(tmp_path / "plain", split))
        rows = load_rows(tmp_path / "packed", split)
        assert all(len(r["input_ids"]) <= 512 and len(r["position_ids"]) == len(r["input_ids"]) == len(r["labels"]) for r in rows)
        assert all(r["position_ids"][0] == 0 for r in rows)
        for r in rows:  # positions count up by one inside an example
            assert all(b == a + 1 for a, b in zip(r["position_ids"], r["position_ids"][1:]) if b != 0)
        assert sorted(seg for r in rows for seg in _segments(r)) == examples
        assert packed["examples"][split] == plain["rows"][split] == len(examples)
        assert packed["rows"][split] == len(rows) < len(examples)
        assert packed["tokens"][split] == plain["tokens"][split]
    # the bins are tight: on average a row is more than 90% full
    rows = load_rows(tmp_path / "packed")
    assert sum(len(r["input_ids"]) for r in rows) / (512 * len(rows)) > 0.9


def test_several_datasets_are_mixed(tiny_model_dir, tokenizer, tmp_path):
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
                                for i in range(7)]))
    ds = [dataset("alpaca_en_demo", "alpaca", "sft", [DEMO / "alpaca_en_demo.json"]),
          dataset("identity", "alpaca", "sft", [DEMO / "identity.json"]),
          dataset("chat", "sharegpt", "sft", [chat])]
    out = tmp_path / "o"
    m = prepare(resolved(tiny_model_dir, ds, max_samples=30, cutoff_len=4096), out, log=lambda m: None)
    assert [(d["name"], d["rows_used"]) for d in m["datasets"]] == [("alpaca_en_demo", 30), ("identity", 30), ("chat", 7)]
    assert m["rows"] == {"train": 67}
    answers = [tokenizer.decode([t for t, lab in zip(r["input_ids"], r["labels"]) if lab != -100]) for r in load_rows(out)]
    assert answers[-7:] == [f"a{i}<|im_end|>" for i in range(7)]
    assert all(d["content_hash"] for d in m["datasets"]) and len({d["content_hash"] for d in m["datasets"]}) == 3


def test_training_figures():
    manifest = {"rows": {"train": 100}, "tokens": {"train": 12_345}, "label_tokens": {"train": 6_000}}
    spec = {**SPEC, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "num_train_epochs": 3.0}
    f = training_figures(manifest, spec)
    # 100 rows / batch 4 = 25 batches; / 2 accumulation = 13 steps an epoch (the last one partial); 3 epochs
    assert (f["steps_per_epoch"], f["total_steps"], f["tokens_per_epoch"]) == (13, 39, 12_345)
    assert f["trained_tokens_per_epoch"] == 6_000 and f["warnings"] == []
    f = training_figures(manifest, {**spec, "warmup_steps": 39})
    assert len(f["warnings"]) == 1 and "39 warmup steps" in f["warnings"][0] and "only 39 optimizer steps" in f["warnings"][0]
    # two machines with 4 GPUs each: 8 processes share the rows
    f = training_figures(manifest, {**spec, "nodes": 2, "gpus_per_node": 4})
    assert (f["processes"], f["steps_per_epoch"], f["total_steps"]) == (8, 2, 6)
    assert training_figures(manifest, {**spec, "extra_args": {"max_steps": 5}})["total_steps"] == 5


def test_figures_match_the_trainer(tiny_model_dir, tmp_path):
    """The step count equals what transformers' Trainer computes for the same rows and arguments."""
    import math

    ds = [dataset("identity", "alpaca", "sft", [DEMO / "identity.json"])]
    m = prepare(resolved(tiny_model_dir, ds, val_size=0.2), tmp_path / "o", log=lambda m: None)
    spec = {**SPEC, "per_device_train_batch_size": 3, "gradient_accumulation_steps": 4, "num_train_epochs": 2.5}
    rows = m["rows"]["train"]  # 72
    len_dataloader = math.ceil(rows / 3)
    per_epoch = max(len_dataloader // 4 + int(len_dataloader % 4 > 0), 1)  # transformers 5 Trainer
    assert training_figures(m, spec)["total_steps"] == math.ceil(2.5 * per_epoch)
