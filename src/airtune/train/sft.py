"""Stage `sft`: supervised fine-tuning with TRL's SFTTrainer on the prepared, already-tokenized rows.

Rows hold `input_ids` and `labels` (-100 on prompt tokens), so the loss is on the response tokens only.
SFTTrainer is told to skip its own dataset preparation (`skip_prepare_dataset`, set in args.py): it
neither re-tokenizes nor re-masks. With packing, each row also holds `position_ids` restarting at
each example, so attention never crosses examples:

- with flash-attention 2, they become the `seq_lengths` TRL's padding-free collator reads: the batch
  is one row, and the varlen kernel attends within each example at no cost for the others;
- otherwise each packed row stays a row of its own (`PackedRowsCollator`), with its position_ids and
  no attention mask. Under SDPA the model then attends with `packed_attention.packed_sdpa`: SDPA's
  causal kernel once per example, no mask (the work is the sum of the examples' squared lengths);
  under eager attention, transformers builds a block-diagonal causal mask per row from the position_ids.

Rows that are not packed are batched padded (TRL's collator), except on the CPU under SDPA: there the
batch's rows are laid back to back in one row (`PackedRowsCollator(one_row=True)`) and attend with
`packed_sdpa`, so no matrix product runs on padding. The examples, the batches and the loss are those
of the padded batch (docs/benchmarks.md; tests/train/test_packed_rows.py checks the gradients). On GPUs
this is not done (not measured there).

On the CPU the loss is the model's own causal-LM loss, computed on the target tokens alone
(`loss.target_cross_entropy`) rather than with TRL's fused LM head (`AirtuneSFTTrainer`).
Stage `pt` trains with this module's trainer too.
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


class PackedRowsCollator:
    """Packed rows padded to the batch's longest row: input_ids, labels (-100 on padding), position_ids
    restarting at each example (from `seq_lengths`, the column TRL keeps; the padding a run of its own), no
    attention mask; and `num_real_tokens`, the tokens that are not padding,
    which `AirtuneSFTTrainer` counts (TRL would count the padded length of one row).

    `one_row`: the batch's rows laid back to back in one row (padding-free; a row without `seq_lengths`
    is one example). With attention per example and the loss on the targets, this computes what the
    padded batch computes, without the padding."""

    def __init__(self, pad_token_id: int, *, one_row: bool = False):
        self.pad_token_id = pad_token_id
        self.one_row = one_row

    def __call__(self, examples: list[dict]) -> dict:
        import itertools

        import torch

        if self.one_row and len(examples) > 1:
            examples = [{key: list(itertools.chain.from_iterable(e[key] for e in examples)) for key in ("input_ids", "labels")}
                        | {"seq_lengths": [n for e in examples for n in e.get("seq_lengths") or [len(e["input_ids"])]]}]

        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        positions = torch.arange(width, dtype=torch.long).repeat(len(examples), 1)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.as_tensor(e["labels"], dtype=torch.long)
            positions[i, :n] = torch.cat([torch.arange(k, dtype=torch.long) for k in e.get("seq_lengths") or [n]])
            positions[i, n:] = torch.arange(width - n, dtype=torch.long)  # restarts at 0: its own block
        labels[positions == 0] = -100  # an example's first token is no target of the one before (as TRL's collator)
        real = sum(len(e["input_ids"]) for e in examples)
        return {"input_ids": ids, "labels": labels, "position_ids": positions,
                "num_real_tokens": torch.tensor(real, dtype=torch.long)}


def tensor_parallel_size(accelerator) -> int:
    """The tensor-parallel group size: its ranks get the same batch, so a token count gathered over all
    processes counts each token once per rank of the group (accelerate's parallelism config, which TRL
    reads for its own count)."""
    config = accelerator.parallelism_config
    return config.tp_size if config is not None else 1


def count_tokens(trainer, real, before: int) -> None:
    """Add this batch's non-padding tokens, summed over the processes, to TRL's `num_tokens`."""
    from airtune import compat

    total = trainer.accelerator.gather_for_metrics(real.reshape(1).to(trainer.accelerator.device)).sum().item()
    compat.set_sft_tokens_seen(trainer, before + int(total) // tensor_parallel_size(trainer.accelerator))


def _trainer_class():
    from trl import SFTTrainer

    from airtune import compat
    from airtune.train.loss import shifted_targets, target_cross_entropy

    class AirtuneSFTTrainer(SFTTrainer):
        """SFTTrainer with two changes, each for speed, each switched by an attribute:

        - `plain_loss` (on the CPU): the model's own cross-entropy instead of TRL's fused LM head. The fused
          head scores the LM head in tiles and computes entropy and top-1 accuracy for its metrics; it saves
          GPU memory (no full logits), and on the CPU it costs ~1.5x per step on the tiny model
          (docs/benchmarks.md). TRL's `entropy` and `mean_token_accuracy` metrics are then not logged.
          Where the model takes a target mask (`loss.accepts_target_mask`), `compute_loss_func` is
          `loss.target_cross_entropy` and the model is asked for the target positions' logits alone.
        - `num_real_tokens` in a batch (PackedRowsCollator): the non-padding token count. TRL counts
          `position_ids.size(1)` for a batch without an attention mask (it expects one padding-free row).

        Both keep TRL's `num_tokens` metric (its token count: `compat.sft_tokens_seen`; TRL is pinned exactly).
        Overriding `compute_loss` is how TRL asks for a custom loss; the CPU path calls transformers' own
        `Trainer.compute_loss` (`compat.trainer_compute_loss`), not SFTTrainer's fused-head one.
        """

        plain_loss = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            real = inputs.pop("num_real_tokens", None)
            if not self.plain_loss:
                before = compat.sft_tokens_seen(self)
                out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
                if real is not None and compat.sft_tokens_seen(self) != before:  # counted: a training step
                    count_tokens(self, real, before)
                return out
            inputs["use_cache"] = False
            if self.compute_loss_func is target_cross_entropy and "labels" in inputs:
                inputs["logits_to_keep"] = shifted_targets(inputs["labels"]) != -100
            out = compat.trainer_compute_loss(self, model, inputs, return_outputs=return_outputs,
                                              num_items_in_batch=num_items_in_batch)
            if self.model.training:
                if real is None:
                    mask = inputs.get("attention_mask")
                    real = mask.sum() if mask is not None else inputs["input_ids"].new_tensor(inputs["input_ids"].numel())
                count_tokens(self, real, compat.sft_tokens_seen(self))
            return out

    return AirtuneSFTTrainer


def model_class():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def build_trainer(*, model, tokenizer, config, train, validation, callbacks, optimizers=(None, None)):
    from airtune import compat
    from airtune.train.loss import accepts_target_mask, target_cross_entropy
    from airtune.train.packed_attention import use_packed_sdpa

    trainer_class, collator = _trainer_class(), None
    on_cpu = bool(getattr(config, "use_cpu", False))
    trainer_class.plain_loss = on_cpu
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if "position_ids" in train.column_names:
        train = with_seq_lengths(train)
        if validation is not None and "position_ids" in validation.column_names:
            validation = with_seq_lengths(validation)
        if compat.attn_implementation(model.config) != "flash_attention_2":
            config.padding_free = False  # each packed row a row of its own (module docstring)
            collator = PackedRowsCollator(pad)
            use_packed_sdpa(model)  # SDPA per example; no-op for eager attention
    elif on_cpu and use_packed_sdpa(model):
        # Rows not packed, on the CPU: the batch is trained padding-free, as one row (module docstring).
        config.padding_free = False
        collator = PackedRowsCollator(pad, one_row=True)
    trainer = trainer_class(
        model=model,
        args=config,
        data_collator=collator,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=optimizers,
    )
    if trainer_class.plain_loss and accepts_target_mask(model):
        trainer.compute_loss_func = target_cross_entropy
    return trainer
