"""Stage `pt`: continued pre-training, a causal LM loss on every token of plain text.

The prepare step has tokenized the text and packed it into `cutoff_len` blocks (labels = input_ids;
`position_ids` restarting at each document when documents are kept apart). TRL's SFTTrainer trains
it as it is: its own preparation is skipped (args.py), and packed rows go through its padding-free
collator, with the document lengths read off `position_ids`.
"""

from __future__ import annotations

from airtune.train.sft import with_seq_lengths


def model_class():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def build_trainer(*, model, tokenizer, config, train, validation, callbacks, optimizers=(None, None)):
    from trl import SFTTrainer

    if "position_ids" in train.column_names:
        train = with_seq_lengths(train)
        if validation is not None and "position_ids" in validation.column_names:
            validation = with_seq_lengths(validation)
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=optimizers,
    )
