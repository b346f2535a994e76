"""`airtune generate` / `airtune chat` (airtune.inference) on real jobs: the tiny model trained for a few
steps with LoRA (at a high learning rate), full and freeze on `identity`, registered in MLflow by the
register task's own code (`tracking.finish_run`), then loaded back and asked questions.

MLflow is a local SQLite store here (what the embedded default's tasks use); the test that downloads a
version's files through a real `mlflow server` is marked slow, as the other server tests are."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from airtune import cli, inference, paths, tracking
from tracking.conftest import airtune, prepared, sqlite_server  # noqa: F401  (fixtures of the MLflow tests)
from tracking.helpers import make_job, make_resolved
from train.helpers import load_safetensors_dir, train_in_process

QUESTION = "Who are you?"
NO_LORA = {"lora_rank": None, "lora_alpha": None, "lora_dropout": None}
JOBS = {  # 32 rows, batch 4: 4 steps a half epoch; the full job trains 8, enough to answer and stop like `identity`
    "talk-lora": {"finetuning_method": "lora", "learning_rate": 2e-2, "num_train_epochs": 0.5},
    "talk-full": {"finetuning_method": "full", "learning_rate": 1e-3, "num_train_epochs": 1.0, **NO_LORA},
    "talk-freeze": {"finetuning_method": "freeze", "learning_rate": 2e-3, "freeze_trainable_layers": 1, "num_train_epochs": 0.5,
                    **NO_LORA},
}


def _env(home: Path, uri: str | None = None) -> dict[str, str]:
    return {"AIRTUNE_HOME": str(home), "AIRTUNE_WORKSPACE": str(home / "workspace"),
            "MLFLOW_TRACKING_URI": uri or f"sqlite:///{home / 'mlflow.db'}",
            "AIRTUNE_MLFLOW_ARTIFACT_ROOT": str(home / "artifacts"), "MLFLOW_DISABLE_TELEMETRY": "true"}


def register(job: Path, dag_run_id: str) -> dict:
    """The register task on a trained job folder, in a fresh MLflow run of that DAG run."""
    resolved = json.loads((job / "spec.json").read_text())
    run_id = tracking.ensure_run(resolved, "airtune_finetune", dag_run_id)
    return tracking.finish_run(job, resolved, run_id)


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir, prepared):  # noqa: F811
    """AIRTUNE_HOME with the three jobs trained and registered (version 1 each)."""
    home = tmp_path_factory.mktemp("talk-home")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in _env(home).items():
            mp.setenv(k, v)
        for name, overrides in JOBS.items():
            resolved = make_resolved(tiny_model_dir, name, save_steps=100, **overrides)
            run_id = tracking.ensure_run(resolved, "airtune_finetune", "manual__1")
            job = make_job(home / "workspace", resolved, "manual__1", run_id)
            train_in_process(job, prepared)
            tracking.finish_run(job, json.loads((job / "spec.json").read_text()), run_id)
    return home


@pytest.fixture(autouse=True)
def env(home, monkeypatch):
    """The jobs' MLflow and workspace; the environment as it was afterwards (the CLI applies the embedded default's)."""
    saved = dict(os.environ)
    for k, v in _env(home).items():
        monkeypatch.setenv(k, v)
    yield
    os.environ.clear()
    os.environ.update(saved)


def job_dir(name: str, run: str = "manual__1") -> Path:
    return paths.job_dir(name, run)


def generate(capsys, *args: str) -> list[dict]:
    """`airtune generate ... --json` in this process: one object a prompt."""
    assert cli.main(["generate", *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def logits(loaded, text: str = QUESTION):
    import torch

    inputs = inference._inputs(loaded, [{"role": "user", "content": text}])
    with torch.no_grad():
        return loaded.model(**inputs).logits


def test_lora_adapter_changes_the_answer(capsys):
    [tuned] = generate(capsys, "talk-lora", "--prompt", QUESTION, "--max-new-tokens", "24")
    [base] = generate(capsys, "talk-lora", "--prompt", QUESTION, "--max-new-tokens", "24", "--base")
    assert tuned["answer"] and base["answer"]
    assert tuned["answer"] != base["answer"]
    assert (tuned["version"], tuned["base"], base["base"]) == ("1", False, True)
    assert tuned["prompt"] == QUESTION and "<|im_end|>" not in tuned["answer"] + base["answer"]
    # the adapter is applied on the base weights, not merged on disk; the base is the job's base weights
    loaded = inference.load("talk-lora")
    assert type(loaded.model).__name__ == "PeftModelForCausalLM"
    assert "LoRA adapter" in loaded.description and "job folder" in loaded.description
    assert not list(job_dir("talk-lora").glob("output/merged*"))
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(str(job_dir("talk-lora") / "output" / "final")).peft_type == "LORA"


@pytest.mark.parametrize("name", ["talk-full", "talk-freeze"])
def test_full_and_freeze_load_their_own_weights(name, tiny_model_dir):
    import torch

    tuned, base = inference.load(name), inference.load(name, base=True)
    assert type(tuned.model).__name__ == "LlamaForCausalLM"
    saved = load_safetensors_dir(job_dir(name) / "output" / "final")
    state = tuned.model.state_dict()
    assert saved.keys() <= state.keys()
    for key, tensor in saved.items():
        assert torch.equal(state[key], tensor), key
    base_state, initial = base.model.state_dict(), load_safetensors_dir(tiny_model_dir)
    assert all(torch.equal(base_state[k], v) for k, v in initial.items())
    changed = {k for k, v in initial.items() if not torch.equal(state[k], v)}
    if name == "talk-freeze":  # only the last of the 4 layers trained
        assert changed and all(".layers.3." in k for k in changed)
    else:
        assert changed == set(initial)
    assert not torch.allclose(logits(tuned), logits(base))
    assert tuned.model.dtype == torch.float32 and tuned.device == inference.default_device()


def test_generation_stops_at_the_end_of_turn_token(capsys):
    import torch

    loaded = inference.load("talk-full")
    im_end = loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert loaded.turn_end == "<|im_end|>" and im_end in loaded.stop_ids
    out = inference.generate(loaded, QUESTION, max_new_tokens=64)
    assert out["stopped"] and out["tokens"] < 64
    assert out["answer"] and "<|im_end|>" not in out["answer"] and "<|im_start|>" not in out["answer"]
    # the token it stopped at is <|im_end|>: greedy decoding without stop tokens writes it at that place
    inputs = inference._inputs(loaded, [{"role": "user", "content": QUESTION}])
    with torch.no_grad():
        raw = loaded.model.generate(**inputs, max_new_tokens=out["tokens"], min_new_tokens=out["tokens"], do_sample=False,
                                    eos_token_id=None, pad_token_id=loaded.tokenizer.pad_token_id)
    assert raw[0, -1].item() == im_end
    # the CLI's answer ends there too
    [row] = generate(capsys, "talk-full", "--prompt", QUESTION, "--max-new-tokens", "64")
    assert row["answer"] == out["answer"] and row["stopped"] and row["tokens"] == out["tokens"]


def test_the_end_of_turn_token_is_found_from_the_template(tiny_model_dir):
    """Found by rendering the template, not taken from the tokenizer's EOS: here the EOS is another token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.eos_token = "<|endoftext|>"
    ids, turn_end = inference.stop_ids(tok)
    assert turn_end == "<|im_end|>"
    assert ids == [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    # alpaca closes an answer with the EOS it is given: that is the turn's end, and the only stop token
    tok.chat_template = (paths.repo_root() / "configs" / "templates" / "alpaca.jinja").read_text()
    assert inference.stop_ids(tok) == ([tok.convert_tokens_to_ids("<|endoftext|>")], "<|endoftext|>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # no control token at all: EOS alone
    assert inference.stop_ids(tok) == ([tok.convert_tokens_to_ids("<|endoftext|>")], None)


def test_json_output_and_prompts_files(capsys, tmp_path):
    lines = tmp_path / "prompts.txt"
    lines.write_text(f"{QUESTION}\n\nWhat can you do?\n")
    listed = tmp_path / "prompts.json"
    listed.write_text(json.dumps([QUESTION, "What can you do?"]))
    rows = generate(capsys, "talk-full", "--prompts", str(lines), "--max-new-tokens", "16")
    assert [r["prompt"] for r in rows] == [QUESTION, "What can you do?"]
    assert all({"prompt", "answer", "version", "base"} <= r.keys() and r["version"] == "1" and r["base"] is False for r in rows)
    assert generate(capsys, "talk-full", "--prompts", str(listed), "--max-new-tokens", "16") == rows  # greedy: the same
    # without --json: the answer alone on stdout, what was loaded on stderr
    assert cli.main(["generate", "talk-full", "--prompt", QUESTION, "--max-new-tokens", "16"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == rows[0]["answer"]
    assert "talk-full version 1" in out.err


def test_which_version(capsys, home):
    """Default: alias champion, else best, else the newest; --version N explicitly."""
    from mlflow.exceptions import MlflowException

    name = "talk-lora"
    again = job_dir(name, "manual__2")
    shutil.copytree(job_dir(name), again)  # a second DAG run of the job (same files)
    spec = json.loads((again / "spec.json").read_text())
    spec["tracking"]["run_id"] = "manual__2"
    (again / "spec.json").write_text(json.dumps(spec))
    c = tracking.client()
    try:
        assert register(again, "manual__2")["model_version"] == "2"
        assert inference.find_version(name).version == "2"  # best moved to the new version (same eval loss)
        assert inference.find_version(name, 1).version == "1"
        c.set_registered_model_alias(name, "champion", "1")
        assert inference.find_version(name).version == "1"
        c.delete_registered_model_alias(name, "champion")
        c.delete_registered_model_alias(name, "best")
        assert inference.find_version(name).version == "2"  # the newest
        [row] = generate(capsys, name, "--prompt", QUESTION, "--version", "1", "--max-new-tokens", "4")
        assert row["version"] == "1"
        assert cli.main(["generate", name, "--prompt", QUESTION, "--version", "7"]) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"airtune generate: job {name!r} has no version 7 (its versions: 1, 2)"
    finally:
        try:
            c.set_registered_model_alias(name, "best", "1")
        except MlflowException:
            pass


def test_files_from_the_registry_when_the_job_folder_is_gone(capsys, home):
    """The version's artefacts are downloaded into $AIRTUNE_HOME/cache/models/<name>/<version>, once;
    with those gone too, one line says so."""
    [before] = generate(capsys, "talk-freeze", "--prompt", QUESTION, "--max-new-tokens", "12")
    folder = job_dir("talk-freeze")
    moved = folder.with_name("moved-away")
    folder.rename(moved)
    try:
        loaded = inference.load("talk-freeze")
        cache = home / "cache" / "models" / "talk-freeze" / "1"
        assert f"into {cache}" in loaded.description
        assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "spec.json"} <= {p.name for p in cache.iterdir()}
        assert inference.generate(loaded, QUESTION, max_new_tokens=12)["answer"] == before["answer"]
        assert f"cache {cache}" in inference.load("talk-freeze").description  # not downloaded twice
        shutil.rmtree(cache)
        store = home / "artifacts"
        hidden = store.with_name("artifacts-hidden")
        store.rename(hidden)
        try:
            assert cli.main(["generate", "talk-freeze", "--prompt", QUESTION]) == 1
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1
            assert err.startswith(f"airtune generate: talk-freeze version 1: {folder / 'output' / 'final'} is gone, and ")
        finally:
            hidden.rename(store)
    finally:
        moved.rename(folder)


def test_base_of_a_job_with_a_parent_is_the_parent_model(home):
    """A job continuing from another one (parent_job): --base loads the parent's model."""
    import torch

    child = job_dir("talk-child")
    shutil.copytree(job_dir("talk-lora"), child)
    for spec_file in (child / "spec.json", child / "output" / "final" / "spec.json"):
        spec = json.loads(spec_file.read_text())
        spec["spec"].update(name="talk-child", parent_job="talk-full")
        spec["parent"] = {"name": "talk-full", "final_dir": str(job_dir("talk-full") / "output" / "final"), "adapter": False,
                          "stage": "sft", "finetuning_method": "full", "base_model": "tiny-llama-dev", "template": "chatml"}
        spec_file.write_text(json.dumps(spec))
    register(child, "manual__1")
    base = inference.load("talk-child", base=True)
    assert "parent job 'talk-full'" in base.description
    parent = load_safetensors_dir(job_dir("talk-full") / "output" / "final")
    state = base.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in parent.items())


def test_chat_streams_and_keeps_the_conversation(capsys, monkeypatch):
    loaded = inference.load("talk-full")
    answer = inference.generate(loaded, QUESTION, max_new_tokens=32)["answer"]
    pieces = list(inference.stream(loaded, QUESTION, max_new_tokens=32))
    assert len(pieces) > 1 and "".join(pieces).strip() == answer  # streamed piece by piece, the same answer
    chat = inference.Chat(loaded, max_new_tokens=32)
    assert "".join(chat.send(QUESTION)).strip() == answer
    "".join(chat.send("And what can you do?"))
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
    assert chat.history[1]["content"] == answer
    chat.reset()
    assert chat.history == []

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\n/reset\n\n{QUESTION}\n/exit\nnot read\n"))
    assert cli.main(["chat", "talk-full", "--max-new-tokens", "32"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [answer, answer]
    assert "[conversation reset]" in out.err and "/exit" in out.err
    monkeypatch.setattr(sys, "stdin", io.StringIO(QUESTION + "\n"))  # Ctrl-D (end of input) ends it too
    assert cli.main(["chat", "talk-full", "--max-new-tokens", "8"]) == 0


def test_an_unknown_job_is_one_line(home):
    """As a user runs it: exit 1, one line on stderr naming the job, no traceback."""
    env = _env(home)
    proc = airtune(home, "generate", "no-such-job", "--prompt", QUESTION, **{k: v for k, v in env.items() if k != "AIRTUNE_HOME"})
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"airtune generate: no job named 'no-such-job' (no registered model of that name in MLflow at {env['MLFLOW_TRACKING_URI']})"]


@pytest.mark.slow
def test_through_a_tracking_server(sqlite_server, home, capsys, monkeypatch):  # noqa: F811
    """Registered through a real `mlflow server` (artefacts proxied), the files downloaded from it."""
    folder = job_dir("talk-lora")
    [local] = generate(capsys, "talk-lora", "--prompt", QUESTION, "--max-new-tokens", "12")  # the local store's
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_server.url)
    assert register(folder, "manual__1")["model_version"] == "1"
    capsys.readouterr()  # MLflow's "View run ... at" line on ending the run
    moved = folder.with_name("moved-away")
    folder.rename(moved)
    try:
        [remote] = generate(capsys, "talk-lora", "--prompt", QUESTION, "--max-new-tokens", "12")
    finally:
        moved.rename(folder)
    assert remote["answer"] == local["answer"]
    assert (home / "cache" / "models" / "talk-lora" / "1" / "adapter_config.json").is_file()
