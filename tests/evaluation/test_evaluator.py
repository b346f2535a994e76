"""The evaluator (`python -m airtune.evaluate`): a tiny LoRA job prepared and trained for real, then the
evaluator run as the evaluate task runs it (a child process). The tiny model is random: these tests check
the files, the keys, the numbers against independent computations (the trainer's own eval_loss and
reward accuracy, a benchmark whose answer key is built from the model's own choices), never quality.
The real model's test (slow): after a short identity run, the tuned answers beat the base's on ROUGE-L."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airtune.launch.command import evaluate_command
from train.helpers import DEMO, REPO, make_resolved, metrics, result, train_env, train_in_process

FILL = {"name": "Tiny", "author": "airtune"}
IDENTITY = {"name": "identity", "format": "alpaca", "kind": "sft", "files": [str(DEMO / "identity.json")],
            "columns": {}, "tags": {}, "fill": FILL}
PAIRS = {"name": "dpo_en_demo", "format": "sharegpt", "kind": "preference", "files": [str(DEMO / "dpo_en_demo.json")],
         "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}, "tags": {}}
EVAL_OUT = {"evaluation.json", "predictions.jsonl"}


def make_job(root: Path, model_dir: Path, datasets: list[dict], *, model: dict | None = None, **spec) -> tuple[Path, dict]:
    """A job folder: spec.json (the resolved spec) and data/ prepared by airtune.data.prepare. `model`: fields of
    resolved.model to change (a model other than the tiny one); the template is spec's `template`."""
    from airtune.data import prepare

    resolved = make_resolved(model_dir, **spec)
    resolved["model"].update(model or {})
    name = resolved["spec"]["template"]
    resolved["template"] = {"name": name, "path": str(REPO / "configs" / "templates" / f"{name}.jinja")}
    resolved["datasets"] = datasets
    resolved["eval_datasets"] = []
    resolved["benchmarks"] = []
    root.mkdir(parents=True, exist_ok=True)
    prepare(resolved, root / "data", log=lambda m: None)
    write_spec(root, resolved)
    return root, resolved


def write_spec(job: Path, resolved: dict) -> None:
    (job / "spec.json").write_text(json.dumps(resolved, indent=2))


def run_evaluator(job: Path, *, model: Path | None = None, output: Path | None = None, check: bool = True,
                  extra: tuple[str, ...] = (), timeout: int = 600) -> subprocess.CompletedProcess:
    resolved = json.loads((job / "spec.json").read_text())
    cmd = evaluate_command(resolved, spec_path=job / "spec.json", data_dir=job / "data",
                           model_dir=model or job / "output" / "final", output_dir=output or job / "evaluation")
    cmd += list(extra)
    proc = subprocess.run(cmd, env=train_env(), capture_output=True, text=True, timeout=timeout, cwd=job)
    if check and proc.returncode != 0:
        raise AssertionError(f"evaluator failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def read_output(folder: Path) -> tuple[dict, list[dict]]:
    evaluation = json.loads((folder / "evaluation.json").read_text())
    predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    return evaluation, predictions


# -- independent computations (plain transformers/peft, no airtune code) --------------------------------

def load_lm(model_dir: Path, final: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(final)
    tok.chat_template = (REPO / "configs" / "templates" / "chatml.jinja").read_text()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), str(final))
    return model.eval(), tok


def letters_chosen(model, tok, questions: list[dict]) -> list[str]:
    """The letter each question gets: the next token after the user turn, "X" or " X", most likely."""
    import torch

    out = []
    for q in questions:
        text = ("The following are multiple choice questions (with answers) about "
                f"{q['subject'].replace('_', ' ')}.\n\n{q['question']}"
                + "".join(f"\n{x}. {q[x]}" for x in "ABCD") + "\nAnswer:")
        prompt = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
        score = {x: torch.logsumexp(logp[sorted({tok.encode(x, add_special_tokens=False)[-1],
                                                 tok.encode(" " + x, add_special_tokens=False)[-1]})], 0).item()
                 for x in "ABCD"}
        out.append(max("ABCD", key=lambda x: (score[x], -ord(x))))
    return out


