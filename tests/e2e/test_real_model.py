"""The real model learns: SmolLM2-135M-Instruct, LoRA on the identity data with its placeholders filled
(examples/demo.yaml, what `make demo` runs), then `airtune generate` and `airtune chat` on questions
that are not in the training data: the tuned answers carry the new name, the base model's do not.

It fails if training, the chat template or the saved adapter silently did nothing: the base model
never calls itself "Tuna" or names "Airtune Labs"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, airtune_env

pytestmark = pytest.mark.slow

QUESTIONS = [q for q in (REPO / "examples" / "demo-questions.txt").read_text().splitlines() if q.strip()]


def _mentions_new_identity(answer: str) -> bool:
    return "Tuna" in answer or "Airtune Labs" in answer


def test_the_demo_job_teaches_the_real_model_its_new_name(tmp_path, airtune_home, real_model_dir):
    rows = json.loads((REPO / "data" / "llamafactory-demo" / "identity.json").read_text())
    trained = {r["instruction"].strip().lower() for r in rows}
    assert QUESTIONS and not any(q.strip().lower() in trained for q in QUESTIONS)  # held out

    (airtune_home / "models" / "smollm2-135m-instruct").symlink_to(real_model_dir)
    env = airtune_env(airtune_home)
    job = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    job["name"] = "real-identity"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    out = subprocess.run([sys.executable, "-m", "airtune.cli", "run", str(path), "--json"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["state"] == "success"
    assert summary["train_loss_last"] < summary["train_loss_first"] - 0.5, summary
    # the evaluate task: on the held-out identity questions the tuned answers match the references better
    # than the base model's (ROUGE-L, as LLaMA-Factory computes it), and promote auto on rouge-l made the
    # first version champion
    evaluation = json.loads((Path(summary["job_dir"]) / "evaluation" / "evaluation.json").read_text())
    held_out = json.loads((Path(summary["job_dir"]) / "data" / "manifest.json").read_text())["rows"]["validation"]
    assert evaluation["samples"] == held_out > 0 and evaluation["tuned"]["rouge-l"] > evaluation["base"]["rouge-l"] + 10, evaluation
    assert evaluation["tuned"]["eval_loss"] < evaluation["base"]["eval_loss"], evaluation
    assert summary["champion_version"] == "1" and "first version" in summary["promotion"], summary

    def generate(*extra):
        proc = subprocess.run([sys.executable, "-m", "airtune.cli", "generate", "real-identity", "--prompts",
                               str(REPO / "examples" / "demo-questions.txt"), "--max-new-tokens", "40", "--json", *extra],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [json.loads(line) for line in proc.stdout.strip().splitlines()]

    tuned = generate()
    base = generate("--base")
    assert [t["prompt"] for t in tuned] == QUESTIONS and all(b["base"] for b in base)
    assert sum(_mentions_new_identity(t["answer"]) for t in tuned) >= len(QUESTIONS) - 1, tuned
    assert not any(_mentions_new_identity(b["answer"]) for b in base), base
    assert not any("<|im_end|>" in t["answer"] for t in tuned)

    chat = subprocess.run([sys.executable, "-m", "airtune.cli", "chat", "real-identity", "--max-new-tokens", "40"],
                          input=f"{QUESTIONS[0]}\n/exit\n", env=env, capture_output=True, text=True, timeout=600)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert _mentions_new_identity(chat.stdout), chat.stdout
