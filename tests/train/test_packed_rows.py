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
