"""What the benchmarks share: the data they make, the pinned environment, a measured child process, and
the medians and ratios they print. Standard library only, so LLaMA-Factory's virtualenv never needs it.

These machines are shared (2 cores, other engineers' tests beside ours): runs of the two tools are
interleaved, the order alternating each repeat, and only ratios within one run are quoted.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "llamafactory-demo"
LF_PYTHON = REPO / ".airtune" / "bench" / "llamafactory-venv" / "bin" / "python"


def make_alpaca(path: Path, rows: int, source: Path | None = None) -> Path:
    """An alpaca-format JSON file of `rows` rows: alpaca_en_demo's 999 rows again and again, each pass's
    instructions tagged "(variant N)" so that no two rows are the same (nothing to deduplicate or cache)."""
    source = source or DEMO / "alpaca_en_demo.json"
    if path.exists() and len(json.loads(path.read_text(encoding="utf-8"))) == rows:
        return path
    src = json.loads(source.read_text(encoding="utf-8"))
    out, variant = [], 0
    while len(out) < rows:
        for r in src[: rows - len(out)]:
            tag = "" if variant == 0 else f" (variant {variant})"
            out.append({"instruction": r["instruction"] + tag, "input": r.get("input", ""), "output": r["output"]})
        variant += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")
    return path


def pinned_env(rayon_threads: str, tokenizers_parallelism: str, omp_threads: str | None = None) -> dict:
    """The same environment for both tools: tokenizer threads pinned, offline, fixed hash seed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIRTUNE_METRICS"))}
    env.update({"RAYON_NUM_THREADS": str(rayon_threads), "TOKENIZERS_PARALLELISM": str(tokenizers_parallelism),
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1", "DISABLE_VERSION_CHECK": "1"})
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    return env


def run_measured(cmd: list[str], env: dict, log: Path, timeout: float = 1800) -> dict:
    """Run `cmd` with stdout+stderr to `log`; its wall time, exit code and peak RSS (ru_maxrss of that
    process, or of its largest descendant waited for: Linux reports KiB)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with log.open("w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": time.monotonic() - t0, "peak_rss_bytes": usage.ru_maxrss * 1024}


def last_json_line(text: str) -> dict:
    """The last line of `text` that is a JSON object (what the inner runs print last)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON object line in the output")


def order(tools: list[str], repeat: int, salt: int = 0) -> list[str]:
    """The tools in alternating order: repeat 0 as given, repeat 1 reversed, ... (salt shifts it)."""
    return list(tools) if (repeat + salt) % 2 == 0 else list(reversed(tools))


def medians(runs: list[dict], group: tuple[str, ...], fields: tuple[str, ...]) -> dict:
    """{group values: {field: median}} over the runs that share the `group` keys' values."""
    out: dict = {}
    for r in runs:
        out.setdefault(tuple(r[g] for g in group), []).append(r)
    return {k: {f: statistics.median(r[f] for r in rs) for f in fields} | {"n": len(rs)} for k, rs in out.items()}


def ratio(a: float, b: float) -> float:
    """a / b, or nan when b is 0 (a tool that measured nothing)."""
    return a / b if b else float("nan")


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30


def write_report(report: dict, json_out: Path | None) -> None:
    """The whole report to `json_out` (when given); the summary as one JSON line on stdout."""
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"summary": report["summary"]}))
