"""`python -m airtune.evaluate --spec <job>/spec.json --data <job>/data --model <tuned> --output <job>/evaluation`

The evaluator: what the DAG's `evaluate` task runs where training ran (a local child process on the
embedded default, a pod on a Kubernetes location), after the trainer; `launch.command.evaluate_command`
builds the command. It measures the tuned model and the model the job started from on the job's
held-out data and benchmarks. Never imports Airflow; torch, transformers and peft are imported when it runs.

Inputs
- `--spec`: the resolved spec (docs/architecture.md). Read: `spec.stage`; `spec.eval_max_samples` (prompts
  to answer, default 50, 0: no generation); `resolved.benchmarks` ([{name, files, lang}], default []);
  `spec.pref_beta` (dpo/kto, default 0.1); `spec.per_device_train_batch_size` (and
  `extra_args.per_device_eval_batch_size`) for the loss's batches; `spec.compute_type`; `resolved.model`,
  `resolved.template`, `resolved.parent`. Older spec.json files without the evaluation fields get the defaults.
- `--data`: the prepared data (`airtune.data.prepare`): `validation/` (the loss, the preference pairs) and,
  for sft, `eval_prompts.jsonl` (per validation example, in the split's order: {messages, reference}).
- `--model`: the tuned model, the trainer's `output/final`: a LoRA adapter on the job's base weights, or
  full weights; with its tokenizer and chat template.
- `--champion DIR` and `--champion-version N` (optional; the pipeline gives them when the job may move
  `champion` and one exists): the registered model's current champion, scored after the tuned model on
  the same data and in the same way (its weights not loading is a warning, not a failure).

The base model is the model the job started from (`inference.load_base`): the parent job's model when
`resolved.parent` is set (its final weights in its job folder, else its registered version), else
`resolved.model.weights`. When the tuned model is a LoRA adapter on those same weights (no parent), the
weights are loaded once and the base answers with the adapter switched off (peft's `disable_adapter`);
otherwise one model at a time: the base loaded, measured and freed, then the tuned model.

Metrics (per model, in evaluation.json's "base" and "tuned"; each only where it applies)
- `eval_loss`, `perplexity` (= exp(eval_loss)): sft and pt with a validation split. The cross-entropy over
  the label tokens as the trainer's evaluation computes it (transformers' `Trainer.evaluation_loop`):
  batches of per_device_eval_batch_size rows in the split's order, each batch's loss the mean over its
  label tokens, `eval_loss` the mean of the batches' losses weighted by their rows (the loop repeats a
  batch's loss per row of the batch size, and accelerate drops the last batch's missing rows); packed
  rows split into their examples where position_ids restart. For the final weights it equals
  result.json's eval_loss (a one-process run).
- `rouge-1`, `rouge-2`, `rouge-l`, `bleu-4` (0-100): `evaluation.metrics.score_corpus` over the first
  eval_max_samples prompts: sft: eval_prompts.jsonl; dpo: the validation pairs' prompt and chosen answer;
  kto: the desirable validation examples. Greedy answers of at most max_new_tokens = the reference's token
  count + 1 rounded up to a multiple of 32, at most 512, stopping at the template's end-of-turn token or
  EOS (`inference.stop_ids`), as `airtune generate` answers.
- `benchmark:<name>` (overall) and `benchmark:<name>/<subject>`: accuracy (0-100) on each benchmark of
  `resolved.benchmarks` (`evaluation.benchmarks`): each question zero-shot, one user turn (`messages_of`)
  through the job's chat template with the generation prompt; a choice's score is the log-probability of
  its letter as the next token (the tokens of "A" and " A" .. "D" and " D", their probabilities summed):
  the next-token logits LLaMA-Factory's evaluator compares; the best-scored letter is the answer.
- `reward_accuracy` (rm; tuned only: the base has no reward head): the share of validation pairs whose
  reward (the model's score of the whole sequence) is higher for chosen than for rejected, x 100.
- dpo: `reward_accuracy` and `reward_margin`, tuned only. DPO's implicit reward of an answer y to x is
  beta * (log pi(y|x) - log pi_base(y|x)) (summed log-probabilities of y's prepared token ids after the
  prompt's); the base is the reference, so its rewards are 0. `reward_margin` = mean(reward(chosen) -
  reward(rejected)), `reward_accuracy` = the share with reward(chosen) > reward(rejected), x 100.
- kto: `reward_margin`, tuned only: mean reward of the desirable minus mean reward of the undesirable
  validation examples.

Output, in `--output` (written into a temporary folder beside it and renamed when complete: readers see
the previous results or the new ones, never a part; a re-run replaces them):
- `evaluation.json`: {"format": 1, "stage", "samples" (prompts scored), "pairs" (validation pairs or
  examples scored for rm/dpo/kto, else 0), "base": {metrics}, "tuned": {metrics}, "seconds": {"base",
  "tuned", ["champion"], "total"} (each model's part with its loading; with shared weights the loading
  counts to base), "base_model" (what the base was: "base weights <path>", "parent job ...", "none" for
  rm), "tuned_model" (the --model folder), "device"; with --champion: "champion": {metrics},
  "champion_version"}
- `predictions.jsonl`: one object per scored prompt: {"prompt" (the last user turn's text), "reference",
  "base", "tuned" (the answers), "base_scores", "tuned_scores" (`score_pair`); with --champion also
  "champion", "champion_scores"}.

Progress lines on stdout ("[airtune] evaluate: base: 20/50 prompts"). A configuration error (a missing
or unreadable input, weights that cannot be loaded, a bad benchmark file: running again fails the same
way) is one line "[airtune] configuration error: ..." on stderr and exit 78 (the trainer's EXIT_CONFIG);
any other failure exits non-zero with its traceback. Device: cuda when available, else the CPU; float32
(bfloat16 on a GPU for bf16/pure_bf16 jobs); torch's threads as in the trainer (torch's default,
OMP_NUM_THREADS when set).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from airtune import paths
from airtune.resolved import Resolved, ResolvedSpecError, as_resolved, as_settings

FORMAT = 1
EVALUATION_FILE = "evaluation.json"
PREDICTIONS_FILE = "predictions.jsonl"
PROMPTS_FILE = "eval_prompts.jsonl"  # airtune.data.build.EVAL_PROMPTS_FILE
DEFAULT_MAX_SAMPLES = 50
MAX_NEW_TOKENS = 512
NEW_TOKENS_STEP = 32
EXIT_CONFIG = 78  # airtune.launch.local.EXIT_CONFIG
# Tokens per forward pass (rows x padded length) for the loss and the log-probabilities; the logits of
# the target positions are float32 rows of the vocabulary size.
TOKEN_BUDGET = {"cpu": 1024, "cuda": 16384}
# Prompts / questions per batch (left-padded; sorted by length, so that little is padding). On the CPU too:
# a small model's generation is mostly per-step overhead, which a batch shares.
GPU_BATCH = 16
CPU_BATCH = 8
LOG_EVERY = 10


class ConfigurationError(Exception):
    """The inputs cannot be evaluated as they are (running again fails the same way): one line, exit 78."""


def log(message: str) -> None:
    print(f"[airtune] {message}", flush=True)


# --- inputs -------------------------------------------------------------------------------------

@dataclass
class Prompt:
    """A held-out prompt: the conversation before the answer, and the reference answer."""

    messages: list[dict]
    reference: str
    tools: list | None = None

    @property
    def text(self) -> str:
        """The last user turn's text (what predictions.jsonl shows as the prompt)."""
        users = [m for m in self.messages if m.get("role") == "user"]
        last = users[-1] if users else (self.messages[-1] if self.messages else {})
        return str(last.get("content") or "")


