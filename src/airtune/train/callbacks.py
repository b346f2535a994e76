"""Trainer callbacks: one JSON line per log record in metrics.jsonl, and readable progress lines on stdout.

Both act on global rank 0 only, so a multi-process job writes each record once.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from transformers import TrainerCallback

def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else str(value)


class MetricsFileCallback(TrainerCallback):
    """Appends each trainer log record to `path` as one JSON object: step, epoch, loss, learning_rate,
    grad_norm, eval_loss, tokens_per_second (non-padding tokens trained per second since the last record)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._last_tokens: float | None = None
        self._last_time: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.monotonic()
        self._last_tokens = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record: dict = {"step": int(state.global_step), "epoch": round(float(state.epoch or 0.0), 4)}
        for key, value in logs.items():
            value = _number(value)
            if value is not None:
                record[key] = value
        # TRL logs num_tokens: non-padding tokens seen so far (all ranks). Its rate is our throughput figure.
        now = time.monotonic()
        tokens = logs.get("num_tokens")
        if isinstance(tokens, (int, float)) and "loss" in logs:
            if self._last_tokens is not None and self._last_time is not None and now > self._last_time:
                record["tokens_per_second"] = round((tokens - self._last_tokens) / (now - self._last_time), 2)
            self._last_tokens, self._last_time = tokens, now
        record["time"] = round(time.time(), 3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        # Printed too: the Airflow task log shows the same figures.
        _print_record(record, state)


def _print_record(record: dict, state) -> None:
    parts = [f"step {record['step']}/{state.max_steps}", f"epoch {record['epoch']:.2f}"]
    for key in ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "train_loss", "train_runtime"):
        if key in record:
            value = record[key]
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    print("[airtune] " + "  ".join(parts), flush=True)


def trim_metrics_file(path: str | Path, after_step: int) -> None:
    """On resume, drop records of steps after the checkpoint: those steps are trained again."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= after_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed process
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
