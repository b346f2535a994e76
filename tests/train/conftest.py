"""Session fixtures for the trainer's tests: the prepared SFT data and one uninterrupted SFT LoRA run."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import make_job, make_prepared, run_train


@pytest.fixture(scope="session")
def sft_data(tiny_model_dir, tmp_path_factory) -> Path:
    return make_prepared(tiny_model_dir, tmp_path_factory.mktemp("prepared") / "sft")


@pytest.fixture(scope="session")
def sft_run(tiny_model_dir, sft_data, tmp_path_factory) -> Path:
    """One uninterrupted SFT LoRA job (24 steps, merged weights exported too), shared by the tests that read its outputs."""
    job = make_job(tmp_path_factory.mktemp("jobs") / "sft-lora", tiny_model_dir, sft_data, export_merged=True)
    proc = run_train(job, sft_data)
    (job / "stdout.txt").write_text(proc.stdout)
    return job
