"""Stage `rm`: a reward model, TRL's RewardTrainer (Bradley-Terry loss on chosen vs rejected).

The model is a sequence classifier with one output (`num_labels: 1`, args.py); with LoRA its score
head is trained too (PEFT's SEQ_CLS task saves it beside the adapter), with `freeze` the score head
trains with the last layers. The prepared rows hold `chosen_ids` and `rejected_ids`: whole
sequences, tokenized and truncated by the prepare step, which RewardTrainer uses as they are.
"""

from __future__ import annotations

COLUMNS = ("chosen_ids", "rejected_ids")


def model_class():
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification


def build_trainer(*, model, tokenizer, config, train, validation, callbacks, optimizers=(None, None)):
    from trl import RewardTrainer

    def ids(dataset):
        missing = [c for c in COLUMNS if c not in dataset.column_names]
        if missing:
            raise ValueError(f"the prepared rows lack the columns {missing} (have {dataset.column_names})")
        return dataset.select_columns(list(COLUMNS))

    return RewardTrainer(
        model=model,
        args=config,
        train_dataset=ids(train),
        eval_dataset=ids(validation) if validation is not None else None,
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=optimizers,
    )
