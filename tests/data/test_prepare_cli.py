"""`airtune prepare` on bad data: one message naming the file, row and field (exit 2), no traceback."""

from __future__ import annotations

import shutil

from airtune.cli import main

from .conftest import REPO


def test_a_data_error_is_a_message(tmp_path, monkeypatch, capsys, tiny_model_dir):
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "hi", "output": "hello"}, {"instruction": 5, "output": "x"}]')
    with open(configs / "datasets.yaml", "a") as f:
        f.write(f"  broken:\n    format: alpaca\n    kind: sft\n    files: [{bad}]\n")
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny-llama-dev").symlink_to(tiny_model_dir)
    monkeypatch.setenv("AIRTUNE_CONFIG_DIR", str(configs))
    monkeypatch.setenv("AIRTUNE_HOME", str(home))
    job = tmp_path / "job.yaml"
    job.write_text("name: bad-data\nbase_model: tiny-llama-dev\ndataset: [broken]\n")
    assert main(["prepare", str(job)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{job}: the data cannot be prepared" in err and str(bad) in err and "instruction" in err and "2" in err, err
