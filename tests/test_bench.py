"""The benchmark scripts' own logic on tiny inputs (bench/): data they make, interleaving, medians and
ratios, the measured child process, and that both tools get the same hyperparameters. The benchmarks
themselves (minutes, and LLaMA-Factory in its own virtualenv) are run by hand: docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import common  # noqa: E402
import lf_train  # noqa: E402
import prepare_bench  # noqa: E402
import train_bench  # noqa: E402


def test_make_alpaca_rows_all_different(tmp_path):
    src = tmp_path / "src.json"
    src.write_text(json.dumps([{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(3)]))
    path = common.make_alpaca(tmp_path / "out.json", 8, source=src)
    rows = json.loads(path.read_text())
    assert len(rows) == 8
    assert len({(r["instruction"], r["output"]) for r in rows}) == 8
    assert rows[3]["instruction"] == "q0 (variant 1)" and rows[3]["output"] == "a0"


def test_order_alternates_and_medians():
    assert common.order(["a", "b"], 0) == ["a", "b"]
    assert common.order(["a", "b"], 1) == ["b", "a"]
    assert common.order(["a", "b"], 0, salt=1) == ["b", "a"]
    runs = [{"tool": "a", "x": v} for v in (3.0, 1.0, 2.0)] + [{"tool": "b", "x": 10.0}]
    med = common.medians(runs, ("tool",), ("x",))
    assert med[("a",)] == {"x": 2.0, "n": 3} and med[("b",)]["x"] == 10.0
    assert common.ratio(6, 2) == 3 and common.ratio(1, 0) != common.ratio(1, 0)  # nan


def test_run_measured_exit_code_and_peak_rss(tmp_path):
    # a child that holds ~200 MB: its own peak RSS is reported, not this process's
    code = "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('{\"ok\": 1}')"
    m = common.run_measured([sys.executable, "-c", code], {}, tmp_path / "log")
    assert m["rc"] == 0 and m["peak_rss_bytes"] > 190 * 2**20
    assert common.last_json_line((tmp_path / "log").read_text()) == {"ok": 1}
    assert common.run_measured([sys.executable, "-c", "raise SystemExit(4)"], {}, tmp_path / "log2")["rc"] == 4
    with pytest.raises(ValueError):
        common.last_json_line("no json here\n")


def test_pinned_env_pins_tokenizer_threads():
    env = common.pinned_env("1", "false", "2")
    assert (env["RAYON_NUM_THREADS"], env["TOKENIZERS_PARALLELISM"], env["OMP_NUM_THREADS"]) == ("1", "false", "2")
    assert env["HF_HUB_OFFLINE"] == "1" and not any(k.startswith("MLFLOW_") for k in env)


def test_prepare_summary_ratio():
    runs = []
    for tool, seconds in (("airtune", [1.0, 2.0, 1.5]), ("llamafactory", [3.0, 3.0, 6.0])):
        for rep, s in enumerate(seconds):
            runs.append({"tool": tool, "workers": 1, "seconds": s, "command_seconds": s + 5, "rows": 100, "tokens": 1000, "repeat": rep})
    (row,) = prepare_bench.summarize(runs, [1])
    assert row["airtune"]["rows_per_s"] == pytest.approx(100 / 1.5)
    assert row["llamafactory"]["tokens_per_s"] == pytest.approx(1000 / 3.0)
    assert row["ratio"] == pytest.approx(2.0)


def test_train_summary_best_of_each_tool():
    runs = [
        {"tool": "airtune", "config": "padded", "tokens_per_s": 100.0, "peak_rss_bytes": 2, "tokens": 1, "train_runtime": 1, "wall_s": 1},
        {"tool": "airtune", "config": "packed", "tokens_per_s": 300.0, "peak_rss_bytes": 2, "tokens": 1, "train_runtime": 1, "wall_s": 1},
        {"tool": "llamafactory", "config": "padded", "tokens_per_s": 120.0, "peak_rss_bytes": 1, "tokens": 1, "train_runtime": 1, "wall_s": 1},
        {"tool": "llamafactory", "config": "packed", "tokens_per_s": 200.0, "peak_rss_bytes": 1, "tokens": 1, "train_runtime": 1, "wall_s": 1},
    ]
    rows = {r["config"]: r for r in train_bench.summarize(runs, ["padded", "packed"])}
    assert rows["padded"]["ratio"] == pytest.approx(100 / 120)
    assert rows["best"]["ratio"] == pytest.approx(1.5) and rows["best"]["rss_ratio"] == 2


def test_airtune_result_reads_the_whole_runs_runtime(tmp_path):
    records = [{"step": 1, "loss": 8.0, "num_tokens": 100.0}, {"step": 2, "loss": 7.0, "num_tokens": 250.0, "train_runtime": 0.5},
               {"step": 2, "train_runtime": 2.0, "train_loss": 7.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    r = train_bench.airtune_result(tmp_path)
    assert (r["tokens"], r["train_runtime"], r["loss_first"], r["loss_last"]) == (250, 2.0, 8.0, 7.0)


def test_both_tools_get_the_same_hyperparameters(tmp_path):
    """The airtune job is valid (validate) and matches LLaMA-Factory's arguments field by field."""
    from airtune.resolve import validate_mapping

    for config in ("padded", "packed"):
        job = train_bench.job_mapping(config, steps=25, batch=8, cutoff=512, rank=8, lr=1e-4)
        spec = validate_mapping(job)["spec"]
        a = argparse.Namespace(model="m", packing=config == "packed", gradient_checkpointing=False, steps=25, batch=8,
                               cutoff=512, rank=8, lr=1e-4)
        lf = lf_train.lf_args(a, tmp_path, tmp_path / "o")
        assert (spec["cutoff_len"], spec["per_device_train_batch_size"], spec["lora_rank"]) == (lf["cutoff_len"], lf["per_device_train_batch_size"], lf["lora_rank"])
        assert (spec["lora_alpha"], spec["lora_dropout"], spec["learning_rate"]) == (lf["lora_alpha"], lf["lora_dropout"], lf["learning_rate"])
        assert spec["packing"] == lf["packing"] and spec["extra_args"]["max_steps"] == lf["max_steps"]
        assert lf["disable_gradient_checkpointing"] is True  # airtune turns it off on the CPU too (args.py)
        assert spec["template"] == lf["template"] == "chatml" and spec["val_size"] == 0
