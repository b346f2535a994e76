"""Stage `sft`: supervised fine-tuning with TRL's SFTTrainer on the prepared, already-tokenized rows.

Rows hold `input_ids` and `labels` (-100 on prompt tokens), so the loss is on the response tokens only.
SFTTrainer is told to skip its own dataset preparation (`skip_prepare_dataset`, set in args.py): it
neither re-tokenizes nor re-masks. With packing, each row also holds `position_ids` restarting at
each example; they become the `seq_lengths` TRL's padding-free collator reads, so attention never
crosses examples.
"""

from __future__ import annotations


def with_seq_lengths(dataset):
    """Packed rows: the example lengths, read off where position_ids restart at 0."""

    def lengths(batch):
        out = []
        for pos in batch["position_ids"]:
            starts = [i for i, p in enumerate(pos) if p == 0] or [0]
            bounds = starts[1:] + [len(pos)]
            out.append([b - a for a, b in zip(starts, bounds)])
        return {"seq_lengths": out}

    return dataset.map(lengths, batched=True, desc="example lengths of packed rows")


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