def _typed(resolved) -> Resolved:
    """The resolved spec as a Resolved; one this airtune cannot read is a configuration error."""
    try:
        return as_resolved(resolved)
    except ResolvedSpecError as exc:
        raise ConfigurationError(f"--spec: {exc}") from None


@dataclass
class Inputs:
    resolved: dict  # spec.json's dict (what airtune.inference reads)
    typed: Resolved  # the same, as airtune.resolved's records
    stage: str
    manifest: dict
    validation: object | None  # datasets.Dataset
    prompts: list[Prompt]
    prompts_source: str
    benchmarks: list[tuple[dict, list]]  # (resolved entry, questions)


def max_samples(spec) -> int:
    """eval_max_samples (empty: the default, 50). `spec`: JobSettings or a mapping of them."""
    value = as_settings(spec).eval_max_samples
    return DEFAULT_MAX_SAMPLES if value is None else max(0, int(value))


def _read_prompts(data_dir: Path, stage: str, validation) -> tuple[list[Prompt], str]:
    if stage == "sft":
        path = data_dir / PROMPTS_FILE
        if not path.is_file():
            return [], f"none ({path.name} missing: data prepared before the evaluator existed)"
        prompts = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    prompts.append(Prompt(list(row["messages"]), str(row["reference"]), row.get("tools")))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ConfigurationError(f"{path}: line {n}: not a prompt row ({exc})") from None
        return prompts, path.name
    if validation is None:
        return [], "none (no validation split)"
    columns = set(validation.column_names)
    if stage == "dpo" and {"prompt", "chosen"} <= columns:
        return [Prompt(list(r["prompt"]), _content(r["chosen"])) for r in validation.select_columns(["prompt", "chosen"])], \
            "validation pairs (chosen answers)"
    if stage == "kto" and {"prompt", "completion", "label"} <= columns:
        rows = validation.select_columns(["prompt", "completion", "label"])
        return [Prompt(list(r["prompt"]), _content(r["completion"])) for r in rows if r["label"]], \
            "validation examples (desirable answers)"
    return [], "none"


