"""Fixtures for the prepare step's tests: a resolved spec built by hand (not through airtune.resolve),
the demo files registered through a LLaMA-Factory-style dataset_info.json, and the tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "llamafactory-demo"
TEMPLATES = REPO / "configs" / "templates"

# LLaMA-Factory's own data/dataset_info.json entries for its demo files (verbatim in meaning).
DATASET_INFO = {
    "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
    "identity": {"file_name": "identity.json"},
    "dpo_en_demo": {
        "file_name": "dpo_en_demo.json", "ranking": True, "formatting": "sharegpt",
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    },
    "kto_en_demo": {
        "file_name": "kto_en_demo.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    },
    "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
}

SPEC = {
    "name": "data-test", "stage": "sft", "cutoff_len": 1024, "packing": False, "val_size": 0.0, "seed": 42,
    "max_samples": None, "train_on_prompt": False, "mask_history": False, "skip_bad_rows": False,
    "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "num_train_epochs": 1.0,
    "nodes": 1, "gpus_per_node": 0, "warmup_steps": 0, "extra_args": {},
}


def dataset(name: str, fmt: str, kind: str, files, columns=None, tags=None) -> dict:
    return {"name": name, "format": fmt, "kind": kind, "files": [str(f) for f in files],
            "columns": dict(columns or {}), "tags": dict(tags or {})}


def resolved(model_dir: Path, datasets: list[dict], *, template: str = "chatml", template_path: Path | None = None,
             **spec) -> dict:
    """The resolved spec as docs/architecture.md describes it, with only what the prepare step reads filled in."""
    return {
        "airtune_version": "0.1.0",
        "spec": {**SPEC, **spec},
        "model": {"name": "tiny-llama-dev", "family": "llama", "kind": "base", "template": "chatml",
                  "context_length": 2048, "params_b": 0.0018, "weights": str(model_dir), "revision": None},
        "template": {"name": template, "path": str(template_path or TEMPLATES / f"{template}.jinja")},
        "datasets": datasets,
        "location": {"name": "local", "kind": "local"},
        "runtime": {"nodes": 1, "gpus_per_node": 0, "world_size": 1, "device": "cpu"},
        "parent": None, "reward_model": None, "estimate": {}, "warnings": [],
    }


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def lf_catalog(tmp_path_factory):
    """The demo files registered through a LLaMA-Factory dataset_info.json, read by airtune's catalog."""
    from airtune.catalog import Catalog

    root = tmp_path_factory.mktemp("lf")
    (root / "data").mkdir()
    for name in ("alpaca_en_demo.json", "identity.json", "dpo_en_demo.json", "kto_en_demo.json", "c4_demo.jsonl"):
        (root / "data" / name).symlink_to(DEMO / name)
    (root / "data" / "dataset_info.json").write_text(json.dumps(DATASET_INFO, indent=2))
    configs = root / "configs"
    (configs / "templates").mkdir(parents=True)
    (configs / "templates" / "chatml.jinja").write_text((TEMPLATES / "chatml.jinja").read_text())
    (configs / "models.yaml").write_text("models: {}\n")
    (configs / "locations.yaml").write_text("locations: {}\n")
    lines = ["datasets:"]
    for name in DATASET_INFO:
        lines.append(f"  {name}: {{dataset_info: data/dataset_info.json, entry: {name}}}")
    (configs / "datasets.yaml").write_text("\n".join(lines) + "\n")
    return Catalog.load(configs)


def entry_dict(entry) -> dict:
    """A catalog DatasetEntry as the resolved spec carries it."""
    return {"name": entry.name, "format": entry.format, "kind": entry.kind, "files": [str(f) for f in entry.files],
            "columns": dict(entry.columns), "tags": dict(entry.tags)}


def trained_text(tokenizer, row: dict) -> str:
    return tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])


def load_rows(out: Path, split: str = "train") -> list[dict]:
    from datasets import load_from_disk

    return load_from_disk(str(out / split)).to_list()
