"""Every row is checked against its format: a corpus of broken files, each giving one clear error that names the
file and the row; skip_bad_rows; the file types a dataset may come in."""

from __future__ import annotations

import csv
import json

import pytest

from airtune.data import DataError, prepare

from .conftest import DEMO, dataset, load_rows, resolved

ALPACA = {"instruction": "Say hi", "input": "", "output": "Hi!"}
SHAREGPT = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
PAIR = {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "Hello"},
        "rejected": {"from": "gpt", "value": "Go away"}}
PAIR_COLUMNS = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}


def _jsonl(rows) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


# name: (file name, file text, format, kind, columns, stage, row, what the error says)
BROKEN = {
    "bad JSON": ("bad.json", '[{"instruction": "a", "output": "b"},\n {"instruction": "c", "output": "d"}\n {"instruction": "e"}]',
                 "alpaca", "sft", None, "sft", 2, "invalid JSON"),
    "bad JSON line": ("bad.jsonl", _jsonl([ALPACA]) + '{"instruction": "x", "output": \n' + _jsonl([ALPACA]),
                      "alpaca", "sft", None, "sft", 2, "invalid JSON"),
    "missing column": ("nocol.json", json.dumps([{"instruction": "a", "answer": "b"}, {"instruction": "c", "answer": "d"}]),
                       "alpaca", "sft", None, "sft", 1, "output: missing in every row (2 rows; the rows have: answer, instruction)"),
    "missing column, csv": ("nocol.csv", "instruction,answer\na,b\nc,d\n", "alpaca", "sft", None, "sft", 1,
                            "output: missing in every row"),
    "wrong type": ("types.jsonl", _jsonl([ALPACA, {"instruction": "a", "input": "", "output": ["b", "c"]}, ALPACA]),
                   "alpaca", "sft", None, "sft", 2, "output: expected a string, found a list"),
    "wrong message type": ("msgtype.json", json.dumps([SHAREGPT, {"conversations": [{"from": "human", "value": 3},
                                                                                    {"from": "gpt", "value": "x"}]}]),
                           "sharegpt", "sft", None, "sft", 2, "conversations[0].value: expected a string, found a number"),
    "empty response": ("empty.json", json.dumps([SHAREGPT, SHAREGPT, {"conversations": [{"from": "human", "value": "Hi"},
                                                                                        {"from": "gpt", "value": "  "}]}]),
                       "sharegpt", "sft", None, "sft", 3, "conversations[1].value: empty response"),
    "empty output": ("emptyout.json", json.dumps([{"instruction": "a", "input": "", "output": ""}, ALPACA]),
                     "alpaca", "sft", None, "sft", 1, "output: empty"),
    "preference without rejected": ("pairs.json", json.dumps([PAIR, {k: v for k, v in PAIR.items() if k != "rejected"}]),
                                    "sharegpt", "preference", PAIR_COLUMNS, "dpo", 2, "rejected: missing"),
    "mixed formats": ("mixed.jsonl", _jsonl([ALPACA, SHAREGPT, ALPACA]), "alpaca", "sft", None, "sft", 2,
                      "instruction: missing (this row looks like sharegpt (conversations), the dataset is declared alpaca)"),
    "unknown role": ("role.json", json.dumps([{"conversations": [{"from": "robot", "value": "Hi"}, {"from": "gpt", "value": "x"}]}]),
                     "sharegpt", "sft", None, "sft", 1, "conversations[0].from: unknown role 'robot'"),
    "turns out of order": ("order.json", json.dumps([{"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "Hi"}]}]),
                           "sharegpt", "sft", None, "sft", 1, "conversations[0]: expected a user (or tool) turn here, found assistant"),
    "kto label not boolean": ("kto.json", json.dumps([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                                      "label": "maybe"}]),
                              "openai", "kto", {"kto_tag": "label"}, "kto", 1, "label: expected a boolean (true/false)"),
    "not an object": ("list.json", json.dumps([ALPACA, ["a", "b"]]), "alpaca", "sft", None, "sft", 2,
                      "expected an object (one row), found a list"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_file_gives_one_clear_error(case, tiny_model_dir, tmp_path):
    name, text, fmt, kind, columns, stage, row, says = BROKEN[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as err:
        prepare(resolved(tiny_model_dir, [dataset("broken", fmt, kind, [path], columns)], stage=stage),
                tmp_path / "out", log=lambda m: None)
    e = err.value
    assert len(e.errors) == 1 and e.total == (2 if case.startswith("missing column") else 1), str(e)
    assert e.errors[0].file == str(path) and e.errors[0].row == row
    assert f"{path}: row {row}" in str(e) and says in str(e), str(e)
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_errors_list_the_first_ones_and_count_all(tiny_model_dir, tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text(_jsonl([ALPACA] + [{"instruction": "a", "input": "", "output": ""}] * 25 + [ALPACA]))
    with pytest.raises(DataError) as err:
        prepare(resolved(tiny_model_dir, [dataset("m", "alpaca", "sft", [path])]), tmp_path / "o", log=lambda m: None)
    assert err.value.total == 25 and len(err.value.errors) == 10
    assert str(err.value).startswith("25 rows failed their checks; the first 10:") and "skip_bad_rows" in str(err.value)


def test_skip_bad_rows_skips_and_reports(tiny_model_dir, tmp_path):
    path = tmp_path / "some.jsonl"
    path.write_text(_jsonl([ALPACA, {"instruction": "a", "output": 3}, ALPACA]) + "{not json\n" + _jsonl([ALPACA]))
    m = prepare(resolved(tiny_model_dir, [dataset("s", "alpaca", "sft", [path])], skip_bad_rows=True), tmp_path / "o",
                log=lambda m: None)
    assert m["rows"] == {"train": 3} and m["skipped_rows"] == 2
    assert m["datasets"][0]["rows_read"] == 5 and m["datasets"][0]["rows_bad"] == 2
    assert any("2 rows failed their checks and were skipped" in w for w in m["warnings"])


def test_nothing_left_after_checks_is_an_error(tiny_model_dir, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(_jsonl([{"instruction": "a", "output": ""}, {"instruction": "b", "output": ""}]))
    with pytest.raises(DataError, match="no rows left to train on"):
        prepare(resolved(tiny_model_dir, [dataset("b", "alpaca", "sft", [path])], skip_bad_rows=True), tmp_path / "o",
                log=lambda m: None)


def test_every_file_type_and_a_folder(tiny_model_dir, tokenizer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = json.loads((DEMO / "alpaca_en_demo.json").read_text())[:40]
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps(rows[:10]))
    (folder / "b.jsonl").write_text(_jsonl(rows[10:20]))
    with open(folder / "c.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        w.writeheader()
        w.writerows(rows[20:30])
    pq.write_table(pa.Table.from_pylist(rows[30:40]), folder / "sub" / "d.parquet")
    (folder / ".hidden.json").write_text("not data")
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "o"
    m = prepare(resolved(tiny_model_dir, [dataset("f", "alpaca", "sft", [folder])], cutoff_len=4096), out, log=lambda m: None)
    assert m["rows"] == {"train": 40}
    got = [tokenizer.decode([t for t, lab in zip(r["input_ids"], r["labels"]) if lab != -100]) for r in load_rows(out)]
    assert got == [r["output"] + "<|im_end|>" for r in rows]
    assert [f["path"].rsplit("/", 1)[-1] for f in m["datasets"][0]["files"]] == ["a.json", "b.jsonl", "c.csv", "d.parquet"]


def test_an_error_in_a_folder_names_the_file(tiny_model_dir, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.jsonl").write_text(_jsonl([ALPACA, ALPACA]))
    (folder / "b.jsonl").write_text(_jsonl([ALPACA, ALPACA, {"instruction": "x", "input": "", "output": None}]))
    with pytest.raises(DataError) as err:
        prepare(resolved(tiny_model_dir, [dataset("f", "alpaca", "sft", [folder])]), tmp_path / "o", log=lambda m: None)
    assert f"{folder / 'b.jsonl'}: row 3: output: missing" in str(err.value)
