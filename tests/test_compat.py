"""Every private or semi-private library attribute airtune relies on (airtune.compat.RELIES_ON) still exists."""

from __future__ import annotations

import importlib

import pytest

from airtune import compat


@pytest.mark.parametrize(("module", "attribute"), compat.RELIES_ON)
def test_what_airtune_relies_on_still_exists(module, attribute):
    obj = importlib.import_module(module)
    for part in attribute.split("."):
        assert hasattr(obj, part), f"{module}.{attribute}: {part!r} is gone in the installed version; see airtune.compat"
        obj = getattr(obj, part)
