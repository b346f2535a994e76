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

    for config in ("padded", "packed", "default"):
        job = train_bench.job_mapping(config, steps=25, batch=8, cutoff=512, rank=8, lr=1e-4)
        spec = validate_mapping(job)["spec"]
        a = argparse.Namespace(model="m", packing=config == "packed", gradient_checkpointing=False, steps=25, batch=8,
                               cutoff=512, rank=8, lr=1e-4, template="chatml", default_system=None)
        lf = lf_train.lf_args(a, tmp_path, tmp_path / "o")
        assert (spec["cutoff_len"], spec["per_device_train_batch_size"], spec["lora_rank"]) == (lf["cutoff_len"], lf["per_device_train_batch_size"], lf["lora_rank"])
        assert (spec["lora_alpha"], spec["lora_dropout"], spec["learning_rate"]) == (lf["lora_alpha"], lf["lora_dropout"], lf["learning_rate"])
        assert spec["packing"] == lf["packing"] and spec["extra_args"]["max_steps"] == lf["max_steps"]
        assert lf["disable_gradient_checkpointing"] is True  # airtune turns it off on the CPU too (args.py)
        assert spec["template"] == lf["template"] == "chatml" and spec["val_size"] == 0 and "default_system" not in lf
    # LLaMA-Factory's default configuration: checkpointing on; a default system prompt reaches its template
    a.gradient_checkpointing, a.template, a.default_system = True, "smollm2", "You are SmolLM"
    lf = lf_train.lf_args(a, tmp_path, tmp_path / "o")
    assert lf["disable_gradient_checkpointing"] is False and (lf["template"], lf["default_system"]) == ("smollm2", "You are SmolLM")


def test_cases_and_the_filled_identity_data(tmp_path):
    assert train_bench.parse_case("identity:256") == ("identity", 256)
    for bad in ("identity", "nope:256", "identity:x", "identity:0"):
        with pytest.raises(argparse.ArgumentTypeError):
            train_bench.parse_case(bad)
    src = tmp_path / "identity.json"
    src.write_text(json.dumps([{"instruction": "Who are you?", "input": "", "output": "I am {{name}}, by {{author}}. {{name}}!"}]))
    rows = json.loads(train_bench.fill_identity(tmp_path / "out" / "i.json", {"name": "Tuna", "author": "Airtune Labs"}, src).read_text())
    assert rows == [{"instruction": "Who are you?", "input": "", "output": "I am Tuna, by Airtune Labs. Tuna!"}]
    # the catalog's filled entry of identity.json, unless other names are asked for
    entry = argparse.Namespace(name="identity_tuna", files=(Path("data/identity.json"),), fill={"name": "Tuna", "author": "Airtune Labs"})
    plain = argparse.Namespace(name="identity", files=(Path("data/identity.json"),), fill={})
    catalog = argparse.Namespace(datasets={"identity": plain, "identity_tuna": entry})
    assert train_bench.identity_dataset(catalog, None, None) == ("identity_tuna", {"name": "Tuna", "author": "Airtune Labs"}, True)
    assert train_bench.identity_dataset(catalog, "Smol", None) == ("identity", {"name": "Smol", "author": "the airtune team"}, False)
    assert train_bench.identity_dataset(argparse.Namespace(datasets={"identity": plain}), None, None)[2] is False


def test_llamafactory_template_renders_what_airtune_renders():
    assert train_bench.lf_template("<|im_start|>user\nPROBE<|im_end|>\n") == ("chatml", None)
    smol = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nPROBE<|im_end|>\n"
    assert train_bench.lf_template(smol) == ("smollm2", "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    with pytest.raises(SystemExit):
        train_bench.lf_template("[INST] PROBE [/INST]")


def test_compare_tokens_example_by_example():
    same = train_bench.compare_tokens([[1, 2, 3], [4, 5]], [[4, 5], [1, 2, 3]], cutoff=8)
    assert same["same"] and same["identical"] == 2 and same["tokens"] == 5 and same["only_at_cutoff"] is None
    diff = train_bench.compare_tokens([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 6]], cutoff=8)
    assert not diff["same"] and (diff["identical"], diff["only_airtune"], diff["only_llamafactory"]) == (1, 1, 1)
    assert diff["only_at_cutoff"] is False and train_bench.compare_tokens([[1, 2]], [[1, 3]], cutoff=2)["only_at_cutoff"]


def test_warmup_steps_are_left_out_of_the_figure():
    log = [{"step": 1, "time": 100.0, "tokens": 50}, {"step": 2, "time": 102.0, "tokens": 90}, {"step": 3, "time": 106.0, "tokens": 150}]
    assert train_bench.window(log, 1) == (100, 6.0)
    r = train_bench.measure({"tokens": 150, "train_runtime": 10.0, "steps_log": log}, 1)
    assert (r["tokens"], r["seconds"], r["tokens_per_s"], r["tokens_total"]) == (100, 6.0, 100 / 6.0, 150)
    assert train_bench.measure({"tokens": 150, "train_runtime": 10.0, "steps_log": log}, 0)["tokens_per_s"] == 15.0
    with pytest.raises(ValueError):
        train_bench.window(log, 3)  # nothing measured after the warm-up


