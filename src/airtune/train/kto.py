"""Stage `kto`: Kahneman-Tversky optimization on single (prompt, completion, label) examples, where the
label says whether the completion is desirable. TRL's KTOTrainer; `pref_beta` is its beta.

The prepared rows carry TRL's conversational form (prompt: messages; completion: the assistant
message; label: bool); TRL renders them with the job's chat template and builds the mismatched pairs
its KL estimate needs. The reference model is the starting model (with LoRA: the adapter switched off).
"""

from __future__ import annotations

from airtune.train.dpo import conversational

COLUMNS = ("prompt", "completion", "label")


def model_class():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def build_trainer(*, model, tokenizer, config, train, validation, callbacks, optimizers=(None, None)):
    from trl import KTOTrainer

    return KTOTrainer(
        model=model,
        ref_model=None,
        args=config,
        train_dataset=conversational(train, COLUMNS),
        eval_dataset=conversational(validation, COLUMNS) if validation is not None else None,
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=optimizers,
    )
