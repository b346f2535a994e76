"""Load the base model and tokenizer from the resolved spec, and make the right parameters trainable."""

from __future__ import annotations

from pathlib import Path


def load_tokenizer(resolved: dict):
    """The base model's tokenizer, with the job's chat template (the one the data was prepared with)."""
    from transformers import AutoTokenizer

    model = resolved["model"]
    tokenizer = AutoTokenizer.from_pretrained(model["weights"], revision=model.get("revision"))
    template = (resolved.get("template") or {}).get("path")
    if template and Path(template).is_file():
        tokenizer.chat_template = Path(template).read_text(encoding="utf-8")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(resolved: dict, model_kwargs: dict, *, model_class=None):
    """The base model (AutoModelForCausalLM unless the stage asks for another class)."""
    from transformers import AutoModelForCausalLM

    model_class = model_class or AutoModelForCausalLM
    model = resolved["model"]
    return model_class.from_pretrained(model["weights"], revision=model.get("revision"), **model_kwargs)


def attach_lora(model, peft_config):
    """Wrap `model` in a PeftModel: the base weights frozen, the LoRA matrices trainable (kept in fp32)."""
    from peft import get_peft_model

    return get_peft_model(model, peft_config)


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
