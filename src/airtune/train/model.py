"""Load the base model and tokenizer from the resolved spec, and make the right parameters trainable."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from airtune.resolved import Resolved, as_resolved, as_settings


def load_tokenizer(resolved: Resolved | Mapping):
    """The base model's tokenizer, with the job's chat template (the one the data was prepared with)."""
    from transformers import AutoTokenizer

    resolved = as_resolved(resolved)
    model = resolved.model
    tokenizer = AutoTokenizer.from_pretrained(model.weights, revision=model.revision)
    template = resolved.template.path if resolved.template else None
    if template and Path(template).is_file():
        tokenizer.chat_template = Path(template).read_text(encoding="utf-8")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(resolved: Resolved | Mapping, model_kwargs: dict, *, config_overrides: dict | None = None, model_class=None,
               hqq: dict | None = None, **extra):
    """The base model (AutoModelForCausalLM unless the stage asks for another class).

    `config_overrides` change the model's config first; dict values (rope_parameters) are merged into
    the config's own, so e.g. the model's rope_theta is kept. `hqq` (args.Mapped.hqq): the loaded
    model's linear layers are then quantized with HQQ (`quantize_hqq`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_class = model_class or AutoModelForCausalLM
    model = as_resolved(resolved).model
    config = AutoConfig.from_pretrained(model.weights, revision=model.revision, **extra)
    for key, value in (config_overrides or {}).items():
        current = getattr(config, key, None)
        setattr(config, key, {**current, **value} if isinstance(value, dict) and isinstance(current, dict) else value)
    loaded = model_class.from_pretrained(model.weights, revision=model.revision, config=config, **model_kwargs)
    if hqq:
        quantize_hqq(loaded, **hqq)
    return loaded


def quantize_hqq(model, *, nbits: int, group_size: int, compute_dtype: str, device: str) -> list[str]:
    """Replace every linear layer but the output ones (lm_head, a classifier's score) by HQQ's
    HQQLinear, `nbits` bits in groups of `group_size`, one layer at a time (the full-precision weight of
    each is freed as it goes), on `device` (`cuda` is this process's GPU, LOCAL_RANK). The frozen base
    of a QLoRA job: PEFT wraps HQQLinear with its own LoRA layer. Returns the names quantized."""
    import os

    import torch

    from airtune import compat

    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    skip = set(OUTPUT_LAYERS)
    names = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and name not in skip:
                setattr(parent, name, compat.hqq_linear(child, nbits=nbits, group_size=group_size,
                                                        compute_dtype=compute_dtype, device=device))
                names.append(f"{parent_name}.{name}" if parent_name else name)
    if not names:
        raise ValueError(f"hqq: {type(model).__name__} has no linear layer to quantize")
    model.is_hqq_quantized = True
    return names


# The layers that map hidden states to the output (never quantized, never LoRA targets of "all").
OUTPUT_LAYERS = ("lm_head", "score")


def make_trainable(model, spec, peft_config, *, checkpointing: bool = False):
    """The finetuning_method: `lora` wraps the model in a PeftModel (after preparing a quantized base
    for k-bit training), `freeze` trains the last layers, `full` trains every weight. `spec`: the resolved
    spec's JobSettings (or its dict)."""
    spec = as_settings(spec)
    method = spec.finetuning_method
    if method == "lora":
        if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False) or getattr(model, "hf_quantizer", None):
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
        return attach_lora(model, peft_config)
    if method == "freeze":
        freeze_all_but_last_layers(model, spec.freeze_trainable_layers, upcast=spec.compute_type != "pure_bf16")
        if spec.stage == "rm":  # a reward model's score head is new: it always trains
            for name, param in model.named_parameters():
                if name.startswith("score."):
                    param.requires_grad_(True)
        return model
    if method == "full":
        model.requires_grad_(True)
        return model
    raise ValueError(f"finetuning_method {method!r} is not one of lora, freeze, full")


def attach_lora(model, peft_config):
    """Wrap `model` in a PeftModel: the base weights frozen, the LoRA matrices trainable (kept in fp32).

    On an HQQ-quantized base, lora_target `all` (PEFT's "all-linear", which finds only nn.Linear and
    bitsandbytes' layers) becomes the names of the HQQLinear layers."""
    import dataclasses

    from peft import get_peft_model

    if getattr(model, "is_hqq_quantized", False) and peft_config.target_modules in ("all-linear", {"all-linear"}):
        from airtune import compat

        hqq_linear = compat.hqq_linear_class()
        leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, hqq_linear)})
        peft_config = dataclasses.replace(peft_config, target_modules=leaves)
    return get_peft_model(model, peft_config)


def freeze_all_but_last_layers(model, n: int, *, upcast: bool = True) -> list[str]:
    """`freeze`: only the last `n` decoder layers train; embeddings, the other layers, the final norm and
    the output layer stay frozen. Trainable weights are kept in fp32 (the optimizer's updates of a
    half-precision weight would round away). Returns the names of the trainable parameters."""
    import re

    import torch

    layers = int(model.config.get_text_config().num_hidden_layers)
    n = max(1, min(int(n), layers))
    trainable_ids = {str(i) for i in range(layers - n, layers)}
    pattern = re.compile(r"\.layers\.(\d+)\.")
    names = []
    for name, param in model.named_parameters():
        match = pattern.search(name)
        train = bool(match and match.group(1) in trainable_ids)
        param.requires_grad_(train)
        if train:
            if upcast and param.dtype in (torch.float16, torch.bfloat16):
                param.data = param.data.float()
            names.append(name)
    if not names:
        raise ValueError(f"freeze: no parameter of {type(model).__name__} matched '.layers.<i>.'; cannot pick the last {n} layers")
    return names


def base_model(model):
    """The transformers model under a PEFT wrapper (the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
