"""`python -m airtune.train --spec <job>/spec.json --data <job>/data --output <job>/output`

The training program every launcher runs (docs/architecture.md, "The trainer's contract"):
read the resolved spec, load the prepared data, build model and trainer for the stage, train
(resuming from the newest complete checkpoint in --output), save output/final, write result.json.
Exits 0 only when output/final/ and result.json are written. Never imports Airflow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m airtune.train", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=Path, help="the resolved spec (<job>/spec.json)")
    parser.add_argument("--data", required=True, type=Path, help="the prepared dataset (<job>/data)")
    parser.add_argument("--output", required=True, type=Path, help="checkpoints and final/ (<job>/output)")
    return parser


def log(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[airtune] {message}", flush=True)


def load_data(data_dir: Path):
    """(train, validation or None, manifest) from the prepared folder (docs/architecture.md)."""
    manifest_path = data_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    try:
        from airtune.data import load_prepared
    except ImportError:
        load_prepared = None
    if load_prepared is not None:
        loaded = load_prepared(data_dir)
        if isinstance(loaded, tuple):
            train, validation = loaded[0], (loaded[1] if len(loaded) > 1 else None)
        else:
            train, validation = loaded["train"], (loaded["validation"] if "validation" in loaded else None)
    else:
        from datasets import load_from_disk

        train = load_from_disk(str(data_dir / "train"))
        validation = load_from_disk(str(data_dir / "validation")) if (data_dir / "validation").is_dir() else None
    if validation is not None and len(validation) == 0:
        validation = None
    return train, validation, manifest


def extra_callbacks() -> list:
    """Callbacks other modules provide (MLflow metrics: airtune.tracking_callback), when installed."""
    try:
        from airtune.tracking_callback import make_callbacks
    except ImportError:
        return []
    return list(make_callbacks())


def stage_module(stage: str):
    from airtune.train import dpo, grpo, kto, pt, rm, sft

    stages = {"pt": pt, "sft": sft, "rm": rm, "dpo": dpo, "kto": kto, "grpo": grpo}
    if stage not in stages:
        raise SystemExit(f"[airtune] stage {stage!r} is not supported by this trainer yet (supported: {sorted(stages)})")
    return stages[stage]


EXIT_CONFIG = 78  # airtune.launch.local.EXIT_CONFIG (EX_CONFIG): the configuration is refused; a retry would fail the same way


class ConfigurationError(Exception):
    """Building the model or trainer from the spec failed before any step: not worth a retry."""


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except ConfigurationError as exc:
        cause = exc.__cause__
        first = (str(cause or exc).splitlines() or [""])[0]
        if int(os.environ.get("RANK", "0")) == 0:  # on stderr: the launchers merge it into the task log
            print(f"[airtune] configuration error: {type(cause).__name__ if cause else 'error'}: {first} ({exc})",
                  file=sys.stderr, flush=True)
        return EXIT_CONFIG


def _main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    started = time.monotonic()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from airtune.resolved import Resolved, ResolvedSpecError

    try:
        resolved = Resolved.from_json(json.loads(args.spec.read_text()))
    except ResolvedSpecError as exc:
        raise ConfigurationError(str(exc)) from exc
    spec = resolved.spec
    output = args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    metrics_file = Path(os.environ.get("AIRTUNE_METRICS_FILE") or output.parent / "metrics.jsonl")

    from airtune.train.quiet import quiet_libraries

    quiet_libraries()  # before transformers (and with it deepspeed, bitsandbytes, peft) is imported
    from transformers import PrinterCallback, set_seed

    from airtune.train.args import map_spec
    from airtune.train.callbacks import MetricsFileCallback, trim_metrics_file
    from airtune.train.checkpoints import newest_checkpoint, save_final, summarize, write_json_atomic
    from airtune.train.model import count_parameters, load_model, load_tokenizer, make_trainable

    # 1. data: already tokenized, masked and split by the prepare step
    train, validation, manifest = load_data(args.data)
    if manifest.get("stage") and manifest["stage"] != spec.stage:
        raise SystemExit(f"[airtune] the data in {args.data} was prepared for stage {manifest['stage']!r}, the job is {spec.stage!r}")
    stage = stage_module(spec.stage)

    # 2. the spec as TRL/PEFT/transformers arguments (the one mapping: args.py); a value the config
    # class refuses (extra_args) is a configuration error: no retry
    try:
        mapped = map_spec(resolved, output_dir=str(output), train_rows=len(train), has_eval=validation is not None)
    except (TypeError, ValueError) as exc:  # ArgsError is a ValueError
        raise ConfigurationError("the job's arguments are refused by the trainer's configuration "
                                 "(check extra_args against docs/form.md#extra_args)") from exc
    config = mapped.config

    # 3. model and tokenizer; the seed first, so LoRA's initial weights are the same on every run
    set_seed(config.seed)
    tokenizer = load_tokenizer(resolved)
    model = load_model(resolved, mapped.model_kwargs, config_overrides=mapped.config_overrides, model_class=stage.model_class(),
                       hqq=mapped.hqq)
    model = make_trainable(model, spec, mapped.peft, checkpointing=bool(config.activation_checkpointing))
    trainable, total = count_parameters(model)
    log(
        f"{spec.stage}/{spec.finetuning_method} on {resolved.model.name}: {trainable:,} of {total:,} "
        f"parameters train; {len(train)} training rows, {len(validation) if validation is not None else 0} validation rows"
    )
    dtypes = {p.requires_grad: str(p.dtype).removeprefix("torch.") for p in model.parameters()}
    log(f"precision: compute_type {spec.compute_type}"
        + (" (autocast on the CPU)" if spec.compute_type in ("bf16", "fp16") and resolved.runtime.device == "cpu" else "")
        + f"; trainable weights {dtypes.get(True, '-')}, frozen weights {dtypes.get(False, '-')}")

    # 4. trainer
    optimizers = (None, None)
    if mapped.loraplus_lr_ratio:
        from airtune.train.optim import loraplus_optimizer

        optimizers = (loraplus_optimizer(model, config, mapped.loraplus_lr_ratio), None)
    callbacks = [MetricsFileCallback(metrics_file)] + extra_callbacks()
    trainer = stage.build_trainer(
        model=model, tokenizer=tokenizer, config=config, train=train, validation=validation,
        callbacks=callbacks, optimizers=optimizers, **({"resolved": resolved} if spec.stage == "grpo" else {}),
    )
    trainer.remove_callback(PrinterCallback)  # MetricsFileCallback prints readable lines instead

    # 5. train, resuming from the newest complete checkpoint
    resume = newest_checkpoint(output)
    if resume is not None:
        log(f"resuming from {resume}")
        if trainer.is_world_process_zero():
            trim_metrics_file(metrics_file, int(resume.name.split("-")[-1]))
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    # 6. evaluate the final weights on the validation split
    # (the Trainer already evaluates at the last step when it falls on its schedule)
    eval_loss = None
    if trainer.eval_dataset is not None:
        last = [r for r in trainer.state.log_history if "eval_loss" in r]
        if last and last[-1].get("step") == trainer.state.global_step:
            eval_loss = float(last[-1]["eval_loss"])
        else:
            eval_loss = float(trainer.evaluate()["eval_loss"])

    # 7. save final/ (atomic), then result.json (last)
    final = save_final(trainer, output, tokenizer=tokenizer, spec_path=args.spec)
    if trainer.is_world_process_zero():
        result = summarize(trainer.state, output, eval_loss)
        if spec.export_merged and spec.finetuning_method == "lora":
            from airtune.train.export import export_merged

            merged = export_merged(resolved, final, output, model_class=stage.model_class())
            result["merged_dir"] = os.path.relpath(merged, output.parent)
            log(f"merged weights in {merged}")
        result["runtime_s"] = round(time.monotonic() - started, 1)
        write_json_atomic(output.parent / "result.json", result)
        log(
            f"done: {result['global_step']} steps, loss {result['train_loss_first']:.4f} -> {result['train_loss_last']:.4f}, "
            f"final weights in {final}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
