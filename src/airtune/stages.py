"""Which datasets each training stage takes: the one table validate (resolve.py), the data step
(data/build.py) and docs/form.md (formdoc.py) read.

A dataset's kind comes from the catalog (configs/datasets.yaml): `sft` (instructions or
conversations), `text` (plain text), `preference` (a prompt with a chosen and a rejected answer) or
`kto` (an answer labelled desirable or undesirable).

grpo trains on prompts alone: TRL's GRPOTrainer is given the `prompt` column only (train/grpo.py),
which the data step writes from an sft row (the conversation up to its last answer) and from a
preference row (its prompt) alike (data/encode.py, `_encode_prompts`).

Standard library only: the DAG file imports it at parse time, through resolve.
"""

from __future__ import annotations

STAGE_DATASET_KINDS: dict[str, tuple[str, ...]] = {
    "sft": ("sft",),
    "pt": ("text",),
    "rm": ("preference",),
    "dpo": ("preference",),
    "kto": ("kto",),
    "grpo": ("sft", "preference"),
}

# How messages name each kind.
KIND_WORDS: dict[str, str] = {
    "sft": "instructions or conversations",
    "text": "plain text",
    "preference": "preference pairs",
    "kto": "examples labelled desirable/undesirable",
}


def dataset_kinds(stage: str) -> tuple[str, ...]:
    """The dataset kinds a stage trains on; KeyError for a stage that is not one."""
    return STAGE_DATASET_KINDS[stage]


def kinds_in_words(kinds: tuple[str, ...]) -> str:
    """'instructions or conversations or preference pairs'."""
    return " or ".join(KIND_WORDS[k] for k in kinds)
