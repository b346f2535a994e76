"""The one loader of job files (`airtune validate|prepare|run|render`, the retraining job files).

A job file is one YAML document holding one flat mapping of docs/form.md's keys. Whatever the bytes,
the loader either returns that mapping or raises JobFileError with one message naming the file and,
where YAML knows it, the line: safe YAML only (no `!!python/...`), no duplicate keys (YAML would
silently keep the last), no keys that are not text, one document, at most MAX_BYTES and MAX_DEPTH
levels of nesting, UTF-8 text. Numbers with an exponent (`1e-4`) are numbers, as in YAML 1.2 and JSON.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

MAX_BYTES = 1 << 20  # a job is a few dozen keys; a megabyte is a mistake, not a job
MAX_DEPTH = 20


class JobFileError(ValueError):
    """A job file that is not one readable mapping; str() is the whole message."""


def printable(value, limit: int = 80) -> str:
    """A value for a message: control characters escaped, long values cut."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate and non-text keys and deep nesting."""

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)
        seen: dict = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(None, None, "a key that is a list or a mapping is not accepted",
                                                        key_node.start_mark)
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {printable(key)} was read as a {type(key).__name__}; keys are field names "
                                "(quote it if it is one)", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {printable(key)!r} appears twice (first on line {seen[key] + 1}); "
                                "YAML would silently keep the last one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads a number with an exponent but no point, or no sign after the `e`, as text:
# `learning_rate: 1e-4` would be the string "1e-4". YAML 1.2 and JSON read it as the number it is; so
# does this loader (docs/form.md: numbers are numbers, text is refused where a number goes).
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _depth(node, limit: int) -> int:
    stack = [(node, 1)]
    deepest = 0
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(n, yaml.SequenceNode):
            stack.extend((c, d + 1) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            stack.extend((v, d + 1) for _, v in n.value)
    return deepest


def _where(exc) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def parse(text: str, source: str) -> dict:
    """The mapping in `text`; JobFileError naming `source` otherwise."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise JobFileError(f"{source}: the file is larger than {MAX_BYTES // 1024} KiB; a job file is one mapping of a few dozen keys")
    if "\x00" in text:
        raise JobFileError(f"{source}: the file holds NUL bytes: it is not a YAML text file")
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            raise JobFileError(f"{source}: the file is empty; a job file is one mapping of docs/form.md's keys")
        if _depth(node, MAX_DEPTH) > MAX_DEPTH:
            raise JobFileError(f"{source}: values nested deeper than {MAX_DEPTH} levels are not accepted")
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        if "expected a single document" in str(exc):
            problem = "the file holds more than one YAML document (a '---' line); a job file is one mapping"
        elif "could not determine a constructor" in str(exc):
            tag = str(getattr(exc, "problem", "")).split("tag", 1)[-1].strip(" '!") or "?"
            problem = f"the tag !{printable(tag)} is not accepted (only plain YAML values: text, numbers, lists, mappings)"
        elif "\t" in text and "tab" in str(exc).lower():
            problem = f"{problem} (YAML does not take tabs for indentation: use spaces)"
        if isinstance(exc, yaml.reader.ReaderError):
            problem = f"the character {printable(chr(exc.character)) if isinstance(exc.character, int) else '?'} at position {exc.position} is not accepted in YAML"
        raise JobFileError(f"{source}: not readable YAML{_where(exc)}: {printable(problem, 300)}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. a 5,000-digit integer
        raise JobFileError(f"{source}: a value is not readable: {printable(str(exc), 200)}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise JobFileError(f"{source}: a {type(data).__name__} at the top is not accepted: a job file is one flat "
                           "mapping of docs/form.md's keys")
    return data


def load(path: str | Path, *, stdin=None) -> dict:
    """A job file (or `-`: standard input) as its mapping."""
    if str(path) == "-":
        import sys

        return parse((stdin or sys.stdin).read(MAX_BYTES + 1), "(standard input)")
    p = Path(path)
    if p.is_dir():
        raise JobFileError(f"{path}: is a folder; give the job's YAML file")
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise JobFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise JobFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_BYTES:
        raise JobFileError(f"{path}: the file is larger than {MAX_BYTES // 1024} KiB; a job file is one mapping of a few dozen keys")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JobFileError(f"{path}: not UTF-8 text (byte {exc.start}): a job file is YAML text") from None
    return parse(text, str(path))
