"""What the user sees before training: optimizer steps, tokens per epoch, and a warmup warning.

The step count follows transformers' Trainer (5.x, `set_initial_training_values`): each process
gets ceil(rows / processes) rows, its dataloader ceil(that / per_device_train_batch_size) batches,
an epoch ceil(batches / gradient_accumulation_steps) optimizer steps (at least 1), and the run
ceil(num_train_epochs * steps per epoch), unless extra_args sets max_steps.
"""

from __future__ import annotations

import math


def training_figures(manifest: dict, spec: dict) -> dict:
    rows = int((manifest.get("rows") or {}).get("train", 0))
    tokens = int((manifest.get("tokens") or {}).get("train", 0))
    label_tokens = (manifest.get("label_tokens") or {}).get("train")
    batch = int(spec.get("per_device_train_batch_size") or 1)
    accum = int(spec.get("gradient_accumulation_steps") or 1)
    processes = max(1, int(spec.get("nodes") or 1) * int(spec.get("gpus_per_node") or 0))
    epochs = float(spec.get("num_train_epochs") or 1.0)
    rows_per_process = math.ceil(rows / processes) if rows else 0
    batches = math.ceil(rows_per_process / batch) if rows_per_process else 0
    steps_per_epoch = max(math.ceil(batches / accum), 1) if batches else 0
    max_steps = (spec.get("extra_args") or {}).get("max_steps")
    total = int(max_steps) if max_steps and int(max_steps) > 0 else math.ceil(epochs * steps_per_epoch)
    figures = {
        "train_rows": rows,
        "processes": processes,
        "global_batch_rows": batch * accum * processes,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "tokens_per_epoch": tokens,
        "trained_tokens_per_epoch": int(label_tokens) if label_tokens is not None else None,
        "tokens_total": int(round(tokens * epochs)) if not (max_steps and int(max_steps) > 0) else None,
        "warnings": [],
    }
    warmup = int(spec.get("warmup_steps") or 0)
    if warmup and warmup >= total:
        figures["warnings"].append(
            f"warmup_steps: {warmup} warmup steps, but the job has only {total} optimizer steps in total "
            f"({rows} rows, batch {batch} x {accum} accumulation x {processes} process(es), {epochs:g} epochs): "
            "the learning rate never leaves warmup"
        )
    if rows and total == 0:
        figures["warnings"].append("the job has no optimizer step")
    return figures
