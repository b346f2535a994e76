"""`prepare(resolved, out_dir)`: the prepare_dataset step.

load (readers) → check and convert each row (formats) → render, tokenize, mask, truncate (encode,
in worker processes) → split train/validation (seeded) → pack → write `train/`, `validation/` and
`manifest.json` (docs/architecture.md), atomically, through a content-addressed cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from enum import IntEnum
from pathlib import Path
from typing import Mapping, NamedTuple

from airtune import paths
from airtune.data.errors import DataError, RowError
from airtune.data.figures import longest_row_tokens
from airtune.resolved import DatasetRecord, ModelRecord, Resolved, as_dataset, as_resolved

# Bump when the prepared layout or the way rows are encoded changes: old cache entries then miss.
# 2: sft data has eval_prompts.jsonl (the evaluate task's held-out prompts).
# 3: the manifest has longest_row_tokens (prepare_dataset's GPU memory check).
DATA_VERSION = 3

# Which dataset kinds each stage accepts (docs/form.md: the dataset's format must fit the stage):
# the one table, airtune.stages, which validate reads too.
from airtune.stages import KIND_WORDS, STAGE_DATASET_KINDS as STAGE_KINDS  # noqa: E402


class Origin(NamedTuple):
    """Where an example came from: its dataset (index in the job's datasets, then eval_dataset's), file, row."""

    dataset: int
    path: str
    row: int | None


class Outcome(IntEnum):
    """What the encoder made of an example (a numpy int8 column, one entry per example)."""

    KEPT = 0
    BAD = 1  # the template refused it: a row error (its detail: a message)
    DROPPED = 2  # nothing left to train on (its detail: Dropped)


class Kept(NamedTuple):
    truncated: bool
    straddle: int  # turns cut by cutoff_len
    tokens_before: int
    system_dropped: bool
    tools_ignored: bool


class Dropped(NamedTuple):
    reason: str
    truncated: bool
# The chat template the data was rendered with, stored in the prepared folder.
TEMPLATE_FILE = "chat_template.jinja"
# sft: the validation examples as text, for the evaluate task (one JSON object a line: messages, reference).
EVAL_PROMPTS_FILE = "eval_prompts.jsonl"
# Below this many examples per process, a worker process costs more than it saves.
ROWS_PER_PROCESS = 2000


def _options(resolved: Resolved | Mapping) -> dict:
    """The spec's values the prepared rows depend on (part of the cache key). Resolved values: packing is
    resolve's (true for pt, false for stages other than pt and sft); train_on_prompt and mask_history are
    None for stages other than sft."""
    spec = as_resolved(resolved).spec
    stage = spec.stage
    return {
        "stage": stage,
        "cutoff_len": int(spec.cutoff_len),
        "packing": bool(spec.packing) and stage in ("sft", "pt"),
        "train_on_prompt": bool(spec.train_on_prompt),
        "mask_history": bool(spec.mask_history),
        "max_samples": spec.max_samples,
        "val_size": float(spec.val_size),
        "seed": int(spec.seed),
        "skip_bad_rows": bool(spec.skip_bad_rows),
    }


def check_stage_fit(stage: str, datasets) -> None:
    """docs/form.md: the dataset's format must fit the stage. Raises DataError naming each misfit.
    `datasets`: DatasetRecords (or their JSON objects)."""
    accepted = STAGE_KINDS.get(stage)
    if accepted is None:
        raise DataError(f"stage: {stage!r} cannot be prepared; accepted: {', '.join(STAGE_KINDS)}")
    bad = [d for d in map(as_dataset, datasets) if d.kind not in accepted]
    if bad:
        words = " or ".join(KIND_WORDS[k] for k in accepted)
        lines = [f"dataset {d.name!r} holds {KIND_WORDS.get(d.kind, d.kind)} (kind {d.kind}); "
                 f"stage {stage} trains on {words}" for d in bad]
        raise DataError("dataset: the data does not fit the stage:\n  " + "\n  ".join(lines))


# -- hashing --------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    from airtune.paths import sha256_file

    return sha256_file(path)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_fingerprint(model: ModelRecord) -> str:
    from airtune.data.encode import tokenizer_files

    files = tokenizer_files(model.weights)
    if not files:  # a hub id: its name and revision are all we know before downloading
        return _sha256_text(json.dumps([model.weights, model.revision]))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(_sha256_file(f).encode())
    return h.hexdigest()


def _dataset_files(d: DatasetRecord) -> list[Path]:
    from airtune.data.readers import expand_files

    return expand_files(list(d.files))


def cache_key(resolved: Resolved | Mapping, options: dict | None = None) -> tuple[str, dict]:
    """The content hash of everything the prepared data depends on, and its parts (for the manifest)."""
    resolved = as_resolved(resolved)
    options = options or _options(resolved)
    template_text = Path(resolved.template.path).read_text(encoding="utf-8")
    datasets = []
    eval_sets = resolved.eval_datasets
    for d in resolved.datasets + eval_sets:
        files = [{"path": str(p), "sha256": _sha256_file(p)} for p in _dataset_files(d)]
        entry = {"name": d.name, "format": d.format, "kind": d.kind, "columns": dict(d.columns),
                 "tags": dict(d.tags), "files": files, **({"fill": dict(d.fill)} if d.fill else {})}
        content = {k: v for k, v in entry.items() if k != "name"}
        content["files"] = [f["sha256"] for f in files]
        entry["content_hash"] = _sha256_text(json.dumps(content, sort_keys=True))
        datasets.append(entry)
    parts = {
        "version": DATA_VERSION,
        "options": options,
        "template_sha256": _sha256_text(template_text),
        "tokenizer": tokenizer_fingerprint(resolved.model),
        "datasets": [(d["name"], d["content_hash"]) for d in datasets[: len(resolved.datasets)]],
    }
    if eval_sets:  # only then: a job without eval_dataset hashes the same parts as before
        parts["eval_datasets"] = [(d["name"], d["content_hash"]) for d in datasets[len(resolved.datasets):]]
    n = len(resolved.datasets)
    return _sha256_text(json.dumps(parts, sort_keys=True))[:32], {**parts, "datasets": datasets[:n], "eval_datasets": datasets[n:]}


# -- loading and checking -------------------------------------------------------------------------
def fill_placeholders(obj, fill: dict[str, str]):
    """`{{key}}` → value in every string of a row (a dataset's `fill`, configs/datasets.yaml)."""
    if isinstance(obj, str):
        if "{{" in obj:
            for key, value in fill.items():
                obj = obj.replace("{{" + key + "}}", value)
        return obj
    if isinstance(obj, dict):
        return {k: fill_placeholders(v, fill) for k, v in obj.items()}
    if isinstance(obj, list):
        return [fill_placeholders(v, fill) for v in obj]
    return obj


def _load(resolved: Resolved | Mapping, options: dict, log) -> tuple[list[dict], list[Origin], list[RowError], int, list[dict]]:
    """Examples in normal form of the resolved spec's datasets, where each came from (dataset index, file, row),
    the row errors and stats. (webapp/preview_worker.py calls it too.)"""
    from airtune.data.formats import Bad, Converter
    from airtune.data.readers import read_file

    examples, origins, errors = [], [], []
    n_errors = 0
    stats = []
    for di, d in enumerate(as_resolved(resolved).datasets):
        try:
            conv = Converter(d.format, d.kind, dict(d.columns), dict(d.tags))
        except ValueError as exc:
            raise DataError(f"dataset {d.name!r}: {exc}") from None
        limit = options["max_samples"]
        read = kept = bad = 0
        for path in _dataset_files(d):
            if limit is not None and read >= limit:
                break
            fr = read_file(path, skip_bad=options["skip_bad_rows"])
            rows = fr.rows if limit is None else fr.rows[: limit - read]
            read += len(rows) + len(fr.errors)
            file_errors = [RowError(e.file, e.row, e.field, e.problem, d.name) for e in fr.errors]
            fill = d.fill
            for i, row in enumerate(rows):
                if fill:
                    row = fill_placeholders(row, fill)
                try:
                    ex = conv.convert(row)
                except Bad as b:
                    file_errors.append(RowError(fr.path, fr.number(i), b.field, b.problem, d.name))
                    continue
                examples.append(ex)
                origins.append(Origin(di, fr.path, fr.number(i)))
                kept += 1
            if not fr.errors and file_errors and len(file_errors) == len(rows) and len(rows) > 1:
                fields = {(e.field, e.problem) for e in file_errors}
                if len(fields) == 1:  # the same problem everywhere: one error for the whole file
                    e = file_errors[0]
                    cols = sorted(rows[0]) if isinstance(rows[0], dict) else []
                    file_errors = [RowError(fr.path, 1, e.field, f"{e.problem} in every row ({len(rows)} rows; "
                                            f"the rows have: {', '.join(cols) or 'no columns'})", d.name)]
                    bad += len(rows) - 1
                    n_errors += len(rows) - 1
            bad += len(file_errors)
            n_errors += len(file_errors)
            errors.extend(file_errors[: 50])
        stats.append({"read": read, "kept": kept, "bad": bad})
        log(f"dataset {d.name}: {read} rows read, {kept} pass their checks" + (f", {bad} fail" if bad else ""))
    return examples, origins, errors, n_errors, stats


# -- encoding in worker processes -----------------------------------------------------------------
_WORKER: dict = {}


def _worker_init(weights, revision, template_text, enc_options, fingerprint=""):
    """Build the process's encoder (forked workers inherit the parent's: loading a tokenizer costs seconds).
    It is kept for the next call with the same tokenizer (by content), template and options."""
    from airtune.data.encode import Encoder

    key = (weights, revision, fingerprint, template_text, enc_options)
    if _WORKER.get("encoder") is not None and _WORKER.get("key") == key:
        return
    _WORKER["encoder"] = Encoder(weights, revision, template_text, **enc_options)
    _WORKER["key"] = key


def _encode_chunk(examples: list[dict]):
    """Encode one chunk: (outcomes (an Outcome per example), details (Kept, a message, or Dropped), the kept
    rows' columns); int-list columns come back flat (numpy), the rest as lists."""
    import numpy as np

    from airtune.data.columns import IntLists

    results = _WORKER["encoder"].encode_batch(examples)
    status, meta = [], []
    rows = []
    for r in results:
        if "ok" in r:
            status.append(Outcome.KEPT)
            rows.append(r["ok"])
            meta.append(Kept(r.get("truncated", False), r.get("straddle", 0), r.get("tokens_before", 0),
                             r.get("system_dropped", False), r.get("tools_ignored", False)))
        elif "bad" in r:
            status.append(Outcome.BAD)
            meta.append(r["bad"])
        else:
            status.append(Outcome.DROPPED)
            meta.append(Dropped(r["drop"], r.get("truncated", False)))
    cols = {}
    if rows:
        for key, value in rows[0].items():
            values = [row[key] for row in rows]
            if isinstance(value, np.ndarray):
                cols[key] = IntLists(np.concatenate(values), np.fromiter(map(len, values), dtype=np.int64, count=len(values)))
            elif isinstance(value, list) and (not value or isinstance(value[0], int)) and key.endswith(("ids", "labels")):
                cols[key] = IntLists.from_lists(values)
            else:
                cols[key] = values
    return np.array(status, dtype=np.int8), meta, cols


def _chunks(n: int, procs: int, min_size: int = 256) -> list[tuple[int, int]]:
    size = max(min_size, math.ceil(n / (procs * 4)))
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _encode_all(examples: list[dict], resolved: Resolved, options: dict, num_proc: int | None, log, timings: dict | None = None,
                fingerprint: str = ""):
    import numpy as np

    from airtune.data.columns import IntLists

    model = resolved.model
    template_text = Path(resolved.template.path).read_text(encoding="utf-8")
    enc_options = {k: options[k] for k in ("stage", "cutoff_len", "train_on_prompt", "mask_history")}
    # pt rows are cut by packing, or truncated below: the encoder keeps whole documents
    if num_proc is None:
        num_proc = max(1, min(os.cpu_count() or 1, 8, len(examples) // ROWS_PER_PROCESS))
    num_proc = max(1, min(num_proc, max(1, len(examples) // 64)))
    spans = _chunks(len(examples), num_proc)
    args = (model.weights, model.revision, template_text, enc_options, fingerprint)
    t0 = time.time()
    _worker_init(*args)  # in this process: the manifest needs the tokenizer, and forked workers inherit it
    if timings is not None:
        timings["load_tokenizer"] = round(time.time() - t0, 3)
        timings["processes"] = num_proc
    t0 = time.time()
    if num_proc == 1:
        parts = [_encode_chunk(examples[a:b]) for a, b in spans]
    else:
        import multiprocessing as mp

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        # The processes are the parallelism: a forked worker must not call into the tokenizer's thread
        # pool, whose threads (started in this process by an earlier batch) do not survive the fork, so
        # the worker would wait for them forever. The variable is read on every batch call.
        saved = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            with mp.get_context(method).Pool(num_proc, initializer=_worker_init, initargs=args) as pool:
                parts = pool.map(_encode_chunk, [examples[a:b] for a, b in spans], chunksize=1)
        finally:
            if saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = saved
    log(f"rendered and tokenized {len(examples)} examples with {num_proc} process(es) in {time.time() - t0:.1f} s")
    status = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int8)
    meta = [m for p in parts for m in p[1]]
    cols: dict = {}
    keys = next((list(p[2]) for p in parts if p[2]), [])
    for key in keys:
        pieces = [p[2][key] for p in parts if p[2]]
        if isinstance(pieces[0], IntLists):
            cols[key] = IntLists.concat(pieces)
        else:
            cols[key] = [x for piece in pieces for x in piece]
    return status, meta, cols


# -- split, pack, write ---------------------------------------------------------------------------
def _split(n: int, val_size: float, seed: int):
    import numpy as np

    if val_size <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    n_val = math.ceil(n * val_size)
    if n_val >= n:
        raise DataError(f"val_size: {val_size} of {n} rows leaves no rows to train on; use a smaller val_size or more data")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _eval_prompt(example: dict) -> dict:
    """An sft example as the evaluate task reads it (eval_prompts.jsonl): `messages`, the conversation before
    its last assistant reply (the system message included; for plain data: up to and including the last user
    turn), as {role, content}; `reference`, that reply's text; `tools` when the example has them."""
    from airtune.data.encode import _plain_messages

    messages = _plain_messages(example["messages"])
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    row = {"messages": messages[:last], "reference": messages[last]["content"] if last < len(messages) else ""}
    if example.get("tools"):
        row["tools"] = example["tools"]
    return row


def _take(cols: dict, idx) -> dict:
    from airtune.data.columns import IntLists

    return {k: (v.take(idx) if isinstance(v, IntLists) else [v[i] for i in idx]) for k, v in cols.items()}


def _pack_sft(cols: dict, cutoff_len: int) -> dict:
    """Examples back to back in rows of at most cutoff_len tokens; position_ids restart at each example."""
    import numpy as np

    from airtune.data.columns import IntLists, best_fit_decreasing, positions

    ids: IntLists = cols["input_ids"]
    if len(ids) == 0:
        return {**cols, "position_ids": IntLists(np.zeros(0, np.int32), np.zeros(0, np.int64))}
    bins = best_fit_decreasing(ids.lengths, cutoff_len)
    order = np.array([i for b in bins for i in b], dtype=np.int64)
    row_lengths = np.array([int(ids.lengths[b].sum()) for b in bins], dtype=np.int64)
    out = {}
    for key in ("input_ids", "labels"):
        out[key] = cols[key].take(order).regroup(row_lengths)
    out["position_ids"] = IntLists(positions(ids.lengths[order]), row_lengths)
    return out


def _pack_pt(cols: dict, cutoff_len: int) -> dict:
    """Documents (each ending in EOS) laid back to back and cut into cutoff_len blocks (the last may be
    shorter); position_ids restart at each document and at each block."""
    import numpy as np

    from airtune.data.columns import IntLists

    ids: IntLists = cols["input_ids"]
    total = len(ids.values)
    if total == 0:
        return {k: IntLists(np.zeros(0, np.int32), np.zeros(0, np.int64)) for k in ("input_ids", "labels", "position_ids")}
    n_full, rest = divmod(total, cutoff_len)
    row_lengths = np.array([cutoff_len] * n_full + ([rest] if rest else []), dtype=np.int64)
    i = np.arange(total, dtype=np.int64)
    doc_start = np.repeat(ids.offsets[:-1], ids.lengths)
    start = np.maximum(doc_start, (i // cutoff_len) * cutoff_len)
    pos = (i - start).astype(np.int32)
    return {"input_ids": ids.regroup(row_lengths), "labels": IntLists(ids.values.copy(), row_lengths),
            "position_ids": IntLists(pos, row_lengths)}


def _truncate_pt(cols: dict, cutoff_len: int) -> tuple[dict, int]:
    import numpy as np

    from airtune.data.columns import IntLists

    ids: IntLists = cols["input_ids"]
    truncated = int((ids.lengths > cutoff_len).sum())
    if not truncated:
        return cols, 0
    keep = np.minimum(ids.lengths, cutoff_len)
    mask = np.repeat(np.arange(len(ids)), ids.lengths)  # row of each token
    within = np.arange(len(ids.values)) - np.repeat(ids.offsets[:-1], ids.lengths)
    sel = within < keep[mask]
    new = IntLists(ids.values[sel], keep)
    return {"input_ids": new, "labels": IntLists(new.values.copy(), keep)}, truncated


def _to_dataset(cols: dict):
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    from airtune.data.columns import IntLists

    arrays, names = [], []
    for key, value in cols.items():
        names.append(key)
        arrays.append(value.to_arrow() if isinstance(value, IntLists) else pa.array(value))
    return Dataset(InMemoryTable(pa.Table.from_arrays(arrays, names=names)))


def _count_tokens(cols: dict, stage: str) -> tuple[int, int]:
    """(tokens, tokens the loss is computed on) of one split."""
    import numpy as np

    if "input_ids" in cols:
        labels = cols["labels"].values
        return int(len(cols["input_ids"].values)), int(np.count_nonzero(labels != -100))
    if stage == "rm":
        return int(len(cols["chosen_ids"].values) + len(cols["rejected_ids"].values)), 0
    if stage == "dpo":
        c, r = len(cols["chosen_ids"].values), len(cols["rejected_ids"].values)
        return int(len(cols["prompt_ids"].values) + c + r), int(c + r)
    if stage == "kto":
        c = len(cols["completion_ids"].values)
        return int(len(cols["prompt_ids"].values) + c), int(c)
    return int(len(cols["prompt_ids"].values)), 0


# -- the step -------------------------------------------------------------------------------------
def prepare(resolved: Resolved | Mapping, out_dir: Path, *, cache_dir: Path | None = None, num_proc: int | None = None,
            log=print) -> dict:
    """Prepare the job's data into `out_dir` (train/, validation/, manifest.json) and return the manifest.

    With `cache_dir`, the result is stored there under its content hash and `out_dir` gets hard links
    to it (a copy where links cannot be made): the same data, template, tokenizer and options are
    never prepared twice; a hit returns at once with manifest["cached"] = True.
    """
    t0 = time.time()
    resolved = as_resolved(resolved)
    out_dir = Path(out_dir)
    options = _options(resolved)
    check_stage_fit(options["stage"], resolved.datasets)
    check_stage_fit(options["stage"], resolved.eval_datasets)
    if not resolved.datasets:
        raise DataError("dataset: no dataset given")
    key, parts = cache_key(resolved, options)
    if cache_dir is not None:
        entry = Path(cache_dir) / key
        if (entry / "manifest.json").is_file():
            manifest = json.loads((entry / "manifest.json").read_text())
            _publish(entry, out_dir, {**manifest, "cached": True})
            log(f"prepared data found in the cache ({key}): nothing to prepare")
            return {**manifest, "cached": True}
    else:
        entry = None

    build_parent = (Path(cache_dir) if cache_dir is not None else out_dir.parent)
    build_parent.mkdir(parents=True, exist_ok=True)
    tmp = build_parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    try:
        manifest = _build(resolved, options, key, parts, tmp, num_proc, log)
        manifest["seconds"] = round(time.time() - t0, 3)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if entry is not None:
            try:
                os.rename(tmp, entry)
            except OSError:  # another process published the same entry first: theirs is as good
                shutil.rmtree(tmp, ignore_errors=True)
            _publish(entry, out_dir, {**manifest, "cached": False})
        else:
            paths.replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"prepared {manifest['rows']} rows, {manifest['tokens']} tokens in {manifest['seconds']} s -> {out_dir}")
    return {**manifest, "cached": False}



def _publish(entry: Path, out_dir: Path, manifest: dict) -> None:
    """out_dir := hard links to the cache entry's files (copies across file systems), plus the manifest."""
    out_dir = Path(out_dir)
    if out_dir.resolve() == entry.resolve():
        return
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        for src in entry.rglob("*"):
            rel = src.relative_to(entry)
            dst = tmp / rel
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
                continue
            if rel.name == "manifest.json" and len(rel.parts) == 1:
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        paths.replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build(resolved: Resolved, options: dict, key: str, parts: dict, tmp: Path, num_proc, log) -> dict:
    import numpy as np

    stage = options["stage"]
    clock = [time.time()]
    timings = {}

    def lap(name):
        now = time.time()
        timings[name] = round(now - clock[0], 3)
        clock[0] = now

    examples, origins, errors, n_errors, stats = _load(resolved, options, log)
    # eval_dataset: its examples are encoded with the training rows (one pass) and become the validation split
    all_sets = resolved.datasets + resolved.eval_datasets
    n_train_examples = len(examples)
    if resolved.eval_datasets:
        e_examples, e_origins, e_errors, e_n, e_stats = _load(dataclasses.replace(resolved, datasets=resolved.eval_datasets),
                                                              options, log)
        offset = len(resolved.datasets)
        examples += e_examples
        origins += [o._replace(dataset=o.dataset + offset) for o in e_origins]
        errors += e_errors
        n_errors += e_n
        stats += e_stats
    lap("load_and_check")
    status, meta, cols = _encode_all(examples, resolved, options, num_proc, log, timings, parts["tokenizer"]) if examples else (np.zeros(0, np.int8), [], {})
    clock[0] += timings.get("load_tokenizer", 0.0)
    lap("template_and_tokenize")
    # rows the template refuses are bad rows too
    for i in np.flatnonzero(status == Outcome.BAD):
        origin = origins[i]
        errors.append(RowError(origin.path, origin.row, None, meta[i], all_sets[origin.dataset].name))
        stats[origin.dataset]["bad"] += 1
        stats[origin.dataset]["kept"] -= 1
        n_errors += 1
    if n_errors and not options["skip_bad_rows"]:
        errors.sort(key=lambda e: (e.dataset or "", e.file, e.row or 0))
        raise DataError.from_rows(errors, n_errors)
    ok = np.flatnonzero(status == Outcome.KEPT)
    kept: list[Kept] = [meta[i] for i in ok]
    gone: list[Dropped] = [meta[i] for i in np.flatnonzero(status == Outcome.DROPPED)]
    dropped: dict[str, int] = {}
    for d in gone:
        dropped[d.reason] = dropped.get(d.reason, 0) + 1
    truncated = sum(k.truncated for k in kept) + sum(d.truncated for d in gone)
    straddle = sum(k.straddle for k in kept)
    system_dropped = sum(k.system_dropped for k in kept)
    tools_ignored = sum(k.tools_ignored for k in kept)
    if len(ok) == 0:
        detail = f" ({n_errors} failed their checks)" if n_errors else ""
        detail += f" ({sum(dropped.values())} had nothing to train on: {dropped})" if dropped else ""
        raise DataError(f"dataset: no rows left to train on{detail}")
    # the encoder returned only the ok rows' columns, in order
    if resolved.eval_datasets:
        train_idx, val_idx = np.flatnonzero(ok < n_train_examples), np.flatnonzero(ok >= n_train_examples)
        if len(train_idx) == 0:
            raise DataError("dataset: no rows left to train on (every usable row is in eval_dataset)")
    else:
        train_idx, val_idx = _split(len(ok), options["val_size"], options["seed"])
    splits = {"train": _take(cols, train_idx), "validation": _take(cols, val_idx)}
    examples_per_split = {"train": len(train_idx), "validation": len(val_idx)}
    for name in splits:
        if stage == "sft" and options["packing"]:
            splits[name] = _pack_sft(splits[name], options["cutoff_len"])
        elif stage == "pt":
            if options["packing"]:
                splits[name] = _pack_pt(splits[name], options["cutoff_len"])
            else:
                splits[name], t = _truncate_pt(splits[name], options["cutoff_len"])
                truncated += t
    lap("split_and_pack")
    tmp.mkdir(parents=True)
    # the template the rows were rendered with, beside them (the trainer and later jobs can read it back)
    shutil.copyfile(resolved.template.path, tmp / TEMPLATE_FILE)
    rows, tokens, label_tokens, columns, longest = {}, {}, {}, {}, {}
    for name, c in splits.items():
        if name == "validation" and examples_per_split[name] == 0:
            continue
        ds = _to_dataset(c)
        _save_quietly(ds, tmp / name)
        rows[name] = len(ds)
        tokens[name], label_tokens[name] = _count_tokens(c, stage)
        longest[name] = longest_row_tokens(c, stage)
        columns[name] = list(ds.column_names)
    eval_prompts = None
    if stage == "sft":  # the validation examples as text, same order (the other stages' rows hold their prompts)
        with open(tmp / EVAL_PROMPTS_FILE, "w", encoding="utf-8") as f:
            for j in val_idx:
                f.write(json.dumps(_eval_prompt(examples[ok[j]]), ensure_ascii=False) + "\n")
        from_eval = bool(resolved.eval_datasets)
        eval_prompts = {"file": EVAL_PROMPTS_FILE, "rows": int(len(val_idx)),
                        "source": "eval_dataset" if from_eval else "validation split",
                        "datasets": [d.name for d in resolved.eval_datasets]}
    lap("write")
    warnings = []
    if resolved.eval_datasets and options["val_size"] > 0:
        warnings.append(f"val_size {options['val_size']} is not used: eval_dataset is the validation split")
    if n_errors:
        warnings.append(f"skip_bad_rows: {n_errors} rows failed their checks and were skipped")
    if dropped:
        warnings.append(f"{sum(dropped.values())} rows had nothing left to train on and were dropped: {dropped}")
    if system_dropped:
        warnings.append(f"the template {resolved.template.name} left out the system message of {system_dropped} "
                        "rows (it writes a system message only before the last user turn, which training rows end after)")
    if tools_ignored:
        warnings.append(f"the template {resolved.template.name} does not render tool descriptions: "
                        f"{tools_ignored} rows carry tools that the model will not see")
    if truncated:
        warnings.append(f"{truncated} rows were longer than cutoff_len {options['cutoff_len']} and were truncated")
    for w in warnings:
        log("warning: " + w)
    model = resolved.model
    template = resolved.template
    from airtune.data.encode import load_tokenizer

    tok = _WORKER["encoder"].tokenizer if "encoder" in _WORKER else load_tokenizer(model.weights, model.revision)
    datasets = []
    for d, s in zip(parts["datasets"] + parts.get("eval_datasets", []), stats):
        datasets.append({"name": d["name"], "format": d["format"], "kind": d["kind"], "content_hash": d["content_hash"],
                         "files": d["files"], "rows_read": s["read"], "rows_used": s["kept"], "rows_bad": s["bad"]})
    eval_datasets = datasets[len(parts["datasets"]):]
    datasets = datasets[: len(parts["datasets"])]
    return {
        "airtune_data_version": DATA_VERSION,
        "content_hash": key,
        "stage": stage,
        "cutoff_len": options["cutoff_len"],
        "packing": options["packing"],
        "train_on_prompt": options["train_on_prompt"],
        "mask_history": options["mask_history"],
        "max_samples": options["max_samples"],
        "val_size": options["val_size"],
        "seed": options["seed"],
        "skip_bad_rows": options["skip_bad_rows"],
        "template": {"name": template.name, "path": str(template.path), "sha256": parts["template_sha256"],
                     "file": TEMPLATE_FILE},
        "tokenizer": {"name_or_path": model.weights, "revision": model.revision, "fingerprint": parts["tokenizer"],
                      "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id, "bos_token": tok.bos_token,
                      "pad_token": tok.pad_token, "vocab_size": len(tok)},
        "datasets": datasets,
        "eval_datasets": eval_datasets,
        "eval_prompts": eval_prompts,
        "examples": examples_per_split,
        "rows": rows,
        "tokens": tokens,
        "label_tokens": label_tokens,
        "longest_row_tokens": longest,
        "columns": columns,
        "truncated_rows": truncated,
        "dropped_rows": dropped,
        "skipped_rows": n_errors,
        "boundary_tokens": int(straddle),
        "warnings": warnings,
        "timings": timings,
        "processes": timings.pop("processes", 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _save_quietly(ds, folder: Path) -> None:
    """save_to_disk without datasets' "Saving the dataset (0/1 shards)" tqdm bar: it goes to stderr,
    which Airflow's task log shows as an ERROR line in every successful prepare_dataset (datasets' own
    switch, restored afterwards: the prepare step runs in processes that other code shares)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        ds.save_to_disk(str(folder))
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()

