"""Attention for packed rows without a mask: PyTorch SDPA's causal kernel once per example.

A packed row holds several examples back to back, with `position_ids` restarting at 0 at each one
(PackedRowsCollator in sft.py). Attention must stay within each example. FlashAttention-2 does that
with its varlen kernel; without it, transformers builds a block-diagonal causal mask of
batch x cutoff_len x cutoff_len and SDPA attends over the whole row under that mask, so an example's
tokens are scored against every other token of the row only to be masked out.

`packed_sdpa` (registered as the attention implementation `airtune_packed_sdpa`) instead splits each
row at its example boundaries and runs SDPA with `is_causal=True` on each example alone: the work is
the sum of the examples' squared lengths instead of the row's, no mask is built or read, and on the
CPU SDPA takes its fused flash kernel (with an explicit mask, or with grouped-query heads given as
`enable_gqa`, it falls back to slower paths). Because the implementation has no mask function,
transformers builds no mask for it.

It is used only where every batch is packed rows without an attention mask (sft.build_trainer); given
an attention mask, or no position_ids, it is plain SDPA.
"""

from __future__ import annotations

from airtune import compat

NAME = "airtune_packed_sdpa"

# The split of the batch's position_ids, computed once per forward, not once per layer.
_LENGTHS = compat.TensorMemo()


def example_lengths(position_ids) -> list[list[int]]:
    """Per row, the lengths of its examples: a new example starts wherever position_ids is 0 (and at 0)."""
    return _LENGTHS.get(position_ids, _split)


def _split(position_ids) -> list[list[int]]:
    width = position_ids.shape[1]
    starts = (position_ids == 0).cpu()
    out = []
    for row in starts:
        s = row.nonzero().flatten().tolist()
        if not s or s[0] != 0:
            s = [0] + s
        out.append([b - a for a, b in zip(s, s[1:] + [width])])
    return out


def sdpa_attention():
    """transformers' own SDPA attention function: the `sdpa` entry of its (public) AttentionInterface."""
    from transformers import AttentionInterface

    return AttentionInterface()["sdpa"]


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                position_ids=None, **kwargs):
    """transformers' attention interface: query (batch, heads, length, head_dim), key/value (batch,
    kv_heads, length, head_dim); returns (batch, length, heads, head_dim) and no weights."""
    import torch
    import torch.nn.functional as F

    if attention_mask is not None or position_ids is None or tuple(position_ids.shape) != (query.shape[0], query.shape[2]) \
            or query.shape[2] != key.shape[2]:
        return sdpa_attention()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query heads expanded: SDPA's enable_gqa takes its slow math path on the CPU
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    rows = []
    for q, k, v, lengths in zip(query.split(1), key.split(1), value.split(1), example_lengths(position_ids)):
        parts = [F.scaled_dot_product_attention(qe, ke, ve, dropout_p=dropout, is_causal=True, scale=scaling)
                 for qe, ke, ve in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2))]
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `airtune_packed_sdpa` an attention implementation transformers knows; returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_sdpa)
    return NAME


def use_packed_sdpa(model) -> bool:
    """Switch a (PEFT-wrapped) model from SDPA to packed_sdpa; False (unchanged) where it cannot be set."""
    from airtune.train.model import base_model

    base = base_model(model)
    if compat.attn_implementation(base.config) != "sdpa":
        return False
    register()
    base.set_attn_implementation(NAME)
    return compat.attn_implementation(base.config) == NAME
