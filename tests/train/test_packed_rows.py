"""Packed rows kept as rows (SDPA, the CPU): each example gets exactly the logits it gets alone, and the
token count is the rows' real tokens, not their padding."""

from __future__ import annotations


def test_packed_rows_collator_keeps_examples_apart(tiny_model_dir):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from airtune.train.sft import PackedRowsCollator, with_seq_lengths

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    a, b, c, d = list(range(5, 25)), list(range(30, 42)), list(range(50, 57)), list(range(60, 70))
    rows = [{"input_ids": a + b + c, "labels": a + b + c, "position_ids": [*range(20), *range(12), *range(7)]},
            {"input_ids": d, "labels": d, "position_ids": list(range(10))}]
    packed = with_seq_lengths(Dataset.from_list(rows))
    batch = PackedRowsCollator(pad_token_id=0)([packed[0], packed[1]])
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape == (2, 39)
    assert int(batch.pop("num_real_tokens")) == 39 + 10
    # the padding of row 2 is never a target, nor is any example's first token
    assert (batch["labels"][1, 10:] == -100).all()
    assert batch["labels"][0, [0, 20, 32]].tolist() == [-100, -100, -100]
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = torch.cat([model(input_ids=torch.tensor([x])).logits[0] for x in (a, b, c)])
        alone_d = model(input_ids=torch.tensor([d])).logits[0]
    torch.testing.assert_close(together[0], alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(together[1, :10], alone_d, rtol=1e-4, atol=1e-4)


def _packed_batch():
    from datasets import Dataset

    from airtune.train.sft import PackedRowsCollator, with_seq_lengths

    a, b, c, d = list(range(5, 25)), list(range(30, 42)), list(range(50, 57)), list(range(60, 70))
    rows = [{"input_ids": a + b + c, "labels": [-100] * 5 + a[5:] + [-100] * 4 + b[4:] + c,
             "position_ids": [*range(20), *range(12), *range(7)]},
            {"input_ids": d, "labels": d, "position_ids": list(range(10))}]
    batch = PackedRowsCollator(pad_token_id=0)(list(with_seq_lengths(Dataset.from_list(rows))))
    batch.pop("num_real_tokens")
    return batch, (a, b, c, d)


def test_packed_sdpa_attends_within_each_example_like_the_block_mask(tiny_model_dir):
    """airtune_packed_sdpa (SDPA's causal kernel per example, no mask) gives the logits of the block-diagonal
    mask transformers builds for SDPA, and of each example alone; its gradients equal the mask's."""
    import torch
    from transformers import AutoModelForCausalLM

    from airtune.train.packed_attention import NAME, example_lengths, use_packed_sdpa

    batch, (a, b, c, d) = _packed_batch()
    assert example_lengths(batch["position_ids"]) == [[20, 12, 7], [10, 29]]  # row 2: d, then its padding
    masked = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    packed = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert use_packed_sdpa(packed) and packed.config._attn_implementation == NAME
    out_masked = masked(**batch, use_cache=False)
    out_packed = packed(**batch, use_cache=False)
    torch.testing.assert_close(out_packed.logits, out_masked.logits, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        alone = torch.cat([masked(input_ids=torch.tensor([x])).logits[0] for x in (a, b, c)])
    torch.testing.assert_close(out_packed.logits[0], alone, rtol=1e-4, atol=1e-4)
    out_masked.loss.backward()
    out_packed.loss.backward()
    for (name, p), q in zip(masked.named_parameters(), packed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    # the saved config names plain SDPA: the implementation is a training-time choice of this process
    assert packed.config.to_dict().get("_attn_implementation") in (None, "sdpa")


def test_target_cross_entropy_equals_the_models_loss_and_gradients(tiny_model_dir):
    """loss.target_cross_entropy on the logits of the target positions alone (logits_to_keep) is the loss
    transformers computes over every position, with the same gradients, with and without num_items_in_batch."""
    import torch
    from transformers import AutoModelForCausalLM

    from airtune.train.loss import accepts_target_mask, shifted_targets, target_cross_entropy

    batch, _ = _packed_batch()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert accepts_target_mask(model)
    keep = shifted_targets(batch["labels"]) != -100
    n = int(keep.sum())
    for items in (None, torch.tensor(n + 7)):  # + 7: as if the accumulated batch had 7 more targets
        model.zero_grad()
        reference = model(**batch, use_cache=False, **({} if items is None else {"num_items_in_batch": items})).loss
        reference.backward()
        expected = {k: p.grad.clone() for k, p in model.named_parameters()}
        model.zero_grad()
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = model(**inputs, use_cache=False, logits_to_keep=keep)
        assert out.logits.shape == (n, model.config.vocab_size)
        loss = target_cross_entropy(out, batch["labels"], num_items_in_batch=items)
        torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
        (loss * 3).backward()  # the upstream gradient is applied
        for k, p in model.named_parameters():
            torch.testing.assert_close(p.grad, 3 * expected[k], rtol=1e-3, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    # a batch without a target: zero, not NaN
    none = torch.full_like(batch["labels"], -100)
    out = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False, logits_to_keep=none != -100)
    assert float(target_cross_entropy(out, none)) == 0.0


def test_one_row_batch_trains_like_the_padded_batch(tiny_model_dir):
    """Rows that are not packed, on the CPU: the batch laid back to back in one row (padding-free) under
    airtune_packed_sdpa, with the loss on the targets, gives the loss and gradients of the padded batch."""
    import torch
    from transformers import AutoModelForCausalLM

    from airtune.train.loss import shifted_targets, target_cross_entropy
    from airtune.train.packed_attention import use_packed_sdpa
    from airtune.train.sft import PackedRowsCollator

    rows = [list(range(5, 25)), list(range(30, 42)), list(range(50, 57))]
    examples = [{"input_ids": r, "labels": [-100] * 3 + r[3:]} for r in rows]
    width = max(map(len, rows))
    padded = {
        "input_ids": torch.tensor([r + [0] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in examples]),
    }
    one = PackedRowsCollator(pad_token_id=0, one_row=True)(examples)
    assert one["input_ids"].shape == (1, 39) and int(one.pop("num_real_tokens")) == 39
    assert one["position_ids"][0].tolist() == [*range(20), *range(12), *range(7)]

    reference_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert use_packed_sdpa(model)
    reference = reference_model(**padded, use_cache=False).loss
    reference.backward()
    labels = one.pop("labels")
    out = model(**one, use_cache=False, logits_to_keep=shifted_targets(labels) != -100)
    loss = target_cross_entropy(out, labels)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    loss.backward()
    for (name, p), q in zip(reference_model.named_parameters(), model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