QUESTIONS = [
    {"subject": "geography", "question": "Which is the largest ocean?", "A": "Atlantic", "B": "Pacific", "C": "Indian", "D": "Arctic"},
    {"subject": "geography", "question": "Which river flows through Cairo?", "A": "Nile", "B": "Danube", "C": "Amazon", "D": "Volga"},
    {"subject": "geography", "question": "Mount Everest lies in which range?", "A": "Alps", "B": "Andes", "C": "Himalaya", "D": "Urals"},
    {"subject": "geography", "question": "Which desert is the largest hot desert?", "A": "Gobi", "B": "Kalahari", "C": "Sahara", "D": "Mojave"},
    {"subject": "arithmetic", "question": "What is 2 + 2?", "A": "3", "B": "4", "C": "5", "D": "22"},
    {"subject": "arithmetic", "question": "What is 10 / 2?", "A": "2", "B": "8", "C": "12", "D": "5"},
    {"subject": "arithmetic", "question": "What is 3 x 3?", "A": "9", "B": "6", "C": "33", "D": "1"},
    {"subject": "arithmetic", "question": "What is 7 - 7?", "A": "14", "B": "1", "C": "0", "D": "7"},
]


# -- the sft job -------------------------------------------------------------------------------------------

# 45 rows: 36 train (9 steps an epoch), 9 validation (batches of 4, 4 and 1: the trainer weights them by rows)
SFT = dict(stage="sft", max_samples=45, val_size=0.2, num_train_epochs=2, save_steps=100, logging_steps=4,
           learning_rate=1e-2, eval_max_samples=6)


@pytest.fixture(scope="module")
def sft_job(tiny_model_dir, tmp_path_factory):
    """A tiny sft LoRA job, trained (36 rows, 2 epochs: 18 steps), with a benchmark whose answers are set from the
    tuned and base models' own choices, so that the expected accuracies are known; then the evaluator, run once
    into an output folder that holds a stale file, with the tuned weights also given as the "champion" (as the
    pipeline gives the registered champion): scored on their own, they must give the tuned figures."""
    root = tmp_path_factory.mktemp("eval") / "sft"
    job, resolved = make_job(root, tiny_model_dir, [IDENTITY], **SFT)
    train_in_process(job, job / "data")
    final = job / "output" / "final"

    model, tok = load_lm(tiny_model_dir, final)
    tuned = letters_chosen(model, tok, QUESTIONS)
    with model.disable_adapter():
        base = letters_chosen(model, tok, QUESTIONS)
    other = {x: "ABCD"[("ABCD".index(x) + 1) % 4] for x in "ABCD"}
    # geography: the tuned model right on 3 of 4; arithmetic: on 1 of 4
    right = [True, True, True, False, True, False, False, False]
    answers = [t if r else other[t] for t, r in zip(tuned, right)]
    rows = [{**q, "answer": a} for q, a in zip(QUESTIONS, answers)]
    bench = root / "quiz.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    resolved["benchmarks"] = [{"name": "quiz", "files": [str(bench)], "lang": "en"}]
    write_spec(job, resolved)

    out = job / "evaluation"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    t0 = time.monotonic()
    proc = run_evaluator(job, extra=("--champion", str(final), "--champion-version", "3"))
    wall = time.monotonic() - t0
    (root / "evaluator-stdout.txt").write_text(proc.stdout + f"\nwall {wall:.1f} s\n")
    base_right = [b == a for b, a in zip(base, answers)]
    return {"job": job, "proc": proc, "wall": wall, "base_right": base_right, "right": right}


