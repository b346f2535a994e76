"""`export_merged`: the LoRA adapter merged into the base weights, saved as a standalone model.

Done from the saved files, not the training process's model: the base is loaded afresh in the
adapter's dtype on the CPU, the adapter from output/final applied and merged, and the result written
to output/merged (atomically). It works the same after ZeRO-3 (whose in-memory weights are shards).
Quantized bases are refused by validate (merging into quantized weights is lossy).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def export_merged(resolved, final: Path, output_dir: Path, *, model_class) -> Path:
    """`resolved`: a Resolved (or spec.json's dict)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from airtune.resolved import as_resolved

    resolved = as_resolved(resolved)
    model = resolved.model
    kwargs = {"num_labels": 1} if resolved.spec.stage == "rm" else {}
    base = model_class.from_pretrained(model.weights, revision=model.revision, dtype="auto", **kwargs)
    merged = PeftModel.from_pretrained(base, str(final)).merge_and_unload()
    out, tmp = output_dir / "merged", output_dir / "merged.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp), safe_serialization=True)
    AutoTokenizer.from_pretrained(final).save_pretrained(str(tmp))
    shutil.copyfile(final / "spec.json", tmp / "spec.json")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