def _content(messages) -> str:
    """The text of a TRL conversational answer column ([assistant message])."""
    if isinstance(messages, list):
        return str((messages[-1] if messages else {}).get("content") or "")
    if isinstance(messages, dict):
        return str(messages.get("content") or "")
    return str(messages or "")


def read_inputs(resolved: Resolved | dict, data_dir: Path, model_dir: Path, say=log) -> Inputs:
    """Everything but the models, checked before any weights are loaded (a bad input is a configuration error).
    `resolved`: a Resolved or spec.json's dict."""
    from airtune import inference
    from airtune.data import DataError, load_prepared

    typed = _typed(resolved)
    resolved = typed.to_json() if isinstance(resolved, Resolved) else resolved
    spec = typed.spec
    stage = spec.stage
    if not inference._has_weights(model_dir):
        raise ConfigurationError(f"--model {model_dir}: no model weights there (an adapter: adapter_config.json and "
                                 "adapter_model.*; full weights: config.json and *.safetensors)")
    try:
        _, validation, manifest = load_prepared(data_dir)
    except (DataError, OSError, ValueError) as exc:
        raise ConfigurationError(f"--data {data_dir}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if manifest.get("stage") and manifest["stage"] != stage:
        raise ConfigurationError(f"--data {data_dir} was prepared for stage {manifest['stage']!r}, the job is {stage!r}")
    if validation is not None and len(validation) == 0:
        validation = None
    prompts, source = _read_prompts(Path(data_dir), stage, validation)
    prompts = prompts[: max_samples(spec)]
    benchmarks = []
    for bench in typed.benchmarks:
        if stage == "rm":
            say(f"evaluate: benchmark {bench.name} left out: a reward model scores answers, it does not choose them")
            continue
        from airtune.evaluation.benchmarks import read_benchmark

        entry = {"name": bench.name, "files": list(bench.files), "lang": bench.lang}
        try:
            questions = read_benchmark(entry["files"])
        except (ValueError, OSError) as exc:
            raise ConfigurationError(f"benchmark {bench.name!r}: {str(exc).splitlines()[0]}") from None
        if not questions:
            raise ConfigurationError(f"benchmark {bench.name!r}: its files hold no question: {entry['files']}")
        benchmarks.append((entry, questions))
    return Inputs(resolved=resolved, typed=typed, stage=stage, manifest=manifest, validation=validation, prompts=prompts,
                  prompts_source=source, benchmarks=benchmarks)


# --- measuring ----------------------------------------------------------------------------------

def _budget(device: str) -> int:
    return TOKEN_BUDGET["cuda" if device.startswith("cuda") else "cpu"]


def _groups(lengths: list[int], budget: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices grouped (shortest first) so that rows x longest length stays within `budget`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups, cur, longest = [], [], 0
    for i in order:
        n = max(1, lengths[i])
        if cur and (max(longest, n) * (len(cur) + 1) > budget or (max_rows and len(cur) >= max_rows)):
            groups.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        groups.append(cur)
    return groups


def _batch(device: str) -> int:
    """Prompts or questions per forward pass (left-padded): GPU_BATCH on a GPU, CPU_BATCH on the CPU."""
    return GPU_BATCH if device.startswith("cuda") else CPU_BATCH


def _forward_takes(model, name: str) -> bool:
    import inspect

    from airtune.train.model import base_model

    return name in inspect.signature(type(base_model(model)).forward).parameters


def target_logprobs(model, seqs: list[tuple[list[int], list[int]]], *, device: str, pad_id: int) -> list[tuple[float, int]]:
    """For each (input_ids, labels) sequence: (sum of log p(label token) over its label tokens, their count);
    position i predicts label i+1, -100 is no target. Right-padded batches within the token budget; the model
    is asked for the target positions' logits alone where it can be (`logits_to_keep` mask, as the trainer)."""
    import torch

    from airtune.train.loss import accepts_target_mask, shifted_targets

    use_mask = accepts_target_mask(model)
    results: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    for group in _groups([len(s[0]) for s in seqs], _budget(device)):
        width = max(len(seqs[i][0]) for i in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        labels = torch.full((len(group), width), -100, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):
            n = len(seqs[i][0])
            ids[row, :n] = torch.as_tensor(seqs[i][0], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(seqs[i][1], dtype=torch.long)
            mask[row, :n] = 1
        targets = shifted_targets(labels)
        keep = targets != -100
        counts = keep.sum(dim=1).tolist()
        if not any(counts):
            continue
        ids, mask, keep_d = ids.to(device), mask.to(device), keep.to(device)
        if use_mask:
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep_d, use_cache=False).logits
        else:
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[keep_d]
        lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[keep].to(logits.device)[:, None]).squeeze(-1)
        for i, piece in zip(group, lp.split(counts)):
            results[i] = (float(piece.sum().item()), int(piece.numel()))
        del logits, lp
    return results


def _examples_of(row: dict) -> list[tuple[list[int], list[int]]]:
    """A prepared row's examples: one, or (packed rows) one per run of position_ids starting at 0."""
    ids, labels = list(row["input_ids"]), list(row["labels"])
    pos = row.get("position_ids")
    if pos is None:
        return [(ids, labels)]
    starts = [i for i, p in enumerate(pos) if p == 0]
    if not starts or starts[0] != 0:
        starts = [0] + starts
    bounds = starts[1:] + [len(ids)]
    return [(ids[a:b], labels[a:b]) for a, b in zip(starts, bounds) if b > a]


def eval_batch_size(spec) -> int:
    """extra_args' per_device_eval_batch_size, else per_device_train_batch_size (JobSettings or a mapping)."""
    spec = as_settings(spec)
    return max(1, int(spec.extra_args.get("per_device_eval_batch_size") or spec.per_device_train_batch_size))


def validation_loss(model, validation, *, batch_size: int, device: str, pad_id: int) -> float | None:
    """The trainer's eval_loss (module docstring): each batch's mean over its label tokens, weighted by its rows."""
    columns = [c for c in ("input_ids", "labels", "position_ids") if c in validation.column_names]
    batch_losses = []
    for start in range(0, len(validation), batch_size):
        batch = validation[start: start + batch_size]
        rows = [{c: batch[c][k] for c in columns} for k in range(len(batch["input_ids"]))]
        seqs = [ex for row in rows for ex in _examples_of(row)]
        total = count = 0
        for s, n in target_logprobs(model, seqs, device=device, pad_id=pad_id):
            total -= s
            count += n
        if count:
            batch_losses.append((total / count, len(rows)))
    finite = [(x, n) for x, n in batch_losses if math.isfinite(x)]
    return sum(x * n for x, n in finite) / sum(n for _, n in finite) if finite else None


def _render(tokenizer, messages: list[dict], tools=None) -> str:
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)


def max_new_tokens(tokenizer, reference: str) -> int:
    """The reference's token count + 1 (its stop token) rounded up to a multiple of 32, at most 512."""
    n = len(tokenizer(reference, add_special_tokens=False)["input_ids"]) + 1
    return min(MAX_NEW_TOKENS, NEW_TOKENS_STEP * math.ceil(n / NEW_TOKENS_STEP))


def generate_answers(loaded, prompts: list[Prompt], *, which: str, say=log) -> list[str]:
    """Greedy answers (inference's generation settings and stop tokens), in left-padded batches."""
    import torch

    from airtune import inference

    tok = loaded.tokenizer
    texts = [_render(tok, p.messages, p.tools) for p in prompts]
    limits = [max_new_tokens(tok, p.reference) for p in prompts]
    batch = _batch(loaded.device)
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(prompts)), key=lambda i: (limits[i], lengths[i]))
    answers: list[str] = [""] * len(prompts)
    done = 0
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for start in range(0, len(order), batch):
            group = order[start: start + batch]
            enc = tok([texts[i] for i in group], add_special_tokens=False, return_tensors="pt", padding=len(group) > 1)
            enc = {k: v.to(loaded.device) for k, v in enc.items()}
            kwargs = inference._generation_kwargs(loaded, max_new_tokens=max(limits[i] for i in group),
                                                  temperature=None, top_p=None)
            with torch.inference_mode():
                out = loaded.model.generate(**enc, **kwargs)
            width = enc["input_ids"].shape[1]
            for row, i in enumerate(group):
                new = out[row][width:].tolist()[: limits[i]]
                cut = next((k for k, t in enumerate(new) if t in loaded.stop_ids), None)
                answers[i] = tok.decode(new if cut is None else new[:cut], skip_special_tokens=True).strip()
            before, done = done, done + len(group)
            if done == len(prompts) or done // LOG_EVERY > before // LOG_EVERY:
                say(f"evaluate: {which}: {done}/{len(prompts)} prompts")
    finally:
        tok.padding_side = side
    return answers


