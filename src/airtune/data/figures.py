"""What the user sees before training: optimizer steps, tokens per epoch, and a warmup warning.

The step count follows transformers' Trainer (5.x, `set_initial_training_values`): each process
gets ceil(rows / processes) rows, its dataloader ceil(that / per_device_train_batch_size) batches,
an epoch ceil(batches / gradient_accumulation_steps) optimizer steps (at least 1), and the run
ceil(num_train_epochs * steps per epoch), unless extra_args sets max_steps.
"""

from __future__ import annotations

import math

from airtune.resolved import as_resolved, as_settings

# `spec` below: the resolved spec's job settings (airtune.resolved.JobSettings), or a mapping of them
# (a key it lacks takes the table's default).


def steps_per_epoch(rows: int, *, batch: int, accumulation: int, processes: int) -> int:
    """Optimizer steps of one epoch (0 without rows), as transformers' Trainer counts them."""
    rows_per_process = math.ceil(rows / max(1, processes)) if rows else 0
    batches = math.ceil(rows_per_process / batch) if rows_per_process else 0
    return max(math.ceil(batches / accumulation), 1) if batches else 0


def max_steps_of(spec: dict) -> int | None:
    """extra_args' max_steps when it is set (> 0): the Trainer then stops there, whatever the epochs."""
    max_steps = as_settings(spec).extra_args.get("max_steps")
    return int(max_steps) if max_steps and int(max_steps) > 0 else None


def total_steps(rows: int, spec: dict, processes: int) -> int:
    """Optimizer steps of the whole job, as transformers' Trainer counts them: the one count the
    figures shown before training and the trainer's schedulers (train/args.py) use."""
    spec = as_settings(spec)
    fixed = max_steps_of(spec)
    if fixed is not None:
        return fixed
    per_epoch = steps_per_epoch(rows, batch=int(spec.per_device_train_batch_size),
                                accumulation=int(spec.gradient_accumulation_steps), processes=processes)
    return math.ceil(float(spec.num_train_epochs) * per_epoch)


def training_figures(manifest: dict, spec: dict) -> dict:
    rows = int((manifest.get("rows") or {}).get("train", 0))
    tokens = int((manifest.get("tokens") or {}).get("train", 0))
    label_tokens = (manifest.get("label_tokens") or {}).get("train")
    spec = as_settings(spec)
    batch = int(spec.per_device_train_batch_size)
    accum = int(spec.gradient_accumulation_steps)
    processes = max(1, int(spec.nodes) * int(spec.gpus_per_node))
    epochs = float(spec.num_train_epochs)
    per_epoch = steps_per_epoch(rows, batch=batch, accumulation=accum, processes=processes)
    max_steps = max_steps_of(spec)
    total = total_steps(rows, spec, processes)
    figures = {
        "train_rows": rows,
        "processes": processes,
        "global_batch_rows": batch * accum * processes,
        "steps_per_epoch": per_epoch,
        "total_steps": total,
        "tokens_per_epoch": tokens,
        "trained_tokens_per_epoch": int(label_tokens) if label_tokens is not None else None,
        "tokens_total": int(round(tokens * epochs)) if max_steps is None else None,
        "warnings": [],
    }
    warmup = int(spec.warmup_steps)
    if warmup and warmup >= total:
        figures["warnings"].append(
            f"warmup_steps: {warmup} warmup steps, but the job has only {total} optimizer steps in total "
            f"({rows} rows, batch {batch} x {accum} accumulation x {processes} process(es), {epochs:g} epochs): "
            "the learning rate never leaves warmup"
        )
    if rows and total == 0:
        figures["warnings"].append("the job has no optimizer step")
    return figures


# -- GPU memory with the data's real lengths -------------------------------------------------------

def longest_row_tokens(cols: dict, stage: str) -> int:
    """The tokens of a split's longest row as one sequence of the training forward pass: input_ids (sft,
    pt; with packing, the packed row), prompt + the longer completion (dpo), the longer of chosen and
    rejected (rm), prompt + completion (kto), the prompt (grpo). `cols`: the split's IntLists columns."""
    import numpy as np

    def lengths(key):
        return cols[key].lengths if key in cols else np.zeros(0, np.int64)

    if "input_ids" in cols:
        rows = lengths("input_ids")
    elif stage == "rm":
        rows = np.maximum(lengths("chosen_ids"), lengths("rejected_ids"))
    elif stage == "dpo":
        rows = lengths("prompt_ids") + np.maximum(lengths("chosen_ids"), lengths("rejected_ids"))
    elif stage == "kto":
        rows = lengths("prompt_ids") + lengths("completion_ids")
    else:
        rows = lengths("prompt_ids")
    return int(rows.max()) if len(rows) else 0


def memory_check(manifest: dict, resolved: dict) -> tuple[dict | None, str | None]:
    """prepare_dataset's GPU memory decision: validate's estimate (resolve.estimate_gpu_memory) again, with
    the batch padded to the prepared rows' longest (manifest `longest_row_tokens`; cutoff_len where the
    manifest does not say) and the tokenizer's vocabulary.

    Returns (the estimate, None) when it fits, (the estimate, the refusal) when even the real data does not
    fit, (None, None) where validate had no GPU memory to check against (CPU, an unknown GPU)."""
    from types import SimpleNamespace

    from airtune.resolve import estimate_gpu_memory, memory_refusal

    resolved = as_resolved(resolved)
    before, model = resolved.estimate, resolved.model
    available = before.gpu_memory_gib_available
    if not available or not model or before.gpu_memory_gib_per_process is None:
        return None, None
    spec = resolved.spec
    longest = (manifest.get("longest_row_tokens") or {}).get("train")
    row = min(int(longest), int(spec.cutoff_len)) if longest else int(spec.cutoff_len)
    entry = SimpleNamespace(params_b=model.params_b, num_layers=model.num_layers, hidden_size=model.hidden_size,
                            vocab_size=(manifest.get("tokenizer") or {}).get("vocab_size"))
    estimate = estimate_gpu_memory(entry, spec, int(resolved.runtime.world_size), row_tokens=row)
    estimate["gpu_memory_gib_available"] = available
    if estimate["gpu_memory_gib_per_process"] <= available:
        return estimate, None
    rows = (f"with its data's longest row ({row} tokens, batch {spec.per_device_train_batch_size})" if longest
            else f"with rows of cutoff_len {row} tokens (the prepared data records no row lengths)")
    value = resolved.runtime.gpu_type or spec.gpu_type
    gpu = "this machine" if value in (None, "auto") else value
    return estimate, f"gpu_type: {value!r} is not accepted: " + memory_refusal(estimate, available, gpu, certain=False, rows=rows)