def test_summary_per_case_with_each_tools_default():
    def run(tool, case, config, tps, rss):
        return {"tool": tool, "case": case, "config": config, "tokens_per_s": tps, "peak_rss_bytes": rss, "tokens": 1,
                "seconds": 1, "train_runtime": 1, "wall_s": 1}

    runs = []
    for case, k in (("identity@256", 1), ("alpaca_en_demo@512", 2)):
        runs += [run("airtune", case, "padded", 100 * k, 2), run("airtune", case, "packed", 80 * k, 3),
                 run("llamafactory", case, "default", 25 * k, 4), run("llamafactory", case, "padded", 50 * k, 6),
                 run("llamafactory", case, "packed", 40 * k, 5)]
    rows = {(r["case"], r["config"]): r for r in train_bench.summarize(runs, ["default", "padded", "packed"])}
    assert len(rows) == 8  # 3 configurations and the best, per case
    default = rows[("identity@256", "default")]  # airtune's default is its padded run
    assert default["airtune"]["tokens_per_s"] == 100 and default["ratio"] == pytest.approx(4.0) and default["rss_ratio"] == 0.5
    best = rows[("alpaca_en_demo@512", "best")]
    assert (best["airtune"]["config"], best["llamafactory"]["config"], best["ratio"]) == ("padded", "padded", pytest.approx(2.0))


def test_model_dir_option(tiny_model_dir, tmp_path):
    """--model-dir: a catalog model's folder elsewhere, or a folder outside the catalog (trained with its own
    chat template, validated as the tiny base model); both tools then get the same folder and template."""
    at = train_bench.resolve_model(None, tiny_model_dir, tmp_path)  # the folder's name is a catalog model's
    assert (at["base_model"], at["template"], at["dir"]) == ("tiny-llama-dev", "chatml", tiny_model_dir)
    assert train_bench.lf_template(train_bench.render_probe(at)) == ("chatml", None)

    own = tmp_path / "my-model"
    own.mkdir()
    (own / "config.json").write_text("{}")
    (own / "chat_template.jinja").write_text("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    m = train_bench.resolve_model(None, own, tmp_path / "work")
    assert (m["name"], m["base_model"], m["template_name"]) == ("my-model", "tiny-llama-dev", "my-model (its own)")
    assert Path(m["template_path"]).read_text() == (own / "chat_template.jinja").read_text()
    resolved = train_bench.resolved_job("padded", m, tmp_path / "filled.json", steps=7, batch=8, cutoff=256, rank=16,
                                        lr=1e-3, dataset="identity")
    assert resolved["model"]["weights"] == str(own) and resolved["template"]["path"] == str(m["template_path"])
    assert resolved["datasets"][0]["files"] == [str(tmp_path / "filled.json")] and resolved["spec"]["lora_rank"] == 16
    with pytest.raises(SystemExit, match="not in the catalog"):
        train_bench.resolve_model("no-such-model", None, tmp_path)
    with pytest.raises(SystemExit, match="no model at"):
        train_bench.resolve_model(None, tmp_path / "missing", tmp_path)


def test_smollm2_template_maps_to_llamafactorys_with_its_exact_system_prompt(tiny_model_dir):
    """SmolLM2-Instruct's template (configs/templates/smollm2.jinja) is LLaMA-Factory's smollm2 with
    default_system set: LLaMA-Factory's own default ends with a full stop SmolLM2's template lacks."""
    path = REPO / "configs" / "templates" / "smollm2.jinja"
    if not path.is_file():
        pytest.skip("no smollm2 template in the catalog")
    rendered = train_bench.render_probe({"dir": tiny_model_dir, "template_path": path})
    assert train_bench.lf_template(rendered) == ("smollm2", "You are a helpful AI assistant named SmolLM, trained by Hugging Face")


def test_memory_probe_places_readings_by_the_trainers_own_lines(tiny_model_dir, tmp_path, capsys):
    """bench/memory_probe.py on the tiny model: the real trainer runs, every phase it reads from the trainer's
    output is there in order (a changed output line would leave a phase out), and the figures are real readings."""
    import memory_probe

    out = tmp_path / "probe.json"
    assert memory_probe.main(["--model", "tiny-llama-dev", "--dataset", "identity", "--cutoff", "64", "--batch", "4",
                              "--rank", "8", "--steps", "3", "--threads", "1", "--model-dir", str(tiny_model_dir),
                              "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    phases = [p["phase"] for p in result["phases"]]
    assert phases == ["imports done (first output)", "model loaded, LoRA applied", "step 1 logged", "step 2 logged",
                      "step 3 logged", "done"], phases
    seconds = [p["seconds"] for p in result["phases"]]
    assert seconds == sorted(seconds)
    peaks = [p["peak_gib"] for p in result["phases"]]
    assert peaks == sorted(peaks) and 0.1 < result["peak_gib"] < 8  # VmHWM never falls; a Python with torch > 100 MB
    assert result["tokens_per_second"] and result["tokens_per_second"] > 0
    assert "peak RSS of the training process" in capsys.readouterr().out
