"""Padding-free packing: a packed row gives each example exactly the logits it gets alone."""

from __future__ import annotations


def test_packed_examples_do_not_attend_to_each_other(tiny_model_dir):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from airtune.train.sft import with_seq_lengths

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    a, b, c = list(range(5, 25)), list(range(30, 42)), list(range(50, 57))
    row = {"input_ids": a + b + c, "labels": a + b + c, "position_ids": [*range(20), *range(12), *range(7)]}
    packed = with_seq_lengths(Dataset.from_list([row]))
    assert packed[0]["seq_lengths"] == [20, 12, 7]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([packed[0]])
    assert "attention_mask" not in batch
    with torch.no_grad():
        # use_cache=False as in training (TRL sets it): only then does transformers build the block mask
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([x])).logits[0] for x in (a, b, c)])
        crossing = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    assert (crossing - alone).abs().max() > 0.1  # the test would notice attention across examples
    # the first token of each example is never a target of the previous one
    assert batch["labels"][0, [0, 20, 32]].tolist() == [-100, -100, -100]
