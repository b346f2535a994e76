"""The fields of each stage's TRL config, as a table: `airtune validate` checks `extra_args` without TRL.

Importing TRL takes several seconds; validate (the CLI and the DAG's validate task) only needs each
config class's field names and types. `trl_fields_table.py` holds them, generated from the pinned
TRL and transformers by

    python -m airtune.train.trl_fields --write     # rewrite the table
    python -m airtune.train.trl_fields --check     # exit 1 when it differs from the installed TRL

(tests/test_trl_fields.py fails when the table and the pinned TRL differ). A type is stored in a
small JSON-able grammar that `fits` reads as `airtune.train.args.value_fits` reads the real
annotation, with the name `args._type_name` gives it, so validate's messages are the trainer's.

Standard library only; TRL is imported by `generate` alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("trl_fields_table.py")

# (stage, pref_loss) -> the config class `airtune.train.args.config_class` returns for it.
STAGE_CONFIGS = {
    ("pt", None): "SFTConfig", ("sft", None): "SFTConfig", ("rm", None): "RewardConfig",
    ("dpo", None): "DPOConfig", ("dpo", "orpo"): "ORPOConfig", ("dpo", "simpo"): "CPOConfig",
    ("kto", None): "KTOConfig", ("grpo", None): "GRPOConfig",
}


def config_name(stage: str, pref_loss: str | None = None) -> str:
    """The name of the TRL config class a stage trains with (for dpo, of its pref_loss)."""
    loss = pref_loss if stage == "dpo" and pref_loss in ("orpo", "simpo") else None
    return STAGE_CONFIGS[(stage, loss)]


def config_fields(stage: str, pref_loss: str | None = None) -> tuple[str, dict]:
    """(class name, {field: [type, shown type] or None}) from the table; None: a field whose type is not checked."""
    from airtune.train import trl_fields_table

    name = config_name(stage, pref_loss)
    return name, trl_fields_table.CONFIGS[name]


def table_versions() -> dict:
    from airtune.train import trl_fields_table

    return dict(trl_fields_table.VERSIONS)


# -- the type grammar -----------------------------------------------------------------------------
# "any" | "none" | "bool" | "int" | "float" | "str" | "list" | "dict" |
# {"union": [type, ...]} | {"literal": [value, ...]} | {"enum": [text, ...]} (an Enum: its values and member names)


def fits(value: Any, kind: Any) -> bool:
    """Whether a YAML/JSON value fits a field of this (encoded) type; as `args.value_fits` on the annotation."""
    if kind == "any":
        return True
    if isinstance(kind, dict):
        if "union" in kind:
            return any(fits(value, k) for k in kind["union"])
        if "literal" in kind:
            return value in kind["literal"]
        if "enum" in kind:
            return isinstance(value, str) and value in kind["enum"]
        raise ValueError(f"not a type of the table: {kind!r}")
    if kind == "none":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, (list, tuple))
    if kind == "dict":
        return isinstance(value, dict)
    raise ValueError(f"not a type of the table: {kind!r}")


def encode(expected: Any) -> Any:
    """A type annotation in the table's grammar, read the way `args.value_fits` reads it."""
    import enum
    import types
    import typing

    origin = typing.get_origin(expected)
    if expected is typing.Any or expected is object:
        return "any"
    if origin in (typing.Union, types.UnionType):
        return {"union": [encode(t) for t in typing.get_args(expected)]}
    if expected is type(None):
        return "none"
    if origin is typing.Literal:
        return {"literal": list(typing.get_args(expected))}
    for simple in (bool, int, float, str):
        if expected is simple:
            return simple.__name__
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        return {"enum": sorted({m.value for m in expected if isinstance(m.value, str)} | set(expected.__members__))}
    if origin in (list, tuple, typing.List) or expected in (list, tuple):
        return "list"
    if origin is dict or expected is dict:
        return "dict"
    return "any"


# -- writing the table ----------------------------------------------------------------------------


def generate() -> tuple[dict, dict]:
    """(versions, configs) from the installed TRL: {class name: {field: [type, shown] or None}}."""
    import dataclasses
    import importlib.metadata
    import warnings

    from airtune.train.args import _field_types, _type_name, config_class

    configs: dict[str, dict] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental's warning
        for (stage, loss), name in STAGE_CONFIGS.items():
            cls = config_class(stage, loss)
            if cls.__name__ != name:
                raise SystemExit(f"stage {stage} ({loss}) trains with {cls.__name__}, the table says {name}: "
                                 "update STAGE_CONFIGS")
            if name in configs:
                continue
            hints = _field_types(cls)
            configs[name] = {f.name: ([encode(hints[f.name]), _type_name(hints[f.name])] if f.name in hints else None)
                             for f in dataclasses.fields(cls)}
    versions = {p: importlib.metadata.version(p) for p in ("trl", "transformers")}
    return versions, configs


def render(versions: dict, configs: dict) -> str:
    lines = [
        '"""Generated by `python -m airtune.train.trl_fields --write` from the installed TRL and transformers:',
        "do not edit. Each stage's TRL config class: {field: [type, shown type] or None} (airtune.train.trl_fields).",
        '"""',
        "",
        "# ruff: noqa: E501",
        "",
        f"VERSIONS = {versions!r}",
        "",
        "CONFIGS = {",
    ]
    for name in sorted(configs):
        lines.append(f"    {name!r}: {{")
        for field, entry in configs[name].items():
            lines.append(f"        {field!r}: {entry!r},")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airtune.train.trl_fields", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help=f"rewrite {TABLE_PATH.name} from the installed TRL")
    group.add_argument("--check", action="store_true", help="exit 1 when the table differs from the installed TRL")
    args = parser.parse_args(argv)
    text = render(*generate())
    if args.write:
        TABLE_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {TABLE_PATH}")
        return 0
    if not TABLE_PATH.is_file() or TABLE_PATH.read_text(encoding="utf-8") != text:
        print(f"{TABLE_PATH} is out of date: run python -m airtune.train.trl_fields --write", file=sys.stderr)
        return 1
    print(f"{TABLE_PATH.name} matches the installed TRL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
