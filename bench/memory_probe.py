"""Where a training process's memory goes (issue 16): the trainer's resident memory at each phase.

Runs the real trainer (`python -m airtune.train`) on a job, reads its resident set (VmRSS) and peak
(VmHWM) from /proc every 50 ms, and places each reading by the trainer's own output lines: imports
done (its first line), model loaded ("parameters train"), each logged step, done.

    .venv/bin/python bench/memory_probe.py --model smollm2-135m-instruct --dataset identity_tuna \\
        --cutoff 256 --batch 8 --rank 16 --steps 6 [--threads 2] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dataset", default="identity_tuna")
    ap.add_argument("--cutoff", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps (max_samples = steps * batch)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--compute", choices=("fp32", "bf16"), default="fp32", help="compute_type (bf16 on the CPU: "
                    "validate accepts it where the CPU has AVX-512 BF16 or AMX)")
    ap.add_argument("--model-dir", type=Path, help="the model's folder (default: the catalog's, in $AIRTUNE_HOME)")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)

    from airtune import data
    from airtune.resolve import validate_mapping

    job = {"name": "memory-probe", "base_model": args.model, "dataset": [args.dataset], "finetuning_method": "lora",
           "stage": "sft", "cutoff_len": args.cutoff, "per_device_train_batch_size": args.batch, "lora_rank": args.rank,
           "lora_alpha": 2 * args.rank, "lora_dropout": 0.0, "num_train_epochs": 1.0, "max_samples": args.steps * args.batch,
           "val_size": 0.0, "logging_steps": 1, "save_steps": 10_000, "learning_rate": 1e-3, "packing": args.packing,
           "compute_type": args.compute}
    resolved = validate_mapping(job)
    if args.model_dir:
        resolved["model"]["weights"] = str(args.model_dir)
    work = Path(tempfile.mkdtemp(prefix="memory-probe-"))
    data.prepare(resolved, work / "data", cache_dir=work / "cache", log=lambda *a: None)
    (work / "spec.json").write_text(json.dumps(resolved))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MLFLOW_TRACKING_URI": "", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "airtune.train", "--spec", str(work / "spec.json"), "--data", str(work / "data"),
           "--output", str(work / "output")]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: list[tuple[float, int, int]] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            s = _status(proc.pid)
            if s:
                samples.append((time.monotonic() - started, s.get("VmRSS", 0), s.get("VmHWM", 0)))
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    marks: list[tuple[str, float]] = []
    rates: list[float] = []
    for line in proc.stdout:
        at = time.monotonic() - started
        if not marks:
            marks.append(("imports done (first output)", at))
        if "parameters train" in line:
            marks.append(("model loaded, LoRA applied", at))
        m = re.search(r"\[airtune\] step (\d+)/\d+\s+epoch", line)
        if m and "train_loss" not in line:
            marks.append((f"step {m.group(1)} logged", at))
            rate = re.search(r"tokens_per_second ([\d.]+)", line)
            if rate:
                rates.append(float(rate.group(1)))
        if "[airtune] done:" in line:
            marks.append(("done", at))
    proc.wait()
    done.set()
    if proc.returncode:
        raise SystemExit(f"the trainer failed (exit {proc.returncode}); its job folder: {work}")

    def at(t: float) -> tuple[int, int]:
        before = [s for s in samples if s[0] <= t] or samples[:1]
        return before[-1][1], before[-1][2]

    gib = 1024**3
    rows = [{"phase": name, "seconds": round(t, 2), "rss_gib": round(at(t)[0] / gib, 3), "peak_gib": round(at(t)[1] / gib, 3)}
            for name, t in marks]
    peak = max(s[2] for s in samples)
    print(f"{args.model}, {args.dataset} at cutoff {args.cutoff}, batch {args.batch}, LoRA rank {args.rank}, "
          f"{'packed' if args.packing else 'padding-free'}, {args.compute}, {args.threads} threads")
    print(f"{'phase':<32} {'at':>7} {'RSS':>9} {'peak so far':>12}")
    for r in rows:
        print(f"{r['phase']:<32} {r['seconds']:>6.1f}s {r['rss_gib']:>7.2f} G {r['peak_gib']:>10.2f} G")
    print(f"peak RSS of the training process: {peak / gib:.2f} GiB")
    tps = sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else None  # step 1's rate is left out (warm-up)
    print(f"non-padding tokens/s after step 1: {tps:.0f}" if tps else "non-padding tokens/s: not logged")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "phases": rows,
                                             "peak_gib": peak / gib, "tokens_per_second": tps,
                                             "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
                                             "samples": samples[::4]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
