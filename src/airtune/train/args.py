"""The one place that maps the resolved spec to TRL / PEFT / transformers arguments.

Nothing else in airtune speaks both vocabularies. `map_spec` returns:

- `config`: the stage's TRL config (`SFTConfig`, ...), a `transformers.TrainingArguments` subclass;
- `peft`: a `peft.LoraConfig` for `finetuning_method: lora`, else None;
- `model_kwargs`: what `from_pretrained` gets (dtype, attention implementation, quantization);
- `config_overrides`: changes to the model's config (RoPE scaling), merged into its own values;
- `hqq`: HQQ quantization of the loaded base (`quantization_method: hqq`), applied by model.py;
- `loraplus_lr_ratio`: LoRA+ (the optimizer is built by the stage module with PEFT's helper).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from airtune.resolved import ModelRecord, Resolved, as_resolved

# Keys airtune sets itself: a user may not override them through extra_args (docs/form.md#extra_args).
# One table, the spec's: validate refuses them before the trainer would.
from airtune.spec import EXTRA_ARGS_RESERVED as RESERVED_KEYS  # noqa: E402
from airtune.spec import EXTRA_ARGS_RESERVED_PREFIXES as RESERVED_PREFIXES  # noqa: E402

# docs/form.md's `optimizer` values are transformers' `optim` names already.
OPTIMIZERS = {"adamw_torch", "adamw_torch_fused", "adamw_8bit", "adafactor", "sgd", "lion_8bit"}


class ArgsError(ValueError):
    """A spec value that cannot become a trainer argument (e.g. an unknown extra_args key)."""


@dataclass
class Mapped:
    config: Any
    peft: Any = None
    model_kwargs: dict = field(default_factory=dict)
    config_overrides: dict = field(default_factory=dict)  # merged into the model's config before loading
    loraplus_lr_ratio: float | None = None
    # HQQ quantizes after loading: transformers 5 has no HQQ quantize-on-load ("HQQ is not available yet")
    hqq: dict | None = None


# Where each TRL config class lives (the rest are in `trl` itself). Which class a stage trains with is
# one table, trl_fields.STAGE_CONFIGS, which validate reads too.
CONFIG_MODULES = {"ORPOConfig": "trl.experimental.orpo", "CPOConfig": "trl.experimental.cpo"}


def config_class(stage: str, pref_loss: str | None = None):
    """The TRL config class of a stage (for dpo, of its pref_loss: ORPO and SimPO have their own trainers)."""
    import importlib

    from airtune.train.trl_fields import config_name

    try:
        name = config_name(stage, pref_loss)
    except KeyError:
        raise ArgsError(f"stage {stage!r} is not supported by this trainer yet") from None
    return getattr(importlib.import_module(CONFIG_MODULES.get(name, "trl")), name)


def total_steps(rows: int, spec: dict, world_size: int) -> int:
    """Optimizer steps of the whole job, as transformers counts them (for schedulers that need it): the
    data step's count (data/figures.py, max_steps honoured), at least 1."""
    from airtune.data.figures import total_steps as steps

    return max(1, steps(rows, spec, world_size))


def check_extra_args(extra: dict, cls) -> None:
    """Each extra_args key must be a real field of `cls` and not one airtune sets itself."""
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in extra:
        if key in RESERVED_KEYS or key.startswith(RESERVED_PREFIXES):
            raise ArgsError(f"extra_args: {key!r} is set by airtune itself and cannot be given")
        if key not in fields:
            raise ArgsError(f"extra_args: {key!r} is not a field of {cls.__name__} (a TRL/transformers training argument)")
    hints = _field_types(cls)
    for key, value in extra.items():
        expected = hints.get(key)
        if expected is not None and not value_fits(value, expected):
            raise ArgsError(f"extra_args.{key}: {value!r} is not accepted: {cls.__name__}.{key} takes {_type_name(expected)}")


def _field_types(cls) -> dict:
    import typing

    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: check what can be checked
        return {f.name: f.type for f in dataclasses.fields(cls) if not isinstance(f.type, str)}


