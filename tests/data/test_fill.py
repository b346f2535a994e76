"""A dataset's `fill` (configs/datasets.yaml): LLaMA-Factory's identity placeholders replaced in the rows."""

from __future__ import annotations

from airtune import data
from airtune.catalog import Catalog

from .conftest import entry_dict, load_rows, resolved, trained_text


def test_identity_tuna_fills_name_and_author_and_changes_the_cache_key(tmp_path, tiny_model_dir, tokenizer):
    catalog = Catalog.load()
    filled = catalog.dataset("identity_tuna")
    assert filled.fill == {"name": "Tuna", "author": "Airtune Labs"}
    assert filled.files == catalog.dataset("identity").files  # the same file, filled while read
    d = {**entry_dict(filled), "fill": dict(filled.fill)}
    spec = resolved(tiny_model_dir, [d])
    manifest = data.prepare(spec, tmp_path / "filled", log=lambda m: None)
    rows = load_rows(tmp_path / "filled")
    texts = [trained_text(tokenizer, r) for r in rows]
    assert len(rows) == 91
    assert not any("{{" in t for t in texts)
    assert sum("Tuna" in t for t in texts) > 60 and sum("Airtune Labs" in t for t in texts) > 30
    plain = data.prepare(resolved(tiny_model_dir, [entry_dict(catalog.dataset("identity"))]), tmp_path / "plain", log=lambda m: None)
    assert sum("{{name}}" in trained_text(tokenizer, r) for r in load_rows(tmp_path / "plain")) > 60
    assert manifest["content_hash"] != plain["content_hash"]
