"""Stages other than sft: preference pairs (rm, dpo), KTO, plain text (pt), prompts (grpo), each from the
demo files through a LLaMA-Factory dataset_info.json, and in the shapes TRL 1.16's trainers take."""

from __future__ import annotations

import csv
import json

import pytest

from airtune.data import DataError, prepare

from .conftest import DEMO, dataset, entry_dict, load_rows, resolved

IM_END = "<|im_end|>"


def _messages(conv, tags=("from", "value")):
    role = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}
    return [{"role": role[m[tags[0]]], "content": m[tags[1]]} for m in conv]


def test_dpo_demo(tiny_model_dir, tokenizer, lf_catalog, tmp_path):
    entry = lf_catalog.dataset("dpo_en_demo")
    assert (entry.format, entry.kind) == ("sharegpt", "preference")
    out = tmp_path / "o"
    m = prepare(resolved(tiny_model_dir, [entry_dict(entry)], stage="dpo", cutoff_len=100_000), out, log=lambda m: None)
    src = json.loads((DEMO / "dpo_en_demo.json").read_text())
    assert m["rows"] == {"train": 300} and m["truncated_rows"] == 0
    rows = load_rows(out)
    assert set(rows[0]) == {"prompt_ids", "chosen_ids", "rejected_ids", "prompt", "chosen", "rejected"}
    for s, r in zip(src, rows):
        prompt = _messages(s["conversations"])
        want_prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        assert r["prompt_ids"] == tokenizer(want_prompt, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(r["chosen_ids"]) == s["chosen"]["value"] + IM_END
        assert tokenizer.decode(r["rejected_ids"]) == s["rejected"]["value"] + IM_END
        assert r["prompt"] == prompt and r["chosen"] == [{"role": "assistant", "content": s["chosen"]["value"]}]
    assert m["tokens"]["train"] == sum(len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
    # TRL's DPO collator takes the rows as they are
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(rows[:3])
    assert batch["input_ids"].shape[0] == 6


def test_dpo_rows_match_what_trl_prepares_from_the_conversations(tiny_model_dir, tokenizer, tmp_path):
    """TRL 1.16's DPOTrainer always runs its own preparation: from our conversational columns it gets our ids
    (plus the newline chatml writes after <|im_end|>, which we do not train)."""
    from types import SimpleNamespace

    from datasets import load_from_disk
    from trl import DPOConfig, DPOTrainer

    ds = [dataset("dpo", "sharegpt", "preference", [DEMO / "dpo_en_demo.json"],
                  columns={"messages": "conversations", "chosen": "chosen", "rejected": "rejected"})]
    out = tmp_path / "o"
    prepare(resolved(tiny_model_dir, ds, stage="dpo", cutoff_len=100_000, max_samples=20), out, log=lambda m: None)
    ours = load_from_disk(str(out / "train"))
    config = DPOConfig(output_dir=str(tmp_path / "trl"), max_length=None, report_to=[], use_cpu=True)
    theirs = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tokenizer), ours, tokenizer, config, "train")
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    for a, b in zip(load_rows(out), theirs.to_list()):
        assert b["prompt_ids"] == a["prompt_ids"]
        assert b["chosen_ids"] == a["chosen_ids"] + newline and b["rejected_ids"] == a["rejected_ids"] + newline


def test_rm_rows_are_whole_sequences(tiny_model_dir, tokenizer, tmp_path):
    ds = [dataset("dpo", "sharegpt", "preference", [DEMO / "dpo_en_demo.json"],
                  columns={"messages": "conversations", "chosen": "chosen", "rejected": "rejected"})]
    out = tmp_path / "o"
    prepare(resolved(tiny_model_dir, ds, stage="rm", cutoff_len=100_000, max_samples=10), out, log=lambda m: None)
    src = json.loads((DEMO / "dpo_en_demo.json").read_text())[:10]
    for s, r in zip(src, load_rows(out)):
        assert {"chosen_ids", "rejected_ids"} <= set(r) and "prompt_ids" not in r
        full = tokenizer.apply_chat_template(_messages(s["conversations"]) + [{"role": "assistant", "content": s["chosen"]["value"]}],
                                             tokenize=False)
        assert tokenizer.decode(r["chosen_ids"]) == full.rstrip("\n")


def test_kto_demo(tiny_model_dir, tokenizer, lf_catalog, tmp_path):
    entry = lf_catalog.dataset("kto_en_demo")
    assert entry.kind == "kto"
    out = tmp_path / "o"
    m = prepare(resolved(tiny_model_dir, [entry_dict(entry)], stage="kto", cutoff_len=100_000), out, log=lambda m: None)
    src = json.loads((DEMO / "kto_en_demo.json").read_text())
    rows = load_rows(out)
    assert m["rows"] == {"train": 300} and sum(r["label"] for r in rows) == sum(s["label"] for s in src) == 150
    for s, r in zip(src, rows):
        msgs = _messages(s["messages"], ("role", "content"))
        assert tokenizer.decode(r["completion_ids"]) == msgs[-1]["content"] + IM_END
        assert tokenizer.decode(r["prompt_ids"]) == tokenizer.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False)
        assert r["label"] is s["label"]
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    batch = DataCollatorForUnpairedPreference(pad_token_id=tokenizer.pad_token_id)(rows[:4])
    assert batch["label"].tolist() == [r["label"] for r in rows[:4]]