def value_fits(value, expected) -> bool:
    """Whether a YAML/JSON value can be given to a config field of this type (ints where floats go;
    strings where enums go; unknown or complex types are not second-guessed)."""
    import enum
    import types
    import typing

    origin = typing.get_origin(expected)
    if expected is typing.Any or expected is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(value_fits(value, t) for t in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        return isinstance(value, str) and value in {m.value for m in expected} | set(expected.__members__)
    if origin in (list, tuple, typing.List) or expected in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or expected is dict:
        return isinstance(value, dict)
    return True


def _type_name(expected) -> str:
    return getattr(expected, "__name__", None) or str(expected).replace("typing.", "")


def map_spec(resolved: Resolved | Mapping, *, output_dir: str, train_rows: int, has_eval: bool) -> Mapped:
    """The resolved spec (docs/architecture.md; a Resolved or spec.json's dict) as the stage's trainer config,
    LoRA config and model kwargs. Every value is resolve's: the stage-, method- and scheduler-dependent
    defaults (pref_loss, pref_beta, LoRA rank/alpha/dropout, min_lr_rate, decay_ratio) are filled in there."""
    resolved = as_resolved(resolved)
    spec, runtime = resolved.spec, resolved.runtime
    stage = spec.stage
    pref_loss = spec.pref_loss
    cls = config_class(stage, pref_loss)
    extra = dict(spec.extra_args)
    check_extra_args(extra, cls)

    compute = spec.compute_type
    on_cpu = runtime.device == "cpu"
    world_size = int(runtime.world_size)

    scheduler = spec.lr_scheduler_type
    scheduler_kwargs: dict = {}
    if scheduler == "cosine_with_min_lr":
        scheduler_kwargs["min_lr_rate"] = float(spec.min_lr_rate)
    elif scheduler == "warmup_stable_decay":
        # transformers' WSD schedule takes its decay length in steps; docs/form.md gives a share of all steps
        steps = total_steps(train_rows, spec, world_size)
        scheduler_kwargs["num_decay_steps"] = max(1, round(float(spec.decay_ratio) * steps))

    optimizer = spec.optimizer
    if optimizer not in OPTIMIZERS:
        raise ArgsError(f"optimizer {optimizer!r} is not one of {sorted(OPTIMIZERS)}")

    distributed = spec.distributed
    deepspeed = None
    if distributed in ("zero2", "zero3", "zero3_offload"):
        if on_cpu and world_size > 1:
            # DeepSpeed's CPU accelerator does not join torchrun's gloo world (it sees world_size 1)
            raise ArgsError(f"distributed {distributed!r} with {world_size} CPU processes: DeepSpeed on the CPU runs "
                            "in one process only; use distributed 'ddp' for several CPU processes")
        from airtune import paths

        deepspeed = str(paths.config_dir() / "deepspeed" / f"{distributed}.json")

    save_steps = int(spec.save_steps)
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        report_to="none",  # metrics go through our callbacks (metrics.jsonl, MLflow), never twice
        run_name=spec.name,
        seed=int(spec.seed),
        data_seed=int(spec.seed),
        learning_rate=float(spec.learning_rate),
        num_train_epochs=float(spec.num_train_epochs),
        max_grad_norm=float(spec.max_grad_norm),
        per_device_train_batch_size=int(spec.per_device_train_batch_size),
        per_device_eval_batch_size=int(spec.per_device_train_batch_size),
        gradient_accumulation_steps=int(spec.gradient_accumulation_steps),
        lr_scheduler_type=scheduler,
        lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=int(spec.warmup_steps),
        optim=optimizer,
        neftune_noise_alpha=spec.neftune_noise_alpha,
        logging_strategy="steps",
        logging_steps=int(spec.logging_steps),
        logging_first_step=True,  # result.json's train_loss_first is the loss of step 1
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=int(spec.save_total_limit),
        eval_strategy="steps" if has_eval else "no",
        eval_steps=save_steps if has_eval else None,
        # with a validation split, the best checkpoint is kept out of save_total_limit's rotation
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        bf16=compute == "bf16",
        fp16=compute == "fp16",
        use_cpu=on_cpu,
        # activations are small next to the weights for LoRA on a GPU; on the CPU recomputing costs ~30 %
        activation_checkpointing=not on_cpu,
        deepspeed=deepspeed,
        ddp_backend="gloo" if on_cpu and world_size > 1 else None,
        disable_tqdm=True,  # progress lines come from our callback: tqdm bars garble the Airflow task log
        dataloader_num_workers=0,
        remove_unused_columns=True,
        save_only_model=False,  # checkpoints keep optimizer, scheduler, RNG and trainer state: resumable
        push_to_hub=False,
    )
    if stage in ("sft", "pt"):
        # The prepared rows are already tokenized, truncated to cutoff_len and masked (docs/architecture.md):
        # TRL must neither re-tokenize, re-truncate, re-pack nor re-mask them.
        kwargs.update(
            dataset_kwargs={"skip_prepare_dataset": True},
            packing=False,
            padding_free=bool(spec.packing),
            max_length=None if spec.packing else int(spec.cutoff_len),
            completion_only_loss=False,
            assistant_only_loss=False,
            shuffle_dataset=False,
        )
    beta = float(spec.pref_beta) if stage in ("dpo", "kto") else None
    if stage == "dpo":
        # TRL tokenizes the conversational prompt/chosen/rejected columns with the job's chat template
        # (model.load_tokenizer sets it) and truncates to cutoff_len
        kwargs.update(max_length=int(spec.cutoff_len), beta=beta)
        if pref_loss == "simpo":
            kwargs.update(loss_type="simpo", cpo_alpha=0.0)  # SimPO is CPO's simpo loss without its BC term
        elif pref_loss != "orpo":
            kwargs.update(loss_type=[pref_loss])  # sigmoid (DPO), ipo, hinge
    elif stage == "kto":
        kwargs.update(max_length=int(spec.cutoff_len), beta=beta)
    elif stage == "rm":
        kwargs.update(max_length=int(spec.cutoff_len))
    elif stage == "grpo":
        # each optimizer step's prompts x completions must split into whole groups of num_generations
        per_step = int(spec.per_device_train_batch_size) * int(spec.gradient_accumulation_steps) * world_size
        groups = [g for g in range(min(8, per_step), 1, -1) if per_step % g == 0]
        if not groups:
            raise ArgsError("stage grpo samples at least 2 completions per prompt: per_device_train_batch_size x "
                            "gradient_accumulation_steps x processes must be at least 2")
        kwargs.update(num_generations=groups[0], max_completion_length=min(256, int(spec.cutoff_len)),
                      metric_for_best_model=None, greater_is_better=None, eval_strategy="no", eval_steps=None)
    kwargs.update(extra)
    booster = spec.booster
    if booster == "unsloth":
        raise ArgsError("booster 'unsloth' is not supported by this trainer (Unsloth is not installed in the training image)")
    if booster == "liger_kernel":
        if on_cpu:
            raise ArgsError("booster 'liger_kernel' needs a CUDA GPU (Liger's kernels are Triton kernels)")
        # liger-kernel from the image (use_liger_kernel), not TRL's suggested Hub kernels
        # (model_init_kwargs use_kernels), which download kernels at run time: pods may be offline.
        # Deprecated in TRL 1.x, removed in 2.0 (airtune.compat.RELIES_ON); TRL is pinned to 1.16.0.
        kwargs["use_liger_kernel"] = True
    config = cls(**kwargs)

    model_kwargs: dict[str, Any] = {"dtype": _model_dtype(spec)}
    attn = {"sdpa": "sdpa", "flash_attention_2": "flash_attention_2", "none": "eager", "liger_kernel": "sdpa"}[booster]
    model_kwargs["attn_implementation"] = attn
    quantization = _quantization_config(spec, compute)
    hqq = None
    if isinstance(quantization, dict):  # hqq: quantized by model.py once loaded
        hqq = {**quantization, "device": "cpu" if on_cpu else "cuda"}
    elif quantization is not None:
        model_kwargs["quantization_config"] = quantization
    config_overrides = _rope_parameters(spec, resolved.model) or {}
    if stage == "rm":
        config_overrides["num_labels"] = 1  # one scalar reward per sequence

    peft = None
    if spec.finetuning_method == "lora":
        from peft import LoraConfig

        target = spec.lora_target
        peft = LoraConfig(
            # a reward model is a sequence classifier: with SEQ_CLS, PEFT also trains its score head
            task_type="SEQ_CLS" if stage == "rm" else "CAUSAL_LM",
            r=int(spec.lora_rank),
            lora_alpha=float(spec.lora_alpha),
            lora_dropout=float(spec.lora_dropout),  # 0.0 is a value (resolve fills only an empty one)
            # peft's "all-linear": every nn.Linear except the output layer (lm_head)
            target_modules="all-linear" if target == "all" else list(target),
            use_dora=bool(spec.use_dora),
            use_rslora=bool(spec.use_rslora),
            bias="none",
        )
    return Mapped(config=config, peft=peft, model_kwargs=model_kwargs, config_overrides=config_overrides,
                  loraplus_lr_ratio=spec.loraplus_lr_ratio, hqq=hqq)


