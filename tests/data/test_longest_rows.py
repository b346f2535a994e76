"""The manifest records each split's longest row (longest_row_tokens): prepare_dataset's GPU memory check
reads it instead of assuming every row is cutoff_len tokens long."""

from __future__ import annotations

from airtune.data import prepare

from .conftest import entry_dict, load_rows, resolved


def test_the_manifest_has_the_longest_row(tiny_model_dir, lf_catalog, tmp_path):
    entry = entry_dict(lf_catalog.dataset("alpaca_en_demo"))
    out = tmp_path / "plain"
    manifest = prepare(resolved(tiny_model_dir, [entry], cutoff_len=2048, val_size=0.1), out, log=lambda m: None)
    for split in ("train", "validation"):
        longest = max(len(r["input_ids"]) for r in load_rows(out, split))
        assert manifest["longest_row_tokens"][split] == longest
    assert manifest["longest_row_tokens"]["train"] < 2048  # alpaca's rows are far shorter than the cutoff

    packed = prepare(resolved(tiny_model_dir, [entry], cutoff_len=512, packing=True), tmp_path / "packed",
                     log=lambda m: None)
    assert packed["longest_row_tokens"]["train"] == max(len(r["input_ids"]) for r in load_rows(tmp_path / "packed"))
    assert packed["longest_row_tokens"]["train"] <= 512