def test_pt_demo_packed_into_blocks(tiny_model_dir, tokenizer, lf_catalog, tmp_path):
    entry = lf_catalog.dataset("c4_demo")
    assert entry.kind == "text"
    out = tmp_path / "o"
    m = prepare(resolved(tiny_model_dir, [entry_dict(entry)], stage="pt", cutoff_len=256, packing=True), out, log=lambda m: None)
    docs = [json.loads(line)["text"] for line in (DEMO / "c4_demo.jsonl").read_text().splitlines() if line.strip()]
    want = [tokenizer(d)["input_ids"] + [tokenizer.eos_token_id] for d in docs]
    rows = load_rows(out)
    flat = [t for r in rows for t in r["input_ids"]]
    assert flat == [t for w in want for t in w]  # every token kept, in order, each document ending in EOS
    assert all(len(r["input_ids"]) == 256 for r in rows[:-1]) and 0 < len(rows[-1]["input_ids"]) <= 256
    assert all(r["labels"] == r["input_ids"] for r in rows)
    # position_ids restart at each document and at each block
    starts, pos = set(), 0
    for w in want:
        starts.add(pos)
        pos += len(w)
    for k, r in enumerate(rows):
        for j, p in enumerate(r["position_ids"]):
            i = k * 256 + j
            assert (p == 0) == (i in starts or j == 0)
    assert m["rows"]["train"] == len(rows) and m["tokens"]["train"] == len(flat) and m["packing"] is True


def test_pt_unpacked_rows_are_truncated_documents(tiny_model_dir, lf_catalog, tmp_path):
    entry = lf_catalog.dataset("c4_demo")
    m = prepare(resolved(tiny_model_dir, [entry_dict(entry)], stage="pt", cutoff_len=128, packing=False), tmp_path / "o",
                log=lambda m: None)
    rows = load_rows(tmp_path / "o")
    assert len(rows) == 300 and max(len(r["input_ids"]) for r in rows) == 128
    assert m["truncated_rows"] == sum(1 for r in rows if len(r["input_ids"]) == 128) > 0


def test_grpo_prompts_from_conversations(tiny_model_dir, tokenizer, tmp_path):
    out = tmp_path / "o"
    prepare(resolved(tiny_model_dir, [dataset("id", "alpaca", "sft", [DEMO / "identity.json"])], stage="grpo"), out,
            log=lambda m: None)
    rows = load_rows(out)
    assert len(rows) == 91 and rows[0]["prompt"] == [{"role": "user", "content": "hi"}]
    assert tokenizer.decode(rows[0]["prompt_ids"]).endswith("<|im_start|>assistant\n")


def test_alpaca_preference_and_kto_in_csv_and_parquet(tiny_model_dir, tokenizer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pref = tmp_path / "pref.csv"
    with open(pref, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["instruction", "input", "chosen", "rejected"])
        w.writerow(["Say hi", "", "Hi!", "No."])
        w.writerow(["Add", "2 and 2", "4", "5"])
    out = tmp_path / "p"
    prepare(resolved(tiny_model_dir, [dataset("p", "alpaca", "preference", [pref])], stage="dpo"), out, log=lambda m: None)
    rows = load_rows(out)
    assert [tokenizer.decode(r["chosen_ids"]) for r in rows] == ["Hi!" + IM_END, "4" + IM_END]
    assert tokenizer.decode(rows[1]["prompt_ids"]) == "<|im_start|>user\nAdd\n2 and 2<|im_end|>\n<|im_start|>assistant\n"
    # LLaMA-Factory's ranking form: output = [chosen, rejected]
    ranked = tmp_path / "ranked.json"
    ranked.write_text(json.dumps([{"instruction": "Say hi", "input": "", "output": ["Hi!", "No."]}]))
    prepare(resolved(tiny_model_dir, [dataset("r", "alpaca", "preference", [ranked])], stage="rm"), tmp_path / "r",
            log=lambda m: None)
    (row,) = load_rows(tmp_path / "r")
    assert tokenizer.decode(row["rejected_ids"]).endswith("assistant\nNo." + IM_END)
    kto = tmp_path / "kto.parquet"
    pq.write_table(pa.table({"instruction": ["a", "b"], "output": ["good", "bad"], "label": [True, False]}), kto)
    prepare(resolved(tiny_model_dir, [dataset("k", "alpaca", "kto", [kto])], stage="kto"), tmp_path / "k", log=lambda m: None)
    assert [r["label"] for r in load_rows(tmp_path / "k")] == [True, False]


def test_pairs_are_cut_to_cutoff_len(tiny_model_dir, tmp_path):
    ds = [dataset("dpo", "sharegpt", "preference", [DEMO / "dpo_en_demo.json"],
                  columns={"messages": "conversations", "chosen": "chosen", "rejected": "rejected"})]
    m = prepare(resolved(tiny_model_dir, ds, stage="dpo", cutoff_len=64, max_samples=30), tmp_path / "o", log=lambda m: None)
    rows = load_rows(tmp_path / "o")
    assert m["truncated_rows"] > 0
    assert all(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= 64 for r in rows)


@pytest.mark.parametrize(("stage", "name", "kind"), [
    ("dpo", "alpaca_en_demo", "sft"), ("sft", "dpo_en_demo", "preference"), ("pt", "alpaca_en_demo", "sft"),
    ("kto", "dpo_en_demo", "preference"), ("sft", "c4_demo", "text"),
])
def test_the_dataset_must_fit_the_stage(tiny_model_dir, stage, name, kind, tmp_path):
    ds = [dataset(name, "alpaca", kind, [DEMO / "identity.json"])]
    with pytest.raises(DataError) as err:
        prepare(resolved(tiny_model_dir, ds, stage=stage), tmp_path / "o", log=lambda m: None)
    assert f"dataset {name!r}" in str(err.value) and f"stage {stage}" in str(err.value)
    assert not (tmp_path / "o").exists()