def _model_dtype(spec) -> str:
    """The dtype the weights are loaded in.

    fp32 and mixed precision on `full` keep fp32 master weights; with `lora`/`freeze` the frozen weights
    are loaded in the half type (trainable ones are kept in fp32 by PEFT / the freeze module);
    pure_bf16 holds everything in bf16.
    """
    compute = spec.compute_type
    if compute == "pure_bf16":
        return "bfloat16"
    if compute in ("bf16", "fp16") and spec.finetuning_method != "full":
        return "bfloat16" if compute == "bf16" else "float16"
    return "float32"


def _quantization_config(spec, compute: str):
    """QLoRA: the frozen base weights quantized on load (bitsandbytes also runs on the CPU); for hqq, a dict
    of the arguments of model.quantize_hqq, which quantizes the loaded model (also on the CPU)."""
    bits = str(spec.quantization_bit)
    if bits == "none":
        return None
    if spec.finetuning_method != "lora":
        raise ArgsError(f"quantization_bit {bits} needs finetuning_method lora, not {spec.finetuning_method!r}")
    import torch

    compute_dtype = {"bf16": torch.bfloat16, "pure_bf16": torch.bfloat16, "fp16": torch.float16}.get(compute, torch.float32)
    method = spec.quantization_method
    if method == "bnb":
        from transformers import BitsAndBytesConfig

        if bits == "4":
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=compute_dtype)
        return BitsAndBytesConfig(load_in_8bit=True)
    if method == "hqq":
        # HQQ's own quantizer, run on the loaded model (model.quantize_hqq): transformers 5.24's HqqConfig
        # cannot quantize on load. Group size 64, HQQ's default for 4 bits (and transformers' HqqConfig's).
        return {"nbits": int(bits), "group_size": 64, "compute_dtype": str(compute_dtype).removeprefix("torch.")}
    if method == "eetq":
        from transformers import EetqConfig

        return EetqConfig("int8")
    raise ArgsError(f"quantization_method {method!r} is not one of bnb, hqq, eetq")


def _rope_parameters(spec, model: ModelRecord | None) -> dict | None:
    """rope_scaling: factor = ceil(cutoff_len / the model's max positions); nothing when cutoff_len fits.
    `rope_parameters` is merged into the model's own (which keep e.g. rope_theta)."""
    kind = spec.rope_scaling
    if kind == "none":
        return None
    max_positions = int((model.context_length if model else None) or 0)
    if not max_positions:
        raise ArgsError("rope_scaling needs the model's context_length (the catalog's entry has none)")
    factor = math.ceil(int(spec.cutoff_len) / max_positions)
    if factor <= 1:
        return None  # validate already warned that cutoff_len fits
    rope: dict[str, Any] = {"rope_type": kind, "factor": float(factor)}
    if kind in ("yarn", "llama3"):
        rope["original_max_position_embeddings"] = max_positions
    if kind == "llama3":
        rope.update(low_freq_factor=1.0, high_freq_factor=4.0)
    out: dict[str, Any] = {"rope_parameters": rope}
    if kind != "dynamic":
        out["max_position_embeddings"] = max_positions * factor
    return out
