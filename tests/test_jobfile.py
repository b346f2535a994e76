"""The one job-file loader: every input is a mapping or one clear message (exit 2), never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airtune import jobfile
from airtune.cli import main

GOOD = "name: ok\nbase_model: tiny-llama-dev\ndataset: [identity]\nlearning_rate: 1.0e-4\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("name: a\nname: b\n", "the key 'name' appears twice (first on line 1)"),
    ("name: a\n---\nname: b\n", "more than one YAML document"),
    ("name: a\n\tstage: sft\n", "line 2"),
    ("? [a, b]\n: 1\n", "a key that is a list or a mapping is not accepted"),
    ("name: !!python/object/apply:os.system ['true']\n", "the tag !"),
    ("12: x\n", "the key 12 was read as a int"),
    ("- a\n- b\n", "a list at the top is not accepted"),
    ("just a sentence\n", "a str at the top is not accepted"),
    ("", "the file is empty"),
    ("seed: " + "9" * 5000 + "\n", "a value is not readable"),
    ("x: " + "[" * 200 + "]" * 200 + "\n", "nested deeper than 20 levels"),
    ("na\x01me: x\n", "not readable YAML"),
])
def test_bad_files_get_one_message_naming_the_file(text, expected):
    with pytest.raises(jobfile.JobFileError) as info:
        jobfile.parse(text, "job.yaml")
    message = str(info.value)
    assert message.startswith("job.yaml: ") and expected in message, message
    assert "\x01" not in message


def test_a_good_file_and_what_a_folder_a_missing_file_and_binary_bytes_say(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert jobfile.load(good)["learning_rate"] == 1.0e-4
    with pytest.raises(jobfile.JobFileError, match="is a folder"):
        jobfile.load(tmp_path)
    with pytest.raises(jobfile.JobFileError, match="no such file"):
        jobfile.load(tmp_path / "missing.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(jobfile.JobFileError, match="NUL bytes|not UTF-8"):
        jobfile.load(binary)
    big = tmp_path / "big.yaml"
    big.write_text("name: x\n" + "# pad\n" * 300_000)
    with pytest.raises(jobfile.JobFileError, match="larger than 1024 KiB"):
        jobfile.load(big)


def test_control_characters_in_keys_are_escaped_in_messages():
    with pytest.raises(jobfile.JobFileError) as info:
        jobfile.parse('"a\\u001b[31mb": 1\n"a\\u001b[31mb": 2\n', "job.yaml")
    assert "\x1b" not in str(info.value) and "\\x1b" in str(info.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400).map(lambda b: b.decode("utf-8", "replace")),
                 st.text(alphabet=st.sampled_from(list("abc: -[]{}?!&*|>'\"#\n\t,.01e%@`\\")), max_size=200),
                 st.lists(st.sampled_from(["name: x", "a:", "  - 1", "? x", "--- ", "!!binary x", "&a b", "*a",
                                           "k: [1, {a: b}]", "k: |", "  text", "\t", "x: !!python/name:os.system", ""]),
                          max_size=12).map("\n".join)))
def test_fuzz_any_text_is_a_mapping_or_a_job_file_error(text):
    try:
        data = jobfile.parse(text, "fuzz.yaml")
    except jobfile.JobFileError as exc:
        assert str(exc).startswith("fuzz.yaml: ")
    else:
        assert isinstance(data, dict) and all(isinstance(k, str) for k in data)


@pytest.mark.parametrize("content", [b"name: a\nname: b\n", b"\x00\x01\x02garbage", b"- [1, 2]\n", b"a: !!python/tuple [1]\n"])
def test_validate_exits_2_with_one_message_and_no_traceback(tmp_path, content, capsys):
    path = tmp_path / "job.yaml"
    path.write_bytes(content)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: ") and "Traceback" not in err


def test_validate_of_a_folder_and_of_a_missing_file_in_a_real_process(tmp_path):
    for target in (tmp_path, tmp_path / "nope.yaml"):
        proc = subprocess.run([sys.executable, "-m", "airtune.cli", "validate", str(target)], capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and str(target) in proc.stderr, proc.stderr


def test_a_name_read_as_a_number_says_to_quote_it(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("name: 12345\nbase_model: tiny-llama-dev\ndataset: [identity]\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "name: 12345 is not accepted: it was read as a number" in err and 'name: "12345"' in err
