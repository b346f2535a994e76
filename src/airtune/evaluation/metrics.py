"""Prediction scores equal to LLaMA-Factory's: ROUGE-1, ROUGE-2, ROUGE-L and BLEU-4, each 0-100.

    score_pair(prediction, reference) -> {"rouge-1", "rouge-2", "rouge-l", "bleu-4"}
    score_corpus(predictions, references) -> the same keys, means over the pairs ({} for no pairs)

The recipe is LLaMA-Factory's (v0.9.4: `ComputeSimilarity.__call__` in
src/llamafactory/train/sft/metric.py and `compute_metrics`/`main` in scripts/eval_bleu_rouge.py),
which scores each pair with rouge_chinese 1.0.3 and nltk:

- ROUGE on words: the jieba tokens of each text (`jieba.cut`, default mode) joined by spaces. When
  either text has no word at all (empty or only whitespace) the three ROUGE scores are 0.
- BLEU-4 on characters: nltk's `sentence_bleu([list(reference)], list(prediction))` with
  `SmoothingFunction().method3`; 0 when no character matches.
- Each score is `round(f * 100, 4)` per pair, as LLaMA-Factory stores it, and `score_corpus` is
  `sum(scores) / len(scores)` of those rounded values, as its script averages them (LLaMA-Factory
  rounds again only when it prints). `score_pair` therefore returns the rounded per-pair values.

ROUGE is computed with Google's rouge-score (`rouge_scorer.RougeScorer` with our tokenizer) and made
to equal rouge_chinese's numbers where the two differ:

1. Counting: rouge_chinese counts *distinct* n-grams (its default `exclusive=True` puts them in a
   set), rouge-score counts them with multiplicity. ROUGE-1 and ROUGE-2 are therefore rouge-score's
   "rouge1" over the text's distinct n-grams, each given as one token.
2. ROUGE-L: rouge_chinese's `rouge_l_summary_level` flattens the sentences into one word sequence
   and takes one LCS over it: that is rouge-score's sentence-level "rougeL" (not "rougeLsum"),
   with repeated words counted, on the same words.
3. F-measure: rouge_chinese computes `2 * ((p * r) / (p + r + 1e-8))`; rouge-score computes
   `2 * p * r / (p + r)`. P and R are taken from rouge-score (the same integer divisions) and F is
   rouge_chinese's formula, so the numbers are bit-equal.
4. Words: rouge_chinese splits each text into sentences (`Rouge.cut_sent`) and normalises their
   whitespace before splitting on spaces. Sentences are concatenated again, so this only matters
   where it changes the words: each whitespace-only sentence becomes one empty word (a blank line
   inside a text is one; after 。！？ or ? the break inserted before the newline makes one more),
   and a six-dot run glued to the next character ("......." is one jieba token) is cut after the
   sixth dot. `_rouge_words` repeats the split with rouge_chinese's patterns.

Cheap to import: jieba, rouge-score and nltk are imported on first use (jieba's "Building prefix
dict" messages silenced). nltk needs no downloaded data for BLEU.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence

METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")

# rouge_chinese 1.0.3 `Rouge.cut_sent`: these substitutions, then rstrip, then split on "\n".
_SENTENCE_BREAKS = (
    (re.compile("([。！？\\?])([^”’])"), r"\1\n\2"),
    (re.compile("(\\.{6})([^”’])"), r"\1\n\2"),
    (re.compile("(…{2})([^”’])"), r"\1\n\2"),
    (re.compile("([。！？\\?][”’])([^，。！？\\?])"), r"\1\n\2"),
)


@functools.cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


@functools.lru_cache(maxsize=256)
def _rouge_words(text: str) -> tuple[str, ...]:
    """The words rouge_chinese scores for `text`: its jieba tokens joined by spaces, then split
    into sentences and words as `Rouge._get_scores` does (item 4 of the module docstring)."""
    para = " ".join(_jieba().cut(text))
    for pattern, replacement in _SENTENCE_BREAKS:
        para = pattern.sub(replacement, para)
    words: list[str] = []
    for sentence in para.rstrip().split("\n"):
        if sentence:
            # `" ".join(sentence.split()).split(" ")`: [""] for a whitespace-only sentence
            words.extend(sentence.split() or [""])
    return tuple(words)


class _Words:
    """A rouge-score tokenizer: `tokenize(text)` returns `_rouge_words(text)`, or with `distinct=n`
    its distinct n-grams in order of first appearance, each n-gram one token."""

    def __init__(self, distinct: int | None = None) -> None:
        self.distinct = distinct

    def tokenize(self, text: str) -> list:
        words = _rouge_words(text)
        if self.distinct is None:
            return list(words)
        n = self.distinct
        return list(dict.fromkeys(words[i:i + n] for i in range(len(words) - n + 1)))


@functools.cache
def _scorers() -> dict:
    import sys

    from absl import logging as absl_logging
    from rouge_score import rouge_scorer

    # rouge-score imports absl, whose handler binds the sys.stderr of the moment it is made; where that
    # stream is replaced and closed later (a test runner's capture, a task's redirected output), every
    # later log record through it fails, and Python aborts with "lost sys.stderr". Bind the process's own.
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__

    return {
        "rouge-1": ("rouge1", rouge_scorer.RougeScorer(["rouge1"], tokenizer=_Words(distinct=1))),
        "rouge-2": ("rouge1", rouge_scorer.RougeScorer(["rouge1"], tokenizer=_Words(distinct=2))),
        "rouge-l": ("rougeL", rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())),
    }


def _f_measure(precision: float, recall: float) -> float:
    """rouge_chinese's F1 (`f_r_p_rouge_n`, `rouge_l_summary_level`), epsilon included."""
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def _rouge(prediction: str, reference: str) -> dict[str, float]:
    """F of ROUGE-1/2/L in 0-1; all 0 when either text has no word (LLaMA-Factory's guard)."""
    if not any(_rouge_words(prediction)) or not any(_rouge_words(reference)):
        return {key: 0.0 for key in ("rouge-1", "rouge-2", "rouge-l")}
    result = {}
    for key, (rouge_type, scorer) in _scorers().items():
        score = scorer.score(reference, prediction)[rouge_type]  # rouge-score: (target, prediction)
        result[key] = _f_measure(score.precision, score.recall)
    return result


def _bleu4(prediction: str, reference: str) -> float:
    """nltk's sentence BLEU-4 on characters, smoothing method 3, in 0-1."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    return sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3)


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    return value


def score_pair(prediction: str, reference: str) -> dict[str, float]:
    """LLaMA-Factory's four scores of one prediction against its reference, each
    `round(value * 100, 4)` as LLaMA-Factory keeps them per pair."""
    prediction = _check_text(prediction, "prediction")
    reference = _check_text(reference, "reference")
    scores = {key: float(round(f * 100, 4)) for key, f in _rouge(prediction, reference).items()}
    scores["bleu-4"] = float(round(_bleu4(prediction, reference) * 100, 4))
    return scores


def score_corpus(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """The mean of `score_pair` over the pairs, per metric (`sum / len`, as LLaMA-Factory's
    scripts/eval_bleu_rouge.py); {} when there are no pairs."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {}
    per_pair = [
        score_pair(_check_text(p, f"prediction {i}"), _check_text(r, f"reference {i}"))
        for i, (p, r) in enumerate(zip(predictions, references))
    ]
    return {key: sum(scores[key] for scores in per_pair) / len(per_pair) for key in METRICS}
