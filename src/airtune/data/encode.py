"""Render examples with the job's Jinja chat template, tokenize them and mask the labels.

Where the assistant's turns are: the conversation is rendered turn by turn. The prompt up to
assistant turn i is `render(messages[:i], add_generation_prompt=True)`, the turn ends where
`render(messages[:i + 1])` ends; both must be prefixes of the full rendering, so each turn is an
exact character span of the text the model sees. The full rendering is tokenized once (as
`apply_chat_template` would: no special tokens added, the template writes them) and the spans are
mapped to tokens through the tokenizer's own character offsets, so `input_ids` equal
`tokenizer(apply_chat_template(messages))` exactly and the masks follow the characters. A token that
straddles a span boundary (text merging across it) is counted in the manifest (`boundary_tokens`).

A turn's span stops after its end-of-turn token: trailing whitespace the template writes between
turns (chatml's "\n" after <|im_end|>) is not trained. A template that ends assistant turns with no
special token at all (GLM-4's) gets the tokenizer's EOS appended to each answer, as LLaMA-Factory
does for such templates (`efficient_eos`), so that the model learns to stop.

Templates whose rendering of a turn depends on what follows (Qwen3 writes an empty reasoning block
in the last turn only; Mistral puts the system message before the last user message) are not
prefix-stable; where a prefix does not hold, that turn's start or end is found by the answer's text
in the full rendering instead (its end extended over the control token that closes it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

IGNORE = -100


class TemplateRefused(Exception):
    """The chat template raised (e.g. "roles must alternate") or cannot be split into turns for this row."""


# The tokenizer classes that are transformers' generic one (a tokenizer.json, nothing model-specific)
GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(weights: str, revision: str | None = None):
    """The model folder's tokenizer, as AutoTokenizer loads it.

    AutoTokenizer reads the model's configuration first, to choose the tokenizer class by model type;
    importing a model's configuration class imports torch and what transformers' modelling code
    needs (~3.5 s on a quiet core, 8 s on a busy one), which the data step otherwise never loads.
    Where the folder's tokenizer_config.json names transformers' generic class itself (what
    `save_pretrained` writes in transformers 5, so every model airtune builds or converts) with no
    custom code, and the model type is not one whose hub files name the wrong class, AutoTokenizer
    ends in that class's `from_pretrained`: it is called directly. Any other folder goes through
    AutoTokenizer (tests/data/test_tokenizer_load.py checks both give the same tokens)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    folder = Path(weights)
    if revision is None and folder.is_dir() and _generic_tokenizer(folder):
        from transformers import TokenizersBackend

        return TokenizersBackend.from_pretrained(weights)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(weights, revision=revision)


def _generic_tokenizer(folder: Path) -> bool:
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return False
    if config.get("tokenizer_class") not in GENERIC_TOKENIZERS or "auto_map" in config or not (folder / "tokenizer.json").is_file():
        return False
    from airtune import compat

    return model_type not in compat.models_with_wrong_hub_tokenizer_class()


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory's split of cutoff_len between a prompt and its answer (data/processor/processor_utils.py)."""
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    max_source_len = max(cutoff_len - new_target_len, 0)
    new_source_len = min(max_source_len, source_len)
    return new_source_len, new_target_len