def letter_ids(tokenizer) -> dict[str, list[int]]:
    """The token ids each choice letter can be the next token as: "A" and " A" (their last token)."""
    from airtune.evaluation.benchmarks import CHOICES

    out = {}
    for letter in CHOICES:
        ids = {enc[-1] for text in (letter, " " + letter) if (enc := tokenizer.encode(text, add_special_tokens=False))}
        out[letter] = sorted(ids)
    return out


def benchmark_answers(model, tokenizer, questions: list, *, lang: str, device: str, which: str, name: str,
                      say=log) -> list[str]:
    """The letter each question is answered with: the best log-probability of a letter as the next token."""
    import torch

    from airtune.evaluation.benchmarks import choice_scores_to_answer, messages_of

    letters = letter_ids(tokenizer)
    texts = [_render(tokenizer, messages_of(q, (), lang=lang)) for q in questions]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    batch = _batch(device)
    groups = _groups([len(e) for e in encoded], _budget(device), batch) if batch > 1 else [[i] for i in range(len(encoded))]
    last_only = _forward_takes(model, "logits_to_keep")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    answers: list[str] = [""] * len(questions)
    done = 0
    for group in groups:
        width = max(len(encoded[i]) for i in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):  # left-padded: every prompt's last token in the last column
            n = len(encoded[i])
            ids[row, width - n:] = torch.as_tensor(encoded[i], dtype=torch.long)
            mask[row, width - n:] = 1
        kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "use_cache": False}
        if len(group) > 1:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        if last_only:
            kwargs["logits_to_keep"] = 1
        with torch.inference_mode():
            logits = model(**kwargs).logits[:, -1, :]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, i in enumerate(group):
            scores = {letter: float(torch.logsumexp(logprobs[row, tids], dim=0).item()) for letter, tids in letters.items()}
            answers[i] = choice_scores_to_answer(scores)
        before, done = done, done + len(group)
        if done < len(questions) and done // 50 > before // 50:  # the total: the accuracy line
            say(f"evaluate: {which}: benchmark {name}: {done}/{len(questions)} questions")
    return answers


