"""The job's output folder: resumable checkpoints, the final weights, and result.json.

    output/checkpoint-<step>/   written by the Trainer every save_steps (weights, optimizer, scheduler,
                                RNG, trainer_state.json last)
    output/final/               adapter or weights + tokenizer + chat template + spec.json (atomic)
    result.json                 beside output/, written last
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _step(path: Path) -> int:
    return int(CHECKPOINT.match(path.name).group(1))


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first. The Trainer writes trainer_state.json after everything else,
    so a checkpoint without a readable one was cut short (a killed process) and is skipped."""
    found = []
    if not output_dir.is_dir():
        return found
    for path in output_dir.iterdir():
        if not (path.is_dir() and CHECKPOINT.match(path.name)):
            continue
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if int(state.get("global_step", -1)) == _step(path):
            found.append(path)
    return sorted(found, key=_step)


def newest_checkpoint(output_dir: Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def save_final(trainer, output_dir: Path, *, tokenizer, spec_path: Path) -> Path:
    """Save the trained adapter/weights, tokenizer (with its chat template) and spec.json to output/final,
    atomically: into final.tmp, then renamed. Every rank takes part (ZeRO-3 gathers the weights)."""
    final = output_dir / "final"
    tmp = output_dir / "final.tmp"
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(tmp))
        shutil.copyfile(spec_path, tmp / "spec.json")
        old = output_dir / "final.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return final


def summarize(state, output_dir: Path, final_eval_loss: float | None) -> dict:
    """result.json's content, from the trainer's log history. Paths are relative to the job folder
    (result.json's folder): the same folder is mounted at different paths in a pod and on the worker."""
    job_dir = output_dir.parent
    rel = lambda p: os.path.relpath(p, job_dir)  # noqa: E731
    history = state.log_history
    losses = [r["loss"] for r in history if "loss" in r]
    train_loss = next((r["train_loss"] for r in reversed(history) if "train_loss" in r), None)
    evals = {int(r["step"]): float(r["eval_loss"]) for r in history if "eval_loss" in r}
    kept = checkpoints(output_dir)
    final = output_dir / "final"

    # best: the lowest eval_loss among the checkpoints still on disk and the final weights
    best, best_loss = final, final_eval_loss
    for path in kept:
        loss = evals.get(_step(path))
        if loss is not None and (best_loss is None or loss < best_loss):
            best, best_loss = path, loss
    return {
        "global_step": int(state.global_step),
        "epoch": float(state.epoch or 0.0),
        "train_loss_first": losses[0] if losses else train_loss,
        "train_loss_last": losses[-1] if losses else train_loss,
        "train_loss_mean": train_loss,
        "eval_loss": final_eval_loss,
        "final_dir": rel(final),
        "checkpoints": [rel(p) for p in kept],
        "best_checkpoint": rel(best),
        "best_eval_loss": best_loss,
    }


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
