"""Stage `grpo`: online RL against the reward model of a finished `rm` job (TRL's GRPOTrainer).

For each prompt the policy samples a group of completions (`num_generations`, args.py); the reward
model scores each, and the policy is pushed toward the completions that beat their group's mean.
The prepared rows carry `prompt` (the conversation up to the answer, TRL's conversational form);
TRL renders it with the job's chat template.

The reward model is the `rm` job's output/final: its own spec.json says which base weights it was
trained on; a LoRA reward model is merged into that base (score head included) before use.
"""

from __future__ import annotations

import json
from pathlib import Path


def model_class():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def reward_model_dir(resolved) -> Path:
    """The rm job's final folder (`resolved`: a Resolved or spec.json's dict)."""
    from airtune.resolved import as_resolved

    rm = as_resolved(resolved).reward_model
    path = rm.final_dir if rm else None
    if not path:
        raise ValueError("stage grpo needs reward_model: the output/final folder of a finished rm job (resolved['reward_model'])")
    return Path(path)


def load_reward_model(final: Path):
    """(model, tokenizer) of a finished rm job's final folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(final)
    if (final / "adapter_config.json").exists():
        from peft import PeftModel

        base_weights = json.loads((final / "spec.json").read_text())["model"]["weights"]
        base = AutoModelForSequenceClassification.from_pretrained(base_weights, num_labels=1)
        model = PeftModel.from_pretrained(base, str(final)).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(final, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def build_trainer(*, model, tokenizer, config, train, validation, callbacks, optimizers=(None, None), resolved):
    from trl import GRPOTrainer

    reward_model, reward_tokenizer = load_reward_model(reward_model_dir(resolved))
    return GRPOTrainer(
        model=model,
        reward_funcs=reward_model,
        args=config,
        train_dataset=train.select_columns(["prompt"]),
        eval_dataset=None,  # an eval pass would sample completions again; the reward curve is the figure
        processing_class=tokenizer,
        reward_processing_classes=reward_tokenizer,
        callbacks=callbacks,
        optimizers=optimizers,
    )
