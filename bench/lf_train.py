"""One LLaMA-Factory SFT LoRA run, for bench/train_bench.py; run with LLaMA-Factory's virtualenv
(bench/setup_llamafactory.sh).

    python bench/lf_train.py --model DIR --data alpaca_en_demo.json --out DIR [--packing] [--steps 25] ...
        [--template chatml] [--default-system TEXT] [--dump-tokens FILE]

It calls `llamafactory.train.tuner.run_exp`, which is what `llamafactory-cli train cfg.yaml` runs in
one CPU process, and prints one JSON line: the non-padding tokens trained (transformers'
`include_num_input_tokens_seen: non_padding`, the attention mask summed over the batches trained),
the trainer's `train_runtime`, the first and last loss, and each step's end (wall time and tokens so
far, taken in `on_log` as airtune's metrics callback takes its `time`), from which the bench leaves
out warm-up steps.

With `--dump-tokens FILE` it trains nothing: it runs LLaMA-Factory's preprocessing with the same
arguments and writes each example's input_ids and labels to FILE (the bench compares them with
airtune's prepared rows, so that both tools are known to train on the same token sequences).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _no_cuda() -> bool:
    """transformers refuses bf16 without a GPU unless use_cpu is set (then it autocasts on the CPU)."""
    import torch

    return not torch.cuda.is_available()


def lf_args(a, dataset_dir: Path, output_dir: Path) -> dict:
    """The reference setup (docs/benchmarks.md), as LLaMA-Factory's arguments."""
    return {
        "model_name_or_path": str(a.model), "trust_remote_code": False,
        "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": a.rank, "lora_alpha": 2 * a.rank, "lora_dropout": 0.0, "lora_target": "all",
        "dataset": "bench", "dataset_dir": str(dataset_dir), "template": getattr(a, "template", None) or "chatml",
        "cutoff_len": a.cutoff,
        "packing": bool(a.packing), "overwrite_cache": True, "preprocessing_num_workers": None,
        "per_device_train_batch_size": a.batch, "gradient_accumulation_steps": 1, "max_steps": a.steps,
        "learning_rate": a.lr, "lr_scheduler_type": "cosine", "warmup_steps": 0, "seed": 42,
        "disable_gradient_checkpointing": not a.gradient_checkpointing,
        "include_num_input_tokens_seen": "non_padding",
        "logging_steps": 1, "save_strategy": "no", "report_to": "none", "plot_loss": False,
        "output_dir": str(output_dir), "overwrite_output_dir": True, "dataloader_num_workers": 0,
    } | ({"bf16": True, "use_cpu": _no_cuda()} if getattr(a, "bf16", False) else {}) | ({"default_system": a.default_system} if getattr(a, "default_system", None) is not None else {})


def dump_tokens(args: dict, path: Path) -> None:
    """LLaMA-Factory's preprocessing of the training data with `args` (what run_exp does before training)."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    train = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)["train_dataset"]
    path.write_text(json.dumps(train.select_columns(["input_ids", "labels"]).to_dict()))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="an alpaca-format JSON file")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--packing", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true", help="LLaMA-Factory's default; off is faster here")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (on the CPU: autocast)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cutoff", type=int, default=512)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=1.0e-4)
    p.add_argument("--template", default="chatml", help="LLaMA-Factory's template name")
    p.add_argument("--default-system", help="overrides the template's default system message ('' for none)")
    p.add_argument("--dump-tokens", type=Path, help="write the preprocessed examples here instead of training")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    dataset_dir = Path(tempfile.mkdtemp(prefix="lf-data-", dir=a.out))
    (dataset_dir / a.data.name).symlink_to(a.data.resolve())
    (dataset_dir / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": a.data.name}}))
    import os

    os.environ["HF_DATASETS_CACHE"] = str(a.out / "hf-cache")
    output_dir = a.out / "output"
    if a.dump_tokens:
        dump_tokens(lf_args(a, dataset_dir, output_dir), a.dump_tokens)
        return 0
    from llamafactory.train.tuner import run_exp
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Each optimizer step's end: wall time and non-padding tokens so far."""

        def __init__(self):
            self.steps = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.steps.append({"step": int(state.global_step), "time": round(time.time(), 3),
                                   "tokens": int(state.num_input_tokens_seen)})

    clock = StepClock()
    run_exp(lf_args(a, dataset_dir, output_dir), callbacks=[clock])
    state = json.loads((output_dir / "trainer_state.json").read_text())
    losses = [r["loss"] for r in state["log_history"] if "loss" in r]
    # the last record is the whole run's summary (with include_num_input_tokens_seen, each step's record
    # carries a running train_runtime too)
    runtime = [r["train_runtime"] for r in state["log_history"] if "train_runtime" in r][-1]
    print(json.dumps({"tool": "llamafactory", "tokens": int(state["num_input_tokens_seen"]), "train_runtime": runtime,
                      "steps": state["global_step"], "loss_first": losses[0], "loss_last": losses[-1],
                      "steps_log": clock.steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
