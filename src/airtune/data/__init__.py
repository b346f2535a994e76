"""Dataset preparation: load, check, template, tokenize, pack and split (the DAG's prepare_dataset task).

    prepare(resolved, out_dir, cache_dir=None, num_proc=None, log=print) -> manifest dict
    load_prepared(dir) -> (train, validation or None, manifest)
    training_figures(manifest, spec) -> {total_steps, tokens_per_epoch, ..., warnings}

Cheap to import: datasets, tokenizers and transformers are imported when a function runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from airtune.data.errors import DataError, RowError
from airtune.data.figures import training_figures

__all__ = ["DataError", "RowError", "check_stage_fit", "load_prepared", "prepare", "training_figures"]


def prepare(resolved: dict, out_dir: Path, *, cache_dir: Path | None = None, num_proc: int | None = None, log=print) -> dict:
    from airtune.data.build import prepare as _prepare

    return _prepare(resolved, Path(out_dir), cache_dir=cache_dir, num_proc=num_proc, log=log)


def check_stage_fit(stage: str, datasets: list[dict]) -> None:
    from airtune.data.build import check_stage_fit as _check

    _check(stage, datasets)


def load_prepared(data_dir: Path):
    """(train, validation or None, manifest) from a prepared folder (docs/architecture.md)."""
    from datasets import load_from_disk

    data_dir = Path(data_dir)
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{data_dir}: no manifest.json; is this a prepared dataset?")
    manifest = json.loads(manifest_path.read_text())
    train = load_from_disk(str(data_dir / "train"))
    validation = load_from_disk(str(data_dir / "validation")) if (data_dir / "validation").is_dir() else None
    return train, validation, manifest