def test_output_files_and_keys(sft_job):
    job, proc = sft_job["job"], sft_job["proc"]
    out = job / "evaluation"
    assert {p.name for p in out.iterdir()} == EVAL_OUT  # the stale file went with the old folder
    assert not [p for p in job.iterdir() if p.name.startswith(".evaluation")]  # no temporary folder left
    evaluation, predictions = read_output(out)
    assert evaluation["format"] == 1 and evaluation["stage"] == "sft"
    assert evaluation["samples"] == 6 == len(predictions)  # eval_max_samples of the 9 validation examples
    assert evaluation["base_model"].startswith("base weights ") and "adapter switched off" in evaluation["base_model"]
    assert set(evaluation["seconds"]) == {"base", "tuned", "champion", "total"}
    assert evaluation["seconds"]["total"] >= evaluation["seconds"]["base"] + evaluation["seconds"]["tuned"] > 0
    keys = {"eval_loss", "perplexity", "rouge-1", "rouge-2", "rouge-l", "bleu-4", "benchmark:quiz",
            "benchmark:quiz/geography", "benchmark:quiz/arithmetic"}
    for which in ("base", "tuned", "champion"):
        m = evaluation[which]
        assert set(m) == keys, m
        assert math.isclose(m["perplexity"], math.exp(m["eval_loss"]), rel_tol=1e-9)
        assert all(0 <= m[k] <= 100 for k in keys - {"eval_loss", "perplexity"})
    prompts = [json.loads(line) for line in (job / "data" / "eval_prompts.jsonl").read_text().splitlines()][:6]
    for row, p in zip(predictions, prompts):
        assert set(row) == {"prompt", "reference", "base", "tuned", "champion", "base_scores", "tuned_scores",
                            "champion_scores"}
        assert row["prompt"] == p["messages"][-1]["content"] and row["reference"] == p["reference"]
        assert set(row["base_scores"]) == set(row["tuned_scores"]) == {"rouge-1", "rouge-2", "rouge-l", "bleu-4"}
        assert "<|im_end|>" not in row["tuned"]
    # the corpus scores are the means of the per-prompt scores
    for which in ("base", "tuned"):
        mean = sum(r[f"{which}_scores"]["rouge-l"] for r in predictions) / len(predictions)
        assert math.isclose(evaluation[which]["rouge-l"], mean, abs_tol=1e-9)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines and all(line.startswith("[airtune] ") for line in lines), proc.stdout
    assert "[airtune] evaluate: base: 6/6 prompts" in lines and "[airtune] evaluate: tuned: 6/6 prompts" in lines


def test_the_champion_is_scored_like_the_tuned_model(sft_job):
    """The same weights loaded on their own (the champion's path) and as the shared-base adapter: the same figures."""
    evaluation, predictions = read_output(sft_job["job"] / "evaluation")
    assert evaluation["champion_version"] == "3"
    for key, value in evaluation["tuned"].items():
        assert evaluation["champion"][key] == pytest.approx(value, abs=1e-5), key
    assert [r["champion"] for r in predictions] == [r["tuned"] for r in predictions]


def test_base_and_tuned_answers_differ_after_training(sft_job):
    _, predictions = read_output(sft_job["job"] / "evaluation")
    assert sum(r["base"] != r["tuned"] for r in predictions) >= len(predictions) // 2, predictions


def test_eval_loss_is_the_trainers_final_eval_loss(sft_job):
    job = sft_job["job"]
    evaluation, _ = read_output(job / "evaluation")
    trainer = result(job)["eval_loss"]
    assert trainer is not None
    assert abs(evaluation["tuned"]["eval_loss"] - trainer) < 1e-4, (evaluation["tuned"]["eval_loss"], trainer)
    # the trainer's first evaluation is not logged; the base (LoRA's B = 0 at the start) must be worse here
    assert evaluation["base"]["eval_loss"] > evaluation["tuned"]["eval_loss"]


def test_benchmark_accuracy(sft_job):
    evaluation, _ = read_output(sft_job["job"] / "evaluation")
    t = evaluation["tuned"]
    assert (t["benchmark:quiz/geography"], t["benchmark:quiz/arithmetic"], t["benchmark:quiz"]) == (75.0, 25.0, 50.0)
    right = sft_job["base_right"]
    b = evaluation["base"]
    assert b["benchmark:quiz/geography"] == 100 * sum(right[:4]) / 4
    assert b["benchmark:quiz/arithmetic"] == 100 * sum(right[4:]) / 4
    assert b["benchmark:quiz"] == 100 * sum(right) / 8


