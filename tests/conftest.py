"""Shared fixtures: an isolated AIRTUNE_HOME per test session, and the tiny model built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny Llama, built offline once per test session (about 8 s)."""
    from airtune.tinymodel import make_tiny_model

    shared = os.environ.get("AIRTUNE_TEST_TINY_MODEL")
    if shared and (Path(shared) / "airtune-tiny.json").exists():
        return Path(shared)
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama-dev")
