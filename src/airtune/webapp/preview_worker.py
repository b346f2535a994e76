"""The create wizard's dataset preview, in a process of its own (`python -m airtune.webapp.preview_worker`,
started by airtune.webapp.create.preview with a timeout): the api-server never imports datasets,
tokenizers or transformers, and a big dataset cannot stall it.

stdin: {"resolved": the resolved spec (validate's), "rows": N}. stdout, one JSON line:
  manifest   the data step's own manifest (airtune.data.prepare, through the prepared-data cache that
             `airtune prepare` and prepare_dataset use: the same rows, tokens and counts)
  figures    data.training_figures(manifest, spec): steps and tokens per epoch
  rows       the first N training rows as the model sees them, decoded from the prepared token ids:
             parts [{name, text, trained}], the masked prompt (labels -100) apart from the trained answer
  lengths    every row's token length before truncation (the data step's Encoder with no cutoff),
             a histogram against cutoff_len, and how many rows are longer than cutoff_len
or {"error": message, "rejected_rows": n, "row_errors": [...]} when the data cannot be prepared.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

IGNORE = -100
BINS = 8


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _segments(tok, ids: list[int], labels: list[int]) -> list[dict]:
    """Runs of masked / trained tokens, each decoded."""
    parts, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != IGNORE) != (labels[start] != IGNORE):
            trained = labels[start] != IGNORE
            parts.append({"name": "answer" if trained else "prompt", "trained": bool(trained),
                          "text": tok.decode(ids[start:i], skip_special_tokens=False), "tokens": i - start})
            start = i
    return parts


def decode_row(tok, row: dict, stage: str) -> dict:
    if "input_ids" in row:
        ids = list(row["input_ids"])
        labels = list(row["labels"]) if "labels" in row else ids
        return {"tokens": len(ids), "parts": _segments(tok, ids, labels)}
    parts = []
    for key, name, trained in (("prompt_ids", "prompt", False), ("chosen_ids", "chosen", True),
                               ("rejected_ids", "rejected", True), ("completion_ids", "completion", True)):
        if key in row:
            ids = list(row[key])
            parts.append({"name": name, "trained": trained and stage != "grpo", "tokens": len(ids),
                          "text": tok.decode(ids, skip_special_tokens=False)})
    extra = {k: v for k, v in row.items() if not k.endswith(("_ids", "labels")) and isinstance(v, (bool, int, float, str))}
    return {"tokens": sum(p["tokens"] for p in parts), "parts": parts, "values": extra}


def _row_length(ok: dict, stage: str) -> int:
    """One encoded row's length as one sequence of the forward pass (data.figures.longest_row_tokens)."""
    n = {k: len(v) for k, v in ok.items() if k.endswith("_ids")}
    if "input_ids" in n:
        return n["input_ids"]
    if stage == "rm":
        return max(n.get("chosen_ids", 0), n.get("rejected_ids", 0))
    if stage == "dpo":
        return n.get("prompt_ids", 0) + max(n.get("chosen_ids", 0), n.get("rejected_ids", 0))
    if stage == "kto":
        return n.get("prompt_ids", 0) + n.get("completion_ids", 0)
    return n.get("prompt_ids", 0)


def full_lengths(resolved: dict, tokenizer) -> list[int]:
    """Every training row's tokens before truncation: the data step's own load and Encoder (airtune.data.build
    and encode), with a cutoff no row reaches."""
    from airtune.data.build import _load, _options
    from airtune.data.encode import Encoder

    options = _options(resolved)
    examples, _, _, _, _ = _load(resolved, {**options, "skip_bad_rows": True}, _log)
    template_text = Path(resolved["template"]["path"]).read_text(encoding="utf-8")
    model = resolved["model"]
    enc = Encoder(model["weights"], model.get("revision"), template_text, stage=options["stage"], cutoff_len=2**31 - 1,
                  train_on_prompt=options["train_on_prompt"], mask_history=options["mask_history"], tokenizer=tokenizer)
    lengths = []
    for a in range(0, len(examples), 512):
        for r in enc.encode_batch(examples[a:a + 512]):
            if "ok" in r:
                lengths.append(_row_length(r["ok"], options["stage"]))
    return lengths


def histogram(lengths: list[int], cutoff: int) -> dict:
    width = max(1, -(-cutoff // BINS))
    bins = [{"from": i * width + 1, "to": min(cutoff, (i + 1) * width), "rows": 0} for i in range(BINS)]
    over = {"from": cutoff + 1, "to": None, "rows": 0}
    for n in lengths:
        if n > cutoff:
            over["rows"] += 1
        else:
            bins[min(BINS - 1, max(0, (n - 1) // width))]["rows"] += 1
    s = sorted(lengths)

    def pct(q):
        return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] if s else None

    return {"cutoff_len": cutoff, "rows": len(s), "bins": bins + [over], "longer_than_cutoff": over["rows"],
            "min": s[0] if s else None, "median": pct(0.5), "p90": pct(0.9), "max": s[-1] if s else None}


def main() -> int:
    request = json.loads(sys.stdin.read())
    resolved, n = request["resolved"], int(request.get("rows") or 5)
    from airtune import data, paths
    from airtune.data.encode import load_tokenizer
    from airtune.data.errors import DataError

    root = paths.airtune_home() / "preview"
    root.mkdir(parents=True, exist_ok=True)
    out_dir = Path(tempfile.mkdtemp(prefix="preview-", dir=root)) / "data"
    try:
        try:
            manifest = data.prepare(resolved, out_dir, cache_dir=paths.airtune_home() / "cache" / "prepared", log=_log)
        except DataError as exc:
            print(json.dumps({"error": str(exc), "rejected_rows": exc.total, "row_errors": [str(e) for e in exc.errors]}))
            return 0
        spec = resolved["spec"]
        figures = data.training_figures(manifest, spec)
        train, _, _ = data.load_prepared(out_dir)
        model = resolved["model"]
        tok = load_tokenizer(model["weights"], model.get("revision"))
        stage = manifest["stage"]
        rows = [decode_row(tok, train[i], stage) for i in range(min(n, len(train)))]
        try:
            lengths = full_lengths(resolved, tok)
            source = "before truncation"
        except Exception as exc:  # noqa: BLE001 - the prepared rows' lengths are still a distribution
            _log(f"lengths before truncation not available: {exc}")
            lengths = [_row_length({k: train[i][k] for k in train.column_names if k.endswith("_ids")}, stage)
                       for i in range(len(train))]
            source = "as prepared (after truncation)"
        hist = histogram(lengths, int(manifest["cutoff_len"]))
        hist["source"] = source
        print(json.dumps({"manifest": manifest, "figures": figures, "rows": rows, "lengths": hist,
                          "packing": manifest.get("packing")}, default=str))
        return 0
    finally:
        shutil.rmtree(out_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