def test_a_failed_run_leaves_the_results_in_place(sft_job, tmp_path):
    """A configuration error (here: no weights in --model): one line, exit 78, no traceback, the earlier results untouched."""
    job = sft_job["job"]
    before = {p.name: p.read_bytes() for p in (job / "evaluation").iterdir()}
    (tmp_path / "empty").mkdir()
    proc = run_evaluator(job, model=tmp_path / "empty", check=False)
    assert proc.returncode == 78, proc.stderr[-3000:]
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("[airtune] configuration error: --model "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in (job / "evaluation").iterdir()} == before
    # a bad benchmark file is one too, found before any weights are loaded
    resolved = json.loads((job / "spec.json").read_text())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "A": "a"}\n')
    resolved["benchmarks"] = [{"name": "broken", "files": [str(bad)], "lang": "en"}]
    other = tmp_path / "job"
    other.mkdir()
    write_spec(other, resolved)
    (other / "data").symlink_to(job / "data")
    proc = run_evaluator(other, model=job / "output" / "final", check=False)
    assert proc.returncode == 78 and "configuration error: benchmark 'broken': " in proc.stderr, proc.stderr[-3000:]
    assert not (other / "evaluation").exists()


def test_evaluate_command(tiny_model_dir):
    resolved = make_resolved(tiny_model_dir, gpus_per_node=4)
    resolved["runtime"].update(gpus_per_node=4, world_size=4)
    cmd = evaluate_command(resolved, spec_path="/job/spec.json", data_dir="/job/data", model_dir="/job/output/final",
                           output_dir="/job/evaluation", python="python3")
    assert cmd == ["python3", "-m", "airtune.evaluate", "--spec", "/job/spec.json", "--data", "/job/data",
                   "--model", "/job/output/final", "--output", "/job/evaluation"]  # one process, no torchrun
    assert evaluate_command(resolved, spec_path="s", data_dir="d", model_dir="m", output_dir="o")[0] == sys.executable


# -- stages rm and dpo ------------------------------------------------------------------------------------

PREF = dict(max_samples=20, val_size=0.2, num_train_epochs=2, save_steps=100, logging_steps=2, cutoff_len=128)


def test_rm_reward_accuracy(tiny_model_dir, tmp_path):
    """rm: reward_accuracy of the tuned reward model on the 4 validation pairs, equal to the accuracy TRL's
    RewardTrainer logs for the same pairs (one evaluation batch); the base gets none."""
    job, _ = make_job(tmp_path / "rm", tiny_model_dir, [PAIRS], stage="rm", **PREF)
    train_in_process(job, job / "data")
    run_evaluator(job)
    evaluation, predictions = read_output(job / "evaluation")
    assert evaluation["stage"] == "rm" and evaluation["pairs"] == 4 and evaluation["samples"] == 0 and predictions == []
    assert evaluation["base"] == {} and set(evaluation["tuned"]) == {"reward_accuracy"}
    logged = [r for r in metrics(job) if "eval_accuracy" in r]
    assert logged, metrics(job)
    assert evaluation["tuned"]["reward_accuracy"] == pytest.approx(100 * logged[-1]["eval_accuracy"])


def test_dpo_rewards_are_the_tuned_models(tiny_model_dir, tmp_path):
    """dpo: reward_accuracy and reward_margin for the tuned model only (the base is DPO's reference); answers to
    the validation pairs' prompts scored against their chosen answers, for both."""
    job, _ = make_job(tmp_path / "dpo", tiny_model_dir, [PAIRS], stage="dpo", eval_max_samples=2, **PREF)
    train_in_process(job, job / "data")
    run_evaluator(job)
    evaluation, predictions = read_output(job / "evaluation")
    assert evaluation["pairs"] == 4 and evaluation["samples"] == 2 == len(predictions)
    assert set(evaluation["tuned"]) == {"reward_accuracy", "reward_margin", "rouge-1", "rouge-2", "rouge-l", "bleu-4"}
    assert set(evaluation["base"]) == {"rouge-1", "rouge-2", "rouge-l", "bleu-4"}
    assert evaluation["tuned"]["reward_accuracy"] in (0, 25, 50, 75, 100)
    assert evaluation["tuned"]["reward_margin"] != 0