class Encoder:
    """One per process: the tokenizer, the compiled template and the stage's options."""

    def __init__(self, weights: str, revision: str | None, template_text: str, *, stage: str, cutoff_len: int,
                 train_on_prompt: bool = False, mask_history: bool = False, tokenizer=None):
        from airtune import compat

        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(weights, revision)
        # the Rust tokenizer of a fast tokenizer (None for a slow one): encode_batch on it directly
        self.backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self.template_text = template_text
        self.compiled = compat.compile_chat_template(template_text)
        self.special = dict(self.tokenizer.special_tokens_map)
        self._globals = {**self.compiled.globals, **self.special}
        self.stage = stage
        self.cutoff_len = cutoff_len
        self.train_on_prompt = train_on_prompt
        self.mask_history = mask_history
        tok = self.tokenizer
        self.eos_id = tok.eos_token_id
        self.eos = tok.eos_token
        self.control_tokens = sorted((t for t in tok.get_added_vocab() if t), key=len, reverse=True)
        self.handles_tool_calls = "tool_calls" in template_text
        self.handles_tools = "tools" in template_text
        self.turn_end = self._probe_turn_end()

    def _probe_turn_end(self) -> str | None:
        """The control token the template closes an answer with (chatml: <|im_end|>), from a probe conversation."""
        probe = [{"role": "user", "content": "airtune-probe-question"}, {"role": "assistant", "content": "airtune-probe-answer"}]
        try:
            text = self.render(probe)
        except TemplateRefused:
            return None
        at = text.find("airtune-probe-answer")
        if at < 0:
            return None
        rest = text[at + len("airtune-probe-answer"):].lstrip(" \t\r\n")
        return next((t for t in self.control_tokens if rest.startswith(t)), None)

    # -- rendering -----------------------------------------------------------------------------
    def _prep(self, messages: list[dict]) -> list[dict]:
        if self.handles_tool_calls:
            return messages
        out = []
        for m in messages:
            if m.get("tool_calls"):
                calls = [c["function"] for c in m["tool_calls"]]
                text = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
                m = {"role": m["role"], "content": (m["content"] + "\n" if m["content"] else "") + text}
            out.append(m)
        return out

    def render(self, messages: list[dict], tools=None, add_generation_prompt: bool = False) -> str:
        """What `compiled.render(messages=..., **special_tokens)` gives (as apply_chat_template calls it),
        with the template's globals laid into the context once instead of merged on every call (half the cost)."""
        v = dict(self._globals)
        v["messages"] = messages
        v["tools"] = tools
        v["documents"] = None
        v["add_generation_prompt"] = add_generation_prompt
        try:
            return "".join(self.compiled.root_render_func(self.compiled.new_context(v, shared=True)))
        except Exception as exc:  # jinja2.TemplateError from raise_exception(), or a template bug
            raise TemplateRefused(f"the chat template refuses this conversation: {exc}") from None

    def _turn_end(self, text: str, a: int, b: int) -> tuple[int, bool]:
        """Trim the whitespace written after a turn; say whether the turn ends with a control token."""
        while b > a and text[b - 1] in " \t\r\n":
            b -= 1
        ends = any(text.startswith(t, b - len(t)) for t in self.control_tokens if len(t) <= b - a)
        return b, ends

    def spans(self, messages: list[dict], tools=None) -> tuple[str, list[tuple[int, int, bool]]]:
        """The full rendering and each assistant turn's (start, end, ends_with_control_token) in it.

        A turn starts where the prompt before it, rendered alone with the generation prompt, ends, and
        ends where the conversation rendered up to it ends, when those renderings are prefixes of the
        whole; otherwise (a template that renders a turn differently once more follows) the turn's
        start or end is found by the answer's text, after the text of the messages before it.
        """
        messages = self._prep(messages)
        full = self.render(messages, tools)
        out, cursor, last = [], 0, len(messages) - 1
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            pre = self.render(messages[:i], tools, add_generation_prompt=True)
            if full.startswith(pre) and len(pre) >= cursor:
                a = len(pre)
            else:
                a = self._find_answer(full, messages, i, cursor)
            post = full if i == last else self.render(messages[: i + 1], tools)
            if full.startswith(post) and len(post) > a:
                b = len(post)
            else:
                b = self._answer_end(full, m, a)
            b, ends = self._turn_end(full, a, b)
            out.append((a, b, ends))
            cursor = b
        return full, out

    def _find_answer(self, full: str, messages: list[dict], i: int, cursor: int) -> int:
        """Where answer i's text starts: after the text of the messages since the previous answer (when found:
        a template may move or drop some, as Mistral's does with the system message)."""
        k = i - 1
        while k >= 0 and messages[k]["role"] != "assistant":
            k -= 1
        for m in messages[k + 1:i]:
            content = (m.get("content") or "").strip()
            if m["role"] != "system" and content:
                at = full.find(content, cursor)
                if at >= 0:
                    cursor = at + len(content)
        content = (messages[i].get("content") or "").strip()
        at = full.find(content, cursor) if content else -1
        if at < 0:
            raise TemplateRefused("the template renders a turn differently once more turns follow, and the "
                                  "answer's text cannot be found in the whole conversation's rendering")
        while at > cursor and full[at - 1] == " ":  # the space a template writes before an answer merges into its first token
            at -= 1
        return at

    def _answer_end(self, full: str, message: dict, a: int) -> int:
        """Where the answer starting at `a` ends: after its text and the control token that closes it."""
        content = (message.get("content") or "").strip()
        if not content and self.turn_end:  # a tool call alone: the turn ends at the template's end-of-turn token
            at = full.find(self.turn_end, a)
            if at >= 0:
                return at + len(self.turn_end)
        at = full.find(content, a) if content else -1
        if at < 0:
            raise TemplateRefused("the template renders a turn differently once more turns follow, and the "
                                  "answer's text cannot be found in the whole conversation's rendering")
        end = at + len(content)
        rest = full[end:]
        stripped = rest.lstrip(" \t\r\n")
        for t in self.control_tokens:
            if stripped.startswith(t):
                return end + len(rest) - len(stripped) + len(t)
        return end

    # -- tokenizing ----------------------------------------------------------------------------
    def _encode_texts(self, texts: list[str]):
        if self.backend is not None:
            return self.backend.encode_batch(texts, add_special_tokens=False)
        return [None for _ in texts]

    def _ids_and_bounds(self, enc, text: str, bounds: list[int]) -> tuple[list[int], list[int], int]:
        """Token ids of `text` and the token index at each character position in `bounds`."""
        if enc is None:  # a tokenizer without offsets: tokenize the pieces between the bounds
            ids, toks, prev = [], [], 0
            for b in bounds:
                ids += self.tokenizer.encode(text[prev:b], add_special_tokens=False)
                toks.append(len(ids))
                prev = b
            ids += self.tokenizer.encode(text[prev:], add_special_tokens=False)
            return ids, toks, 0
        ids = enc.ids
        n, length = len(ids), len(text)
        toks, straddle = [], 0
        for pos in bounds:
            if pos >= length:
                toks.append(n)
                continue
            p, t = pos, enc.char_to_token(pos)
            while t is None and p < length - 1:
                p += 1
                t = enc.char_to_token(p)
            if t is None:
                toks.append(n)
                continue
            if enc.token_to_chars(t)[0] != pos and p == pos:
                straddle += 1
                t += 1  # the merged token belongs to the text before the bound
            toks.append(t)
        return ids, toks, straddle

    # -- stages --------------------------------------------------------------------------------
    def encode_batch(self, examples: list[dict]) -> list[dict]:
        """Each example → {"ok": row dict} or {"bad": problem} or {"drop": reason}; plus stats keys."""
        if self.stage in ("sft",):
            return self._encode_sft(examples)
        if self.stage == "pt":
            return self._encode_text(examples)
        if self.stage in ("rm", "dpo"):
            return self._encode_pairs(examples)
        if self.stage == "kto":
            return self._encode_kto(examples)
        if self.stage == "grpo":
            return self._encode_prompts(examples)
        raise ValueError(f"stage {self.stage!r}")

    def _encode_sft(self, examples: list[dict]) -> list[dict]:
        rendered, results = [], [None] * len(examples)
        for k, ex in enumerate(examples):
            try:
                rendered.append((k, *self.spans(ex["messages"], ex.get("tools"))))
            except TemplateRefused as exc:
                results[k] = {"bad": str(exc)}
        encs = self._encode_texts([r[1] for r in rendered])
        for (k, text, spans), enc in zip(rendered, encs):
            bounds = [p for a, b, _ in spans for p in (a, b)]
            ids, toks, straddle = self._ids_and_bounds(enc, text, bounds)
            results[k] = self._label_sft(ids, [(toks[2 * j], toks[2 * j + 1], spans[j][2]) for j in range(len(spans))], straddle)
            first = examples[k]["messages"][0]
            if first["role"] == "system" and first["content"].strip() not in text:
                results[k]["system_dropped"] = True  # Mistral's template writes it before the last user turn only
            if examples[k].get("tools") and not self.handles_tools:
                results[k]["tools_ignored"] = True
        return results

    def _label_sft(self, ids: list[int], turns: list[tuple[int, int, bool]], straddle: int) -> dict:
        ids = np.array(ids, dtype=np.int32)
        labels = ids.copy() if self.train_on_prompt else np.full(len(ids), IGNORE, dtype=np.int32)
        last = len(turns) - 1
        inserted = 0
        for j, (ta, tb, ends) in enumerate(turns):
            ta, tb = ta + inserted, tb + inserted
            if not ends and self.eos_id is not None:  # the template ends the turn with no token: add EOS
                ids = np.insert(ids, tb, self.eos_id)
                labels = np.insert(labels, tb, self.eos_id)
                inserted += 1
                tb += 1
            if self.mask_history and j != last:
                labels[ta:tb] = IGNORE
            else:
                labels[ta:tb] = ids[ta:tb]
        return self._truncate(ids, labels, straddle)

    def _truncate(self, ids: np.ndarray, labels: np.ndarray, straddle: int = 0) -> dict:
        n = len(ids)
        truncated = n > self.cutoff_len
        if truncated:
            ids, labels = ids[: self.cutoff_len], labels[: self.cutoff_len]
        if not (labels != IGNORE).any():
            return {"drop": "no_labels" if not truncated else "no_labels_after_truncation", "truncated": truncated}
        return {"ok": {"input_ids": ids, "labels": labels}, "truncated": truncated, "straddle": straddle, "tokens_before": n}

    def _encode_text(self, examples: list[dict]) -> list[dict]:
        texts = [ex["text"] for ex in examples]
        if self.backend is not None:
            encs = self.backend.encode_batch(texts, add_special_tokens=True)
            all_ids = [e.ids for e in encs]
        else:
            all_ids = [self.tokenizer.encode(t, add_special_tokens=True) for t in texts]
        out = []
        for ids in all_ids:
            if self.eos_id is not None:
                ids = ids + [self.eos_id]
            ids = np.array(ids, dtype=np.int32)
            # pt rows are cut into cutoff_len blocks when packing, so truncation is decided there
            out.append({"ok": {"input_ids": ids, "labels": ids}, "truncated": False, "straddle": 0, "tokens_before": len(ids)})
        return out

    def _prompt_and_answers(self, prompt: list[dict], answers: list[dict], tools) -> tuple[list[int], list[list[int]], int]:
        """Token ids of the prompt (with the generation prompt) and of each answer after it."""
        prompt = self._prep(prompt)
        answers = self._prep(answers)
        pre = self.render(prompt, tools, add_generation_prompt=True)
        texts, spans = [], []
        for ans in answers:
            full = self.render(prompt + [ans], tools)
            if not full.startswith(pre):
                raise TemplateRefused("the template renders the prompt differently once an answer follows")
            b, ends = self._turn_end(full, len(pre), len(full))
            texts.append(full)
            spans.append((len(pre), b, ends))
        encs = self._encode_texts(texts)
        prompt_ids, answer_ids, straddle = None, [], 0
        for text, (a, b, ends), enc in zip(texts, spans, encs):
            ids, (ta, tb), s = self._ids_and_bounds(enc, text, [a, b])
            straddle += s
            ans = list(ids[ta:tb]) + ([self.eos_id] if not ends and self.eos_id is not None else [])
            if prompt_ids is None:
                prompt_ids = list(ids[:ta])
            elif list(ids[:ta]) != prompt_ids:  # rare: text merged differently at the boundary
                k = 0
                while k < min(ta, len(prompt_ids)) and ids[k] == prompt_ids[k]:
                    k += 1
                answer_ids = [prompt_ids[k:] + x for x in answer_ids]
                prompt_ids = prompt_ids[:k]
                ans = list(ids[k:ta]) + ans
            answer_ids.append(ans)
        return prompt_ids, answer_ids, straddle

    def _encode_pairs(self, examples: list[dict]) -> list[dict]:
        out = []
        for ex in examples:
            try:
                p, (c, r), straddle = self._prompt_and_answers(ex["prompt"], [ex["chosen"], ex["rejected"]], ex.get("tools"))
            except TemplateRefused as exc:
                out.append({"bad": str(exc)})
                continue
            n_before = len(p) + max(len(c), len(r))
            truncated = n_before > self.cutoff_len
            if truncated:
                src, tgt = infer_seqlen(len(p), max(len(c), len(r)), self.cutoff_len)
                p, c, r = p[len(p) - src:], c[:tgt], r[:tgt]  # keep the prompt's end: it leads into the answer
            if not c or not r:
                out.append({"drop": "no_labels_after_truncation", "truncated": truncated})
                continue
            if self.stage == "rm":  # TRL's RewardTrainer: whole sequences, already tokenized
                row = {"chosen_ids": p + c, "rejected_ids": p + r}
            else:  # TRL's DPO collator: the prompt and the two answers apart
                row = {"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
            row.update(_conversational(ex, ("prompt", "chosen", "rejected")))
            out.append({"ok": row, "truncated": truncated, "straddle": straddle, "tokens_before": n_before,
                        "tokens": len(p) + len(c) + len(r), "label_tokens": len(c) + len(r)})
        return out

    def _encode_kto(self, examples: list[dict]) -> list[dict]:
        out = []
        for ex in examples:
            try:
                p, (c,), straddle = self._prompt_and_answers(ex["prompt"], [ex["completion"]], ex.get("tools"))
            except TemplateRefused as exc:
                out.append({"bad": str(exc)})
                continue
            n_before = len(p) + len(c)
            truncated = n_before > self.cutoff_len
            if truncated:
                src, tgt = infer_seqlen(len(p), len(c), self.cutoff_len)
                p, c = p[len(p) - src:], c[:tgt]
            if not c:
                out.append({"drop": "no_labels_after_truncation", "truncated": truncated})
                continue
            row = {"prompt_ids": p, "completion_ids": c, "label": bool(ex["label"])}
            row.update(_conversational(ex, ("prompt", "completion")))
            out.append({"ok": row, "truncated": truncated, "straddle": straddle, "tokens_before": n_before,
                        "tokens": len(p) + len(c), "label_tokens": len(c)})
        return out

    def _encode_prompts(self, examples: list[dict]) -> list[dict]:
        out = []
        for ex in examples:
            prompt = ex.get("prompt") or ex["messages"][:-1]
            try:
                text = self.render(self._prep(prompt), ex.get("tools"), add_generation_prompt=True)
            except TemplateRefused as exc:
                out.append({"bad": str(exc)})
                continue
            (enc,) = self._encode_texts([text])
            ids = enc.ids if enc is not None else self.tokenizer.encode(text, add_special_tokens=False)
            truncated = len(ids) > self.cutoff_len
            row = {"prompt_ids": list(ids[-self.cutoff_len:]), "prompt": _plain_messages(prompt)}
            out.append({"ok": row, "truncated": truncated, "straddle": 0, "tokens_before": len(ids),
                        "tokens": len(row["prompt_ids"]), "label_tokens": 0})
        return out


def _plain_messages(messages: list[dict]) -> list[dict]:
    """role/content only (tool calls as JSON text), so that Arrow stores every row with one type."""
    out = []
    for m in messages:
        content = m.get("content") or ""
        if m.get("tool_calls"):
            calls = [c["function"] for c in m["tool_calls"]]
            content = (content + "\n" if content else "") + json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
        out.append({"role": m["role"], "content": content})
    return out


def _conversational(ex: dict, keys: tuple[str, ...]) -> dict:
    """The example in TRL's conversational form (prompt: messages; chosen/rejected/completion: [message])."""
    out = {}
    for key in keys:
        value = ex[key]
        out[key] = _plain_messages(value if isinstance(value, list) else [value])
    return out


def tokenizer_files(weights: str) -> list[Path]:
    """The files that define a local tokenizer (for the cache key)."""
    p = Path(weights)
    if not p.is_dir():
        return []
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
             "vocab.json", "merges.txt", "added_tokens.json", "vocab.txt", "spiece.model")
    return [p / n for n in names if (p / n).is_file()]