def pair_sequences(validation, stage: str) -> tuple[list[tuple[list[int], list[int]]], list]:
    """dpo: (prompt + chosen, prompt + rejected) per pair, labels on the answer; kto: prompt + completion per
    example, and the labels (desirable or not)."""
    seqs, labels = [], []
    if stage == "dpo":
        for r in validation.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]):
            p = list(r["prompt_ids"])
            for key in ("chosen_ids", "rejected_ids"):
                a = list(r[key])
                seqs.append((p + a, [-100] * len(p) + a))
    elif stage == "kto":
        for r in validation.select_columns(["prompt_ids", "completion_ids", "label"]):
            p, a = list(r["prompt_ids"]), list(r["completion_ids"])
            seqs.append((p + a, [-100] * len(p) + a))
            labels.append(bool(r["label"]))
    return seqs, labels


def reward_scores(model, validation, *, device: str, pad_id: int) -> list[tuple[float, float]]:
    """rm: (reward of chosen, reward of rejected) per validation pair: the reward model's score of each whole
    sequence (its last token that is not padding, as the trainer's model reads it)."""
    import torch

    from airtune.train.model import base_model

    base_model(model).config.get_text_config().pad_token_id = pad_id  # as TRL's RewardTrainer sets it
    rows = validation.select_columns(["chosen_ids", "rejected_ids"])
    seqs = [list(r[k]) for r in rows for k in ("chosen_ids", "rejected_ids")]
    scores = [0.0] * len(seqs)
    for group in _groups([len(s) for s in seqs], _budget(device)):
        width = max(len(seqs[i]) for i in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):
            ids[row, : len(seqs[i])] = torch.as_tensor(seqs[i], dtype=torch.long)
            mask[row, : len(seqs[i])] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        for row, i in enumerate(group):
            scores[i] = float(logits[row, 0].float().item())
    return [(scores[2 * k], scores[2 * k + 1]) for k in range(len(seqs) // 2)]


# --- the two models -----------------------------------------------------------------------------

def _dtype(resolved, device: str):
    import torch

    compute = _typed(resolved).spec.compute_type
    if device.startswith("cuda") and compute in ("bf16", "pure_bf16") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


class Run:
    """One evaluation: the inputs, the tokenizer, and what each model measured."""

    def __init__(self, inputs: Inputs, tokenizer, *, device: str, say=log):
        self.inputs, self.tok, self.device, self.say = inputs, tokenizer, device, say
        self.spec = inputs.typed.spec
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.metrics: dict[str, dict] = {"base": {}, "tuned": {}, "champion": {}}
        self.answers: dict[str, list[str]] = {}
        self.pair_logps: dict[str, list[float]] = {}
        self.pairs = 0

    def loaded(self, model, which: str):
        from airtune import inference

        ids, turn_end = inference.stop_ids(self.tok, model)
        return inference.Loaded(model=model, tokenizer=self.tok, name=which, version="", base=which == "base",
                                description=which, stop_ids=ids, turn_end=turn_end, device=self.device,
                                resolved=self.inputs.resolved)

    def measure(self, model, which: str) -> None:
        """Every metric of a causal LM (the base, or the tuned model of a stage other than rm)."""
        import torch

        from airtune.evaluation.benchmarks import OVERALL, accuracy
        from airtune.evaluation.metrics import score_corpus

        inp, out = self.inputs, self.metrics[which]
        if inp.stage in ("sft", "pt") and inp.validation is not None and "labels" in inp.validation.column_names:
            t0 = time.monotonic()
            with torch.inference_mode():
                loss = validation_loss(model, inp.validation, batch_size=eval_batch_size(self.spec), device=self.device,
                                       pad_id=self.pad_id)
            if loss is not None:
                out["eval_loss"] = loss
                out["perplexity"] = _finite(math.exp(loss) if loss < 700 else math.inf)
                self.say(f"evaluate: {which}: eval_loss {loss:.4f} (perplexity {math.exp(min(loss, 700)):.4g}) on "
                         f"{len(inp.validation)} validation rows, {time.monotonic() - t0:.1f} s")
        if inp.prompts:
            answers = generate_answers(self.loaded(model, which), inp.prompts, which=which, say=self.say)
            self.answers[which] = answers
            out.update(score_corpus(answers, [p.reference for p in inp.prompts]))
            self.say(f"evaluate: {which}: rouge-l {out['rouge-l']:.2f}, bleu-4 {out['bleu-4']:.2f} on {len(answers)} prompts")
        for entry, questions in inp.benchmarks:
            name = entry["name"]
            predicted = benchmark_answers(model, self.tok, questions, lang=entry.get("lang") or "en", device=self.device,
                                          which=which, name=name, say=self.say)
            acc = accuracy(questions, predicted)
            out[f"benchmark:{name}"] = acc[OVERALL]
            for subject, value in acc.items():
                if subject != OVERALL:
                    out[f"benchmark:{name}/{subject}"] = value
            self.say(f"evaluate: {which}: benchmark {name}: {acc[OVERALL]:.2f} % of {len(questions)} questions")
        if inp.stage in ("dpo", "kto") and inp.validation is not None:
            seqs, _ = pair_sequences(inp.validation, inp.stage)
            with torch.inference_mode():
                self.pair_logps[which] = [s for s, _ in target_logprobs(model, seqs, device=self.device, pad_id=self.pad_id)]
            if which != "base" and "base" in self.pair_logps:
                self.preference_rewards(which)

    def preference_rewards(self, which: str) -> None:
        """dpo/kto: the implicit rewards of the tuned (or champion) model against the base (the reference)."""
        inp, out = self.inputs, self.metrics[which]
        beta = float(self.spec.pref_beta)  # resolve fills it for dpo and kto
        rewards = [beta * (t - b) for t, b in zip(self.pair_logps[which], self.pair_logps["base"])]
        if inp.stage == "dpo":
            chosen, rejected = rewards[0::2], rewards[1::2]
            self.pairs = len(chosen)
            if chosen:
                out["reward_accuracy"] = 100.0 * sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)
                out["reward_margin"] = sum(c - r for c, r in zip(chosen, rejected)) / len(chosen)
        else:
            _, labels = pair_sequences(inp.validation, "kto")
            self.pairs = len(labels)
            good = [r for r, lab in zip(rewards, labels) if lab]
            bad = [r for r, lab in zip(rewards, labels) if not lab]
            if good and bad:
                out["reward_margin"] = sum(good) / len(good) - sum(bad) / len(bad)
        if "reward_margin" in out:
            self.say(f"evaluate: {which}: reward_margin {out['reward_margin']:.4f}"
                     + (f", reward_accuracy {out['reward_accuracy']:.2f} %" if "reward_accuracy" in out else "")
                     + f" over {self.pairs} {'pairs' if inp.stage == 'dpo' else 'examples'}")

    def measure_reward_model(self, model, which: str = "tuned") -> None:
        inp = self.inputs
        if inp.validation is None or "chosen_ids" not in inp.validation.column_names:
            self.say("evaluate: no validation pairs: no reward_accuracy")
            return
        scores = reward_scores(model, inp.validation, device=self.device, pad_id=self.pad_id)
        self.pairs = len(scores)
        if scores:
            acc = 100.0 * sum(c > r for c, r in scores) / len(scores)
            self.metrics[which]["reward_accuracy"] = acc
            self.say(f"evaluate: {which}: reward_accuracy {acc:.2f} % over {len(scores)} validation pairs")

    def predictions(self) -> list[dict]:
        from airtune.evaluation.metrics import score_pair

        rows = []
        for k, p in enumerate(self.inputs.prompts):
            row = {"prompt": p.text, "reference": p.reference}
            sources = ("base", "tuned") + (("champion",) if "champion" in self.answers else ())
            for which in sources:
                row[which] = self.answers[which][k] if which in self.answers else None
            for which in sources:
                row[f"{which}_scores"] = score_pair(row[which], p.reference) if row[which] is not None else None
            rows.append(row)
        return rows


def _collect() -> None:
    """Give back the memory of a model the caller has just deleted (`del model` first: one model at a time)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _ready(model, device: str):
    model.to(device)
    model.eval()
    return model


def evaluate(resolved: Resolved | dict, data_dir: Path, model_dir: Path, output_dir: Path, *, device: str | None = None,
             champion_dir: Path | None = None, champion_version: str | None = None, say=log) -> dict:
    """Measure both models, write `output_dir` (module docstring) and return evaluation.json's content."""
    started = time.monotonic()
    from airtune import inference

    data_dir, model_dir, output_dir = Path(data_dir), Path(model_dir), Path(output_dir)
    inputs = read_inputs(resolved, data_dir, model_dir, say)
    typed, resolved = inputs.typed, inputs.resolved  # airtune.inference reads spec.json's dict
    inference.quiet()
    device = device or inference.default_device()
    dtype = _dtype(typed, device)
    spec = typed.spec
    stage = inputs.stage
    try:
        tok = inference.load_tokenizer([model_dir], resolved)
    except inference.InferenceError as exc:
        raise ConfigurationError(str(exc)) from None
    run = Run(inputs, tok, device=device, say=say)
    bench = ", ".join(f"{e['name']} ({len(q)} questions)" for e, q in inputs.benchmarks) or "none"
    say(f"evaluate: stage {stage}, device {device}; {len(inputs.prompts)} prompts from {inputs.prompts_source}; "
        f"{len(inputs.validation) if inputs.validation is not None else 0} validation rows; benchmarks: {bench}")
    adapter = (model_dir / inference.ADAPTER_CONFIG).is_file()
    parent = (typed.parent.name if typed.parent else None) or spec.parent_job
    seconds = {"base": 0.0, "tuned": 0.0}
    from transformers import AutoModelForSequenceClassification

    try:
        if stage == "rm":
            base_model = "none (a reward model: the model it started from has no reward head)"
            t0 = time.monotonic()
            model = _ready(inference.load_weights(model_dir, resolved, what="the tuned reward model", dtype=dtype,
                                                  model_class=AutoModelForSequenceClassification,
                                                  base_kwargs={"num_labels": 1}), device)
            run.measure_reward_model(model)
            del model
            _collect()
            seconds["tuned"] = time.monotonic() - t0
        elif adapter and not parent:
            t0 = time.monotonic()
            model = _ready(inference.load_weights(model_dir, resolved, what="the tuned model", dtype=dtype), device)
            base_model = f"base weights {inference._weights_of(resolved)[0]} (the tuned adapter switched off)"
            say(f"evaluate: base: {base_model}")
            with model.disable_adapter():
                run.measure(model, "base")
            seconds["base"] = time.monotonic() - t0
            t0 = time.monotonic()
            say(f"evaluate: tuned: the LoRA adapter in {model_dir}")
            run.measure(model, "tuned")
            del model
            _collect()
            seconds["tuned"] = time.monotonic() - t0
        else:
            t0 = time.monotonic()
            model, base_model = inference.load_base(resolved, dtype=dtype)
            if parent and not base_model.startswith("parent job"):
                say(f"evaluate: warning: the parent job {parent!r}'s model was not found (job folder or registry): "
                    "the base is the job's base weights")
            say(f"evaluate: base: {base_model}")
            run.measure(_ready(model, device), "base")
            del model
            _collect()
            seconds["base"] = time.monotonic() - t0
            t0 = time.monotonic()
            model = _ready(inference.load_weights(model_dir, resolved, what="the tuned model", dtype=dtype), device)
            say(f"evaluate: tuned: {'the LoRA adapter' if adapter else 'the weights'} in {model_dir}")
            run.measure(model, "tuned")
            del model
            _collect()
            seconds["tuned"] = time.monotonic() - t0
    except inference.InferenceError as exc:
        raise ConfigurationError(str(exc)) from None
    if champion_dir is not None:
        seconds["champion"] = _measure_champion(run, Path(champion_dir), champion_version, resolved, dtype=dtype,
                                                device=device, say=say)
    evaluation = {
        "format": FORMAT,
        "stage": stage,
        "samples": len(inputs.prompts),
        "pairs": run.pairs,
        "base": {k: _finite(v) for k, v in run.metrics["base"].items()},
        "tuned": {k: _finite(v) for k, v in run.metrics["tuned"].items()},
        "seconds": {**{k: round(v, 3) for k, v in seconds.items()}, "total": round(time.monotonic() - started, 3)},
        "base_model": base_model,
        "tuned_model": str(model_dir),
        "device": device,
    }
    if run.metrics["champion"]:
        evaluation["champion"] = {k: _finite(v) for k, v in run.metrics["champion"].items()}
        evaluation["champion_version"] = champion_version
    write_results(output_dir, evaluation, run.predictions())
    evaluation["seconds"]["total"] = round(time.monotonic() - started, 3)
    say(f"evaluate: done in {evaluation['seconds']['total']:.1f} s: {_summary(evaluation)} -> {output_dir}")
    return evaluation


def _measure_champion(run: Run, folder: Path, version: str | None, resolved: dict, *, dtype, device: str, say) -> float:
    """The registered model's current champion, scored on the same data as the tuned model (for promotion).
    Its files not loading is no reason to fail the evaluation: a warning, and promotion uses its recorded figures."""
    from transformers import AutoModelForSequenceClassification

    from airtune import inference

    t0 = time.monotonic()
    what = f"the champion (version {version})" if version else "the champion"
    try:
        if not inference._has_weights(folder):
            raise inference.InferenceError(f"no model weights in {folder}")
        spec = inference.resolved_spec(folder) if (folder / "spec.json").is_file() else resolved
        if run.inputs.stage == "rm":
            model = inference.load_weights(folder, spec, what=what, dtype=dtype, model_class=AutoModelForSequenceClassification,
                                           base_kwargs={"num_labels": 1})
        else:
            model = inference.load_weights(folder, spec, what=what, dtype=dtype)
    except (inference.InferenceError, OSError, ValueError) as exc:
        say(f"evaluate: warning: {what} is not scored: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return time.monotonic() - t0
    say(f"evaluate: champion: {what} in {folder}")
    model = _ready(model, device)
    if run.inputs.stage == "rm":
        run.measure_reward_model(model, "champion")
    else:
        run.measure(model, "champion")
    del model
    _collect()
    return time.monotonic() - t0


def _summary(evaluation: dict) -> str:
    parts = []
    for key in ("eval_loss", "rouge-l", "reward_accuracy", "reward_margin"):
        b, t = evaluation["base"].get(key), evaluation["tuned"].get(key)
        if t is not None:
            parts.append(f"{key} {b:.4g} -> {t:.4g}" if b is not None else f"{key} {t:.4g}")
    return ", ".join(parts) or "no metric"


def write_results(output_dir: Path, evaluation: dict, predictions: list[dict]) -> None:
    """evaluation.json and predictions.jsonl into a temporary folder beside `output_dir`, then renamed onto it."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.parent / f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with open(tmp / PREDICTIONS_FILE, "w", encoding="utf-8") as f:
            for row in predictions:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths.replace_dir(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)



# --- the command --------------------------------------------------------------------------------

def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m airtune.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=Path, help="the resolved spec (<job>/spec.json)")
    parser.add_argument("--data", required=True, type=Path, help="the prepared dataset (<job>/data)")
    parser.add_argument("--model", required=True, type=Path, help="the tuned model (<job>/output/final)")
    parser.add_argument("--output", required=True, type=Path, help="where the results go (<job>/evaluation)")
    parser.add_argument("--champion", type=Path, default=None,
                        help="the registered model's current champion, scored on the same data (evaluation.json's champion)")
    parser.add_argument("--champion-version", default=None, help="the champion's version number (evaluation.json's champion_version)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except ConfigurationError as exc:
        print(f"[airtune] configuration error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG


def _main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        resolved = json.loads(args.spec.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"--spec {args.spec}: {exc}") from None
    if not isinstance(resolved, dict) or not isinstance(resolved.get("spec"), dict):
        raise ConfigurationError(f"--spec {args.spec}: not a resolved spec (no \"spec\" object)")
    evaluate(resolved, args.data, args.model, args.output, device=args.device, champion_dir=args.champion,
             champion_version=args.champion_version)
    return 0
