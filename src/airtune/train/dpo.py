"""Stage `dpo`: preference optimization on (prompt, chosen, rejected) pairs.

`pref_loss` picks the trainer: sigmoid (DPO), ipo and hinge are TRL's DPOTrainer losses; orpo and
simpo use TRL's own trainers for them (trl.experimental.orpo.ORPOTrainer, and CPOTrainer with its
simpo loss), which is why TRL is pinned to an exact version. ORPO and SimPO need no reference model.

The prepared rows carry the pair in TRL's conversational form (prompt: messages; chosen/rejected: the
assistant message); TRL renders them with the tokenizer's chat template, which model.load_tokenizer
set to the job's template, and truncates to cutoff_len (args.py). The reference model of DPO is the
starting model itself: with LoRA the base with its adapter switched off, else a frozen copy.
"""

from __future__ import annotations

COLUMNS = ("prompt", "chosen", "rejected")


def model_class():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def conversational(dataset, columns=COLUMNS):
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"the prepared rows lack the columns {missing} (have {dataset.column_names})")
    return dataset.select_columns(list(columns))


def build_trainer(*, model, tokenizer, config, train, validation, callbacks, optimizers=(None, None)):
    train = conversational(train)
    validation = conversational(validation) if validation is not None else None
    common = dict(model=model, args=config, train_dataset=train, eval_dataset=validation,
                  processing_class=tokenizer, callbacks=callbacks, optimizers=optimizers)
    kind = type(config).__name__
    if kind == "ORPOConfig":
        from trl.experimental.orpo import ORPOTrainer

        return ORPOTrainer(**common)
    if kind == "CPOConfig":
        from trl.experimental.cpo import CPOTrainer

        return CPOTrainer(**common)
    from trl import DPOTrainer

    return DPOTrainer(ref_model=None, **common)
