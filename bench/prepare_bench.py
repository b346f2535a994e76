"""Preparation throughput: airtune against LLaMA-Factory's own preprocessing, same machine, same run.

    bash bench/setup_llamafactory.sh          # once: LLaMA-Factory 0.9.5 in its own virtualenv
    .venv/bin/python bench/prepare_bench.py [--rows 20000] [--repeats 3] [--workers 1 2]

What is measured: an alpaca-format JSON file of `--rows` rows (LLaMA-Factory's alpaca_en_demo, repeated
with a variant tag on the instruction so rows differ), the tiny model's tokenizer, template chatml,
cutoff_len 512, SFT. Each tool runs in its own process on a cold cache (airtune: no prepare cache;
LLaMA-Factory: a fresh datasets cache and overwrite_cache), writing its result to disk (airtune:
train/ + manifest; LLaMA-Factory: `tokenized_path`), with the same number of processes and the fast
tokenizer's threads pinned the same way for both (RAYON_NUM_THREADS, TOKENIZERS_PARALLELISM). Runs
are interleaved (the order alternates each repeat) because these machines are shared; medians are
quoted, and the ratio is what to compare.

Two times per run: `processing`: load + check + template + tokenize + write, with the tokenizer
already loaded (LLaMA-Factory: its `get_dataset` call; airtune: `prepare` less its tokenizer
loading); `command`: the whole process, imports and tokenizer loading included.

LLaMA-Factory is installed by bench/setup_llamafactory.sh into its own virtualenv (the recipe: docs/benchmarks.md, Setup).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LF_PYTHON, REPO, last_json_line, make_alpaca, medians, order, pinned_env, ratio, run_measured, write_report  # noqa: E402


def run_airtune(data: Path, model: Path, workers: int, cutoff: int, out: Path) -> dict:
    """One airtune run, in this process (called in a fresh subprocess by the driver)."""
    t0 = time.time()
    import datasets  # noqa: F401  imported before the clock starts, as LLaMA-Factory's run has it imported
    import transformers  # noqa: F401

    from airtune.data import prepare

    resolved = {
        "spec": {"stage": "sft", "cutoff_len": cutoff, "packing": False, "val_size": 0.0, "seed": 42},
        "model": {"weights": str(model), "revision": None},
        "template": {"name": "chatml", "path": str(REPO / "configs" / "templates" / "chatml.jinja")},
        "datasets": [{"name": "bench", "format": "alpaca", "kind": "sft", "files": [str(data)], "columns": {}, "tags": {}}],
    }
    t1 = time.time()
    m = prepare(resolved, out, cache_dir=None, num_proc=workers, log=lambda msg: None)
    seconds = time.time() - t1 - m["timings"].get("load_tokenizer", 0.0)
    return {"tool": "airtune", "seconds": seconds, "setup_seconds": t1 - t0 + m["timings"].get("load_tokenizer", 0.0),
            "rows": m["rows"]["train"], "tokens": m["tokens"]["train"], "workers": workers, "processes": m["processes"],
            "timings": m["timings"]}


def _one(cmd: list[str], env: dict, log: Path) -> dict:
    m = run_measured(cmd, env, log)
    text = log.read_text(encoding="utf-8", errors="replace")
    if m["rc"] != 0:
        raise SystemExit(f"failed ({m['rc']}): {' '.join(cmd)}\n{text[-4000:]}")
    result = last_json_line(text)
    result["command_seconds"] = m["wall_s"]
    result["peak_rss_bytes"] = m["peak_rss_bytes"]
    return result


def summarize(runs: list[dict], workers_list: list[int]) -> list[dict]:
    """Medians per (tool, workers) and the ratio airtune / LLaMA-Factory of the processing rates."""
    med = medians(runs, ("tool", "workers"), ("seconds", "command_seconds", "rows", "tokens"))
    out = []
    for w in workers_list:
        row = {"workers": w}
        for tool in ("airtune", "llamafactory"):
            m = med[(tool, w)]
            row[tool] = {**m, "rows_per_s": m["rows"] / m["seconds"], "tokens_per_s": m["tokens"] / m["seconds"]}
        row["ratio"] = ratio(row["airtune"]["rows_per_s"], row["llamafactory"]["rows_per_s"])
        row["command_ratio"] = ratio(row["llamafactory"]["command_seconds"], row["airtune"]["command_seconds"])
        out.append(row)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cutoff", type=int, default=512)
    p.add_argument("--rayon-threads", default="1", help="RAYON_NUM_THREADS for both tools")
    p.add_argument("--tokenizers-parallelism", default="false", help="TOKENIZERS_PARALLELISM for both tools")
    p.add_argument("--work", type=Path, default=REPO / ".airtune" / "bench" / "prepare")
    p.add_argument("--model", type=Path, help="tokenizer folder (default: the tiny model, built if missing)")
    p.add_argument("--lf-python", type=Path, default=LF_PYTHON)
    p.add_argument("--json-out", type=Path, help="also write every run and the summary here")
    p.add_argument("--airtune-run", nargs=5, metavar=("DATA", "MODEL", "WORKERS", "CUTOFF", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.airtune_run:
        data, model, workers, cutoff, out = a.airtune_run
        print(json.dumps(run_airtune(Path(data), Path(model), int(workers), int(cutoff), Path(out))))
        return 0

    if not a.lf_python.exists():
        raise SystemExit(f"LLaMA-Factory is not installed at {a.lf_python}: run bash bench/setup_llamafactory.sh")
    from airtune.tinymodel import make_tiny_model

    model = make_tiny_model(a.model)  # $AIRTUNE_HOME/models/tiny-llama-dev unless --model
    data = make_alpaca(a.work / f"alpaca_{a.rows}.json", a.rows)
    env = pinned_env(a.rayon_threads, a.tokenizers_parallelism)
    runs = []
    for rep in range(a.repeats):
        for workers in a.workers:
            for tool in order(["airtune", "llamafactory"], rep, workers):
                out = a.work / "out" / f"{tool}-{workers}-{rep}"
                shutil.rmtree(out, ignore_errors=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                if tool == "airtune":
                    cmd = [sys.executable, __file__, "--airtune-run", str(data), str(model), str(workers), str(a.cutoff), str(out)]
                else:
                    cmd = [str(a.lf_python), str(REPO / "bench" / "lf_prepare.py"), "--data", str(data), "--model", str(model),
                           "--workers", str(workers), "--cutoff", str(a.cutoff), "--out", str(out)]
                r = _one(cmd, env, a.work / "logs" / f"{tool}-{workers}-{rep}.log")
                r["repeat"] = rep
                runs.append(r)
                print(f"  {tool:12s} workers={workers} repeat={rep}: {r['seconds']:.2f} s processing, "
                      f"{r['command_seconds']:.2f} s command, {r['rows']} rows, {r['tokens']} tokens", file=sys.stderr, flush=True)
                shutil.rmtree(out, ignore_errors=True)
    summary = summarize(runs, a.workers)
    print(f"\n{a.rows} alpaca rows, tiny tokenizer, chatml, cutoff {a.cutoff}; RAYON_NUM_THREADS={a.rayon_threads} "
          f"TOKENIZERS_PARALLELISM={a.tokenizers_parallelism}; medians of {a.repeats}")
    print(f"{'workers':>7} {'tool':>12} {'rows/s':>9} {'tokens/s':>11} {'command s':>10}   ratio (airtune / LLaMA-Factory)")
    for row in summary:
        for tool in ("airtune", "llamafactory"):
            m = row[tool]
            print(f"{row['workers']:>7} {tool:>12} {m['rows_per_s']:>9,.0f} {m['tokens_per_s']:>11,.0f} {m['command_seconds']:>10.1f}"
                  + (f"   {row['ratio']:.2f}x processing, {row['command_ratio']:.2f}x whole command" if tool == "airtune" else ""))
    report = {"rows": a.rows, "cutoff_len": a.cutoff, "rayon_threads": a.rayon_threads,
              "tokenizers_parallelism": a.tokenizers_parallelism, "repeats": a.repeats, "summary": summary, "runs": runs}
    write_report(report, a.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
