"""docs/form.md is what airtune.formdoc writes from the field table, and the repository stands alone.

When a field of src/airtune/spec.py changes and docs/form.md is not regenerated (`make form-doc`),
the first test fails. The last one fails when a tracked file points at the project's notes outside
the repository (they are not part of a clone).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from airtune import cli, formdoc
from airtune.spec import FIELDS, SECTIONS

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "form.md"


def test_docs_form_md_is_the_generators_output():
    assert DOC.is_file(), "docs/form.md is missing: run `make form-doc` and commit it"
    assert DOC.read_text(encoding="utf-8") == formdoc.render(), (
        "docs/form.md is not current with the field table in src/airtune/spec/fields.py: run `make form-doc` "
        "(airtune form-doc) and commit docs/form.md")


def test_every_field_has_its_block_in_table_order_and_section():
    text = DOC.read_text(encoding="utf-8")
    for f in FIELDS:
        assert f"`{f.name}`" in text, f.name
        assert f"**{f.label_en}** · **{f.label_zh}**" in text, f.name
    assert re.findall(r"^### `([a-z_0-9]+)`$", text, flags=re.M) == [f.name for f in FIELDS]
    # each field's block lies in its own section
    starts = [text.index(f'<a id="section-{s.number}"></a>') for s in SECTIONS] + [len(text)]
    for f in FIELDS:
        at = text.index(f"### `{f.name}`\n")
        number = SECTIONS[max(i for i, start in enumerate(starts[:-1]) if start < at)].number
        assert number == f.section, f.name


def test_rules_between_fields_quote_the_codes_messages():
    text = DOC.read_text(encoding="utf-8")
    rules = formdoc.rule_messages()
    assert {"quantization_bit", "quantization_method", "reward_model", "stage", "lora_rank"} <= set(rules)
    for examples in rules.values():
        for _, message in examples:
            assert f"“{message}”" in text


def test_check_and_the_cli(tmp_path, capsys):
    out = tmp_path / "form.md"
    assert "missing" in formdoc.check(out)
    assert cli.main(["form-doc", "--check", "--out", str(out)]) == 1
    assert cli.main(["form-doc", "--out", str(out)]) == 0
    assert formdoc.check(out) is None
    assert cli.main(["form-doc", "--check", "--out", str(out)]) == 0
    out.write_text(out.read_text(encoding="utf-8").replace("Learning rate", "Learning speed"), encoding="utf-8")
    assert cli.main(["form-doc", "--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "not current" in err and "make form-doc" in err and "line" in err


# A path into the notes next to the checkout, or the name of one of those notes. Written so that
# this file does not match itself.
OUTSIDE = re.compile(
    r"\.\./+shared\b"                                  # one or more folders up, then shared
    r"|/work/+shared\b"
    r"|(?<![\w/.-])shared/[\w.-]"                      # shared/<something> as a path
    r"|\b(?:FORM|DESIGN|STYLE)\.md\b"                 # the notes by name (docs/form.md is ours)
    r"|\bBENCH[-]NOTES\b"
)


def test_no_tracked_file_points_outside_the_repository():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    found = []
    for name in filter(None, files.decode().split("\0")):
        path = REPO / name
        if not path.is_file():
            continue  # deleted in the working tree, not yet committed
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{name}:{number}: {line.strip()[:160]}")
    assert not found, ("tracked files point outside the repository (use docs/form.md, docs/architecture.md, "
                       "docs/benchmarks.md instead):\n" + "\n".join(found))