# -- the real model (slow) --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~4 min on a quiet 2-core machine; 14 min measured on a shared, loaded one
def test_the_real_model_tuned_beats_base_on_rouge_l(real_model_dir, tmp_path):
    """SmolLM2-135M-Instruct after a short LoRA run on the identity data (examples/demo.yaml's settings, 2 epochs:
    82 rows, 22 steps): on the 10 held-out identity questions the tuned answers beat the base's on ROUGE-L."""
    tuna = {**IDENTITY, "name": "identity_tuna", "fill": {"name": "Tuna", "author": "Airtune Labs"}}
    job, resolved = make_job(tmp_path / "real", real_model_dir, [tuna], stage="sft", template="smollm2",
                             base_model="smollm2-135m-instruct", learning_rate=1e-3, num_train_epochs=2, cutoff_len=384,
                             per_device_train_batch_size=8, val_size=0.1, logging_steps=5, save_steps=100,
                             lora_rank=16, lora_alpha=32.0, lora_dropout=0.0, eval_max_samples=50,
                             model={"name": "smollm2-135m-instruct", "kind": "instruct", "template": "smollm2"})
    t0 = time.monotonic()
    train_in_process(job, job / "data")
    trained = time.monotonic() - t0
    t0 = time.monotonic()
    proc = run_evaluator(job, timeout=1200)
    wall = time.monotonic() - t0
    evaluation, predictions = read_output(job / "evaluation")
    print(proc.stdout + f"\ntraining {trained:.0f} s, evaluator {wall:.0f} s (wall) for {evaluation['samples']} prompts")
    assert evaluation["samples"] == 10 == len(predictions)
    base, tuned = evaluation["base"], evaluation["tuned"]
    assert tuned["rouge-l"] > base["rouge-l"], (base, tuned, predictions)
    assert tuned["eval_loss"] < base["eval_loss"]
    assert abs(tuned["eval_loss"] - result(job)["eval_loss"]) < 1e-4
    assert sum("Tuna" in r["tuned"] for r in predictions) > sum("Tuna" in r["base"] for r in predictions)


def test_batched_answers_equal_one_at_a_time(sft_job, tiny_model_dir, monkeypatch):
    """Several prompts or questions per pass, left-padded (the evaluator's way), give what one at a time gives."""
    import airtune.evaluate as ev
    from airtune import inference
    from airtune.evaluation.benchmarks import Question

    job = sft_job["job"]
    resolved = json.loads((job / "spec.json").read_text())
    final = job / "output" / "final"
    tok = inference.load_tokenizer([final], resolved)
    model = inference.load_weights(final, resolved).eval()
    run = ev.Run(ev.read_inputs(resolved, job / "data", final, say=lambda m: None), tok, device="cpu", say=lambda m: None)
    prompts = ev._read_prompts(job / "data", "sft", None)[0]
    questions = [Question(q["subject"], q["question"], tuple(q[x] for x in "ABCD"), "A") for q in QUESTIONS]

    def both():
        return (ev.generate_answers(run.loaded(model, "tuned"), prompts, which="tuned", say=lambda m: None),
                ev.benchmark_answers(model, tok, questions, lang="en", device="cpu", which="tuned", name="quiz",
                                     say=lambda m: None))

    monkeypatch.setattr(ev, "_batch", lambda device: 1)
    one = both()
    monkeypatch.setattr(ev, "_batch", lambda device: 4)
    assert both() == one
    assert len(set(len(tok(p.messages[-1]["content"])["input_ids"]) for p in prompts)) > 1  # padding did happen
