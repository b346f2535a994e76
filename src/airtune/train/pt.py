"""Stage `pt`: continued pre-training, a causal LM loss on every token of plain text.

The prepare step has tokenized the text and packed it into `cutoff_len` blocks (labels = input_ids;
`position_ids` restarting at each document when documents are kept apart). It trains with the sft
stage's trainer: TRL's own preparation skipped (args.py), packed rows kept apart as sft.py describes
(flash-attention's varlen rows, or SDPA once per document), and on the CPU the loss on the target
tokens alone.
"""

from __future__ import annotations

from airtune.train.sft import build_trainer  # noqa: F401  (the stage's trainer)


def model_class():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM
