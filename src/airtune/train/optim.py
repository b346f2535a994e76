"""Optimizers the Trainer does not build itself: LoRA+ (PEFT's create_loraplus_optimizer)."""

from __future__ import annotations


def loraplus_optimizer(model, config, ratio: float):
    """LoRA+: LoRA's B matrices learn `ratio` times faster than its A matrices (PEFT's meaning).

    The optimizer class and its arguments are the ones `config.optim` names, so `optimizer` still applies.
    """
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer

    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(config, model)
    optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k != "lr"}
    return create_loraplus_optimizer(
        model=model,
        optimizer_cls=optimizer_cls,
        lr=config.learning_rate,
        loraplus_lr_ratio=float(ratio),
        loraplus_weight_decay=config.weight_decay,
        **optimizer_kwargs,
    )
