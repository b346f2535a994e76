"""Training throughput: an SFT LoRA job on the tiny model, airtune against LLaMA-Factory, same run.

    bash bench/setup_llamafactory.sh          # once: LLaMA-Factory 0.9.5 in its own virtualenv
    .venv/bin/python bench/train_bench.py [--repeats 3] [--configs padded packed] [--steps 25]

The setup is the reference one (docs/benchmarks.md): tiny-llama-dev (4 layers, 1.8 M parameters), LoRA
rank 8 (alpha 16, dropout 0) on all linear layers, template chatml, cutoff_len 512, batch 8, 25
optimizer steps, learning rate 1e-4 (cosine, no warm-up), fp32, on alpaca_en_demo (999 rows), no
evaluation, no checkpoints, gradient checkpointing off for both (on this CPU it costs ~30 %).

Two configurations, each tool in its own way:
- `padded`: `packing: false`, each batch 8 examples: LLaMA-Factory pads them to the longest; airtune
  on the CPU lays them back to back in one row (padding-free, attention per example; same loss).
- `packed`: airtune `packing: true` (rows packed best-fit into cutoff_len, attention kept within each
  example); LLaMA-Factory `packing: true` (its best here in earlier measurements; its packed rows let examples
  attend to each other, and count their tail padding as tokens).

Measured: non-padding tokens trained / the trainer's `train_runtime` (model loading and data
preparation not included: both tools prepare before the clock starts), and the peak RSS of the
training process (LLaMA-Factory's includes its in-process preprocessing; airtune prepares in its own
step, as its DAG does). airtune's tokens are TRL's `num_tokens` (attention mask, or the padding-free
row's length), LLaMA-Factory's transformers' `num_input_tokens_seen` (non_padding). Runs are
interleaved (the order alternates each repeat) because these machines are shared; medians are quoted,
and the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEMO, LF_PYTHON, REPO, gib, last_json_line, medians, order, pinned_env, ratio, run_measured, write_report  # noqa: E402

CONFIGS = ("padded", "packed")


def job_mapping(config: str, *, steps: int, batch: int, cutoff: int, rank: int, lr: float) -> dict:
    """The airtune job (docs/form.md keys) for one configuration."""
    return {
        "name": f"bench-train-{config}", "base_model": "tiny-llama-dev", "template": "chatml",
        "finetuning_method": "lora", "stage": "sft", "dataset": ["alpaca_en_demo"],
        "learning_rate": lr, "num_train_epochs": 3, "lr_scheduler_type": "cosine", "warmup_steps": 0,
        "cutoff_len": cutoff, "per_device_train_batch_size": batch, "gradient_accumulation_steps": 1,
        "val_size": 0, "compute_type": "fp32", "lora_rank": rank, "lora_alpha": 2 * rank, "lora_dropout": 0,
        "lora_target": "all", "packing": config == "packed", "logging_steps": 1, "save_steps": 10_000,
        "seed": 42, "extra_args": {"max_steps": steps},
    }


def prepare_job(config: str, work: Path, **kw) -> tuple[Path, Path]:
    """Validate and prepare one airtune job (not timed): (spec.json, prepared data folder)."""
    from airtune.data import prepare
    from airtune.resolve import validate_mapping

    resolved = validate_mapping(job_mapping(config, **kw))
    base = work / "airtune" / config
    data_dir = base / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    prepare(resolved, data_dir, cache_dir=None, log=lambda m: None)
    spec = base / "spec.json"
    spec.write_text(json.dumps(resolved, indent=2))
    return spec, data_dir


def airtune_result(job: Path) -> dict:
    """Tokens and train_runtime from the job's metrics.jsonl (written by airtune.train's callback)."""
    records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines() if line.strip()]
    tokens = max(r["num_tokens"] for r in records if "num_tokens" in r)
    runtime = [r["train_runtime"] for r in records if "train_runtime" in r][-1]  # the last: the whole run's
    losses = [r["loss"] for r in records if "loss" in r]
    return {"tool": "airtune", "tokens": int(tokens), "train_runtime": runtime, "steps": max(r["step"] for r in records),
            "loss_first": losses[0], "loss_last": losses[-1]}


def summarize(runs: list[dict], configs: list[str]) -> list[dict]:
    med = medians(runs, ("tool", "config"), ("tokens_per_s", "peak_rss_bytes", "tokens", "train_runtime", "wall_s"))
    out = []
    for c in configs:
        row = {"config": c, "airtune": med[("airtune", c)], "llamafactory": med[("llamafactory", c)]}
        row["ratio"] = ratio(row["airtune"]["tokens_per_s"], row["llamafactory"]["tokens_per_s"])
        row["rss_ratio"] = ratio(row["airtune"]["peak_rss_bytes"], row["llamafactory"]["peak_rss_bytes"])
        out.append(row)
    if "padded" in configs and "packed" in configs:  # each tool's best against the other's best
        best = {t: max((med[(t, c)] for c in configs), key=lambda m: m["tokens_per_s"]) for t in ("airtune", "llamafactory")}
        out.append({"config": "best", **best, "ratio": ratio(best["airtune"]["tokens_per_s"], best["llamafactory"]["tokens_per_s"]),
                    "rss_ratio": ratio(best["airtune"]["peak_rss_bytes"], best["llamafactory"]["peak_rss_bytes"])})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cutoff", type=int, default=512)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=1.0e-4)
    p.add_argument("--threads", default="2", help="OMP_NUM_THREADS (torch's threads) for both tools")
    p.add_argument("--work", type=Path, default=REPO / ".airtune" / "bench" / "train")
    p.add_argument("--lf-python", type=Path, default=LF_PYTHON)
    p.add_argument("--json-out", type=Path, help="also write every run and the summary here")
    a = p.parse_args()
    if not a.lf_python.exists():
        raise SystemExit(f"LLaMA-Factory is not installed at {a.lf_python}: run bash bench/setup_llamafactory.sh")
    from airtune.tinymodel import make_tiny_model

    model = make_tiny_model()
    hp = {"steps": a.steps, "batch": a.batch, "cutoff": a.cutoff, "rank": a.rank, "lr": a.lr}
    jobs = {c: prepare_job(c, a.work, **hp) for c in a.configs}
    env = pinned_env("1", "false", a.threads)
    runs = []
    for rep in range(a.repeats):
        for ci, config in enumerate(a.configs):
            for tool in order(["airtune", "llamafactory"], rep, ci):
                base = a.work / "runs" / f"{tool}-{config}-{rep}"
                shutil.rmtree(base, ignore_errors=True)
                if tool == "airtune":
                    spec, data_dir = jobs[config]
                    base.mkdir(parents=True)
                    shutil.copyfile(spec, base / "spec.json")
                    cmd = [sys.executable, "-m", "airtune.train", "--spec", str(base / "spec.json"), "--data", str(data_dir),
                           "--output", str(base / "output")]
                else:
                    cmd = [str(a.lf_python), str(REPO / "bench" / "lf_train.py"), "--model", str(model),
                           "--data", str(DEMO / "alpaca_en_demo.json"), "--out", str(base), "--steps", str(a.steps),
                           "--batch", str(a.batch), "--cutoff", str(a.cutoff), "--rank", str(a.rank), "--lr", str(a.lr)]
                    cmd += ["--packing"] if config == "packed" else []
                log = a.work / "logs" / f"{tool}-{config}-{rep}.log"
                m = run_measured(cmd, env, log)
                text = log.read_text(encoding="utf-8", errors="replace")
                if m["rc"] != 0:
                    raise SystemExit(f"failed ({m['rc']}): {' '.join(cmd)}\n{text[-4000:]}")
                r = airtune_result(base) if tool == "airtune" else last_json_line(text)
                r.update(config=config, repeat=rep, wall_s=m["wall_s"], peak_rss_bytes=m["peak_rss_bytes"],
                         tokens_per_s=r["tokens"] / r["train_runtime"])
                runs.append(r)
                print(f"  {tool:12s} {config:6s} repeat={rep}: {r['tokens_per_s']:,.0f} tokens/s ({r['tokens']} tokens in "
                      f"{r['train_runtime']:.1f} s), peak RSS {gib(r['peak_rss_bytes']):.2f} GiB, loss {r['loss_first']:.3f} -> "
                      f"{r['loss_last']:.3f}", file=sys.stderr, flush=True)
                shutil.rmtree(base / "output", ignore_errors=True)
    summary = summarize(runs, a.configs)
    print(f"\nSFT LoRA r{a.rank} all-linear, tiny-llama-dev, chatml, cutoff {a.cutoff}, batch {a.batch}, {a.steps} steps, fp32, "
          f"alpaca_en_demo; OMP_NUM_THREADS={a.threads}; medians of {a.repeats}")
    print(f"{'config':>7} {'tool':>12} {'tokens/s':>9} {'peak RSS':>9}   ratio (airtune / LLaMA-Factory)")
    for row in summary:
        for tool in ("airtune", "llamafactory"):
            m = row[tool]
            print(f"{row['config']:>7} {tool:>12} {m['tokens_per_s']:>9,.0f} {gib(m['peak_rss_bytes']):>7.2f} G"
                  + (f"   {row['ratio']:.2f}x tokens/s, {row['rss_ratio']:.2f}x peak RSS" if tool == "airtune" else ""))
    report = {"hyperparameters": hp, "threads": a.threads, "repeats": a.repeats, "summary": summary, "runs": runs}
    write_report(report, a.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
