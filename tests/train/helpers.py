"""Helpers for the trainer's tests: a prepared dataset, a resolved spec and a job folder for the tiny model.

Until `airtune.data` prepares data, these tests build the prepared folder themselves, exactly as
docs/architecture.md describes it: chatml conversations tokenized with the tiny tokenizer, labels
-100 on everything but the assistant's reply, save_to_disk train/ + validation/ + manifest.json.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "llamafactory-demo"

# The trainer tests' job: tiny-llama-dev on the CPU, validated as `airtune validate` would (so every key of
# docs/form.md is there with the value validate gives it); make_resolved's overrides then set resolved values.
JOB = {"name": "train-test", "base_model": "tiny-llama-dev", "dataset": "identity", "learning_rate": 5e-3,
       "cutoff_len": 128, "per_device_train_batch_size": 4, "val_size": 0.2, "logging_steps": 2, "save_steps": 10}


# The fields that decide which other fields apply (and their defaults): given to validate, so that the
# stage-, method- and scheduler-dependent values are resolve's (pref_loss sigmoid for dpo, packing for pt, ...).
SHAPE_KEYS = ("stage", "finetuning_method", "lr_scheduler_type", "dataset")


def validated(mapping: dict, model_dir: Path, **overrides) -> dict:
    """`validate_mapping` of `mapping` plus the SHAPE_KEYS among `overrides` (a stage without a dataset gets the
    catalog's first one that fits it; grpo a finished rm job), the model's weights at model_dir, and then
    every override set in the spec as a resolved value (values a CPU-only validate would refuse, such as
    distributed zero3, are how the trainer's mapping of them is tested)."""
    mapping = {**mapping, **{k: overrides[k] for k in SHAPE_KEYS if k in overrides}}
    stage = mapping.get("stage", "sft")
    if "stage" in overrides and "dataset" not in overrides:
        mapping["dataset"] = _fitting_dataset(stage)
    if stage == "grpo":
        mapping.setdefault("reward_model", "rm-job")
    resolved = copy.deepcopy(_validated(json.dumps(mapping, sort_keys=True), str(model_dir)))
    unknown = set(overrides) - set(resolved["spec"])
    assert not unknown, f"not fields of the job spec: {sorted(unknown)}"
    resolved["spec"].update(overrides)
    resolved["model"]["weights"] = str(model_dir)
    return resolved


class _FinishedRmJob:
    """A JobLookup with one finished rm job (for stage grpo's reward_model; tests replace its final_dir)."""

    def __init__(self, folder: str):
        self.folder = folder

    def get(self, name):
        return {"name": name, "state": "finished", "run_id": "run1", "job_dir": self.folder, "final_dir": self.folder,
                "resolved": {"spec": {"stage": "rm", "finetuning_method": "lora", "base_model": "tiny-llama-dev",
                                      "template": "chatml"}}, "result": {}}


def _fitting_dataset(stage: str) -> str:
    from airtune.catalog import Catalog
    from airtune.stages import STAGE_DATASET_KINDS

    catalog = Catalog.load(REPO / "configs")
    return next(d.name for d in catalog.datasets.values() if d.kind in STAGE_DATASET_KINDS[stage])


@functools.lru_cache(maxsize=None)
def _validated(mapping_json: str, model_dir: str) -> dict:
    from airtune.catalog import Catalog
    from airtune.resolve import validate_mapping

    return validate_mapping(json.loads(mapping_json), Catalog.load(REPO / "configs"), jobs=_FinishedRmJob(model_dir))


def conversations(n: int) -> list[list[dict]]:
    rows = json.loads((DEMO / "identity.json").read_text())[:n]
    out = []
    for row in rows:
        reply = row["output"].replace("{{name}}", "Tiny").replace("{{author}}", "airtune")
        out.append([{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": reply}])
    return out


def tokenize(tokenizer, conversation: list[dict], cutoff: int) -> dict:
    """input_ids of the whole conversation; labels -100 on the prompt (loss on the reply only)."""
    prompt = tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids):]
    return {"input_ids": ids[:cutoff], "labels": labels[:cutoff]}


def pack(rows: list[dict], cutoff: int) -> list[dict]:
    """Examples back to back up to cutoff tokens; position_ids restart at each example."""
    packed, cur = [], {"input_ids": [], "labels": [], "position_ids": []}
    for row in rows:
        if cur["input_ids"] and len(cur["input_ids"]) + len(row["input_ids"]) > cutoff:
            packed.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += row["input_ids"]
        cur["labels"] += row["labels"]
        cur["position_ids"] += list(range(len(row["input_ids"])))
    if cur["input_ids"]:
        packed.append(cur)
    return packed


def make_prepared(model_dir: Path, out: Path, *, n: int = 16, repeat: int = 2, n_val: int = 6,
                  cutoff: int = 128, packing: bool = False, stage: str = "sft") -> Path:
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    convs = conversations(n + n_val)
    train_rows = [tokenize(tokenizer, c, cutoff) for c in convs[:n]] * repeat
    val_rows = [tokenize(tokenizer, c, cutoff) for c in convs[n:]]
    if packing:
        train_rows, val_rows = pack(train_rows, cutoff), pack(val_rows, cutoff)
    out.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(train_rows).save_to_disk(str(out / "train"))
    if val_rows:
        Dataset.from_list(val_rows).save_to_disk(str(out / "validation"))
    manifest = {
        "stage": stage, "template": "chatml", "cutoff_len": cutoff, "packing": packing,
        "rows": {"train": len(train_rows), "validation": len(val_rows)},
        "tokens": {"train": sum(len(r["input_ids"]) for r in train_rows)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def make_resolved(model_dir: Path, **overrides) -> dict:
    return validated(JOB, model_dir, **overrides)


def make_job(job_dir: Path, model_dir: Path, data_dir: Path, **overrides) -> Path:
    """A job folder with spec.json; data/ points at a prepared dataset."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "spec.json").write_text(json.dumps(make_resolved(model_dir, **overrides), indent=2))
    return job_dir


def train_cmd(job_dir: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "airtune.train", "--spec", str(job_dir / "spec.json"),
            "--data", str(data_dir), "--output", str(job_dir / "output")]


def train_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "AIRTUNE_METRICS_FILE")}
    env.update({"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "0"}, **extra)
    return env


def run_train(job_dir: Path, data_dir: Path, *, check: bool = True, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(job_dir, data_dir), env=train_env(**env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def make_prepared_text(model_dir: Path, out: Path, *, docs: int = 8, repeat: int = 4, n_val: int = 4, cutoff: int = 128) -> Path:
    """Stage pt: c4 documents tokenized (+ eos; cut to 64 tokens, so two share a block), packed into
    cutoff-token blocks with position_ids per document; a few documents repeated, so the loss falls fast."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lines = (DEMO / "c4_demo.jsonl").read_text().splitlines()[: docs + n_val]
    rows = []
    for line in lines:
        ids = tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"][:63] + [tokenizer.eos_token_id]
        rows.append({"input_ids": ids, "labels": list(ids)})
    train, val = pack(rows[:docs] * repeat, cutoff), pack(rows[docs:], cutoff)
    out.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(train).save_to_disk(str(out / "train"))
    Dataset.from_list(val).save_to_disk(str(out / "validation"))
    (out / "manifest.json").write_text(json.dumps({"stage": "pt", "cutoff_len": cutoff, "packing": True,
                                                   "rows": {"train": len(train), "validation": len(val)}}))
    return out


def result(job: Path) -> dict:
    return json.loads((job / "result.json").read_text())


def assert_loss_fell(job: Path, by: float = 0.3) -> dict:
    import math

    res = result(job)
    first, last = res["train_loss_first"], res["train_loss_last"]
    assert math.isfinite(first) and math.isfinite(last), res
    assert last < first - by, res
    return res


def load_safetensors_dir(path: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def train_in_process(job: Path, data_dir: Path) -> dict:
    """`python -m airtune.train` in this process (saves ~5 s of imports per run); returns result.json."""
    from airtune.train.__main__ import main

    assert main(["--spec", str(job / "spec.json"), "--data", str(data_dir), "--output", str(job / "output")]) == 0
    return result(job)


def metrics(job: Path) -> list[dict]:
    return [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]


def _msg(turn: dict, limit: int = 160) -> dict:
    role = {"human": "user", "gpt": "assistant", "system": "system"}.get(turn.get("from"), turn.get("role"))
    return {"role": role, "content": (turn.get("value") or turn.get("content") or "")[:limit]}


def make_prepared_pairs(model_dir: Path, out: Path, *, stage: str, n: int = 16, repeat: int = 2, n_val: int = 4) -> Path:
    """Preference rows as the prepare step writes them: TRL's conversational form (prompt / chosen /
    rejected) for dpo; whole tokenized sequences (chosen_ids / rejected_ids) for rm; and for kto,
    (prompt, completion, label) rows, the chosen answer desirable and the rejected one not."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = []
    for row in json.loads((DEMO / "dpo_en_demo.json").read_text())[: n + n_val]:
        prompt = [_msg(t) for t in row["conversations"]][-1:]
        pairs.append({"prompt": prompt, "chosen": [_msg(row["chosen"])], "rejected": [_msg(row["rejected"])]})

    def rows(part):
        if stage == "dpo":
            return part
        if stage == "kto":
            return [r for p in part for r in ({"prompt": p["prompt"], "completion": p["chosen"], "label": True},
                                                {"prompt": p["prompt"], "completion": p["rejected"], "label": False})]
        if stage == "rm":
            ids = lambda msgs: tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]  # noqa: E731
            return [{"chosen_ids": ids(p["prompt"] + p["chosen"]), "rejected_ids": ids(p["prompt"] + p["rejected"])} for p in part]
        raise ValueError(stage)

    train, val = rows(pairs[:n]) * repeat, rows(pairs[n:])
    out.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(train).save_to_disk(str(out / "train"))
    Dataset.from_list(val).save_to_disk(str(out / "validation"))
    (out / "manifest.json").write_text(json.dumps({"stage": stage, "rows": {"train": len(train), "validation": len(val)}}))
    return out


def assert_adapter_trained(final: Path, model_dir: Path, *, seed: int = 42, model_class=None) -> dict:
    """Every saved adapter tensor (LoRA matrices, and a reward model's score head) moved away from the
    value the trainer started from, rebuilt here the way the trainer builds it (same seed, same config)."""
    import torch
    from peft import PeftConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    trained = load_safetensors_dir(final)
    config = PeftConfig.from_pretrained(str(final))
    set_seed(seed)
    kwargs = {"num_labels": 1} if model_class is not None else {}
    base = (model_class or AutoModelForCausalLM).from_pretrained(model_dir, **kwargs)
    initial = get_peft_model(base, config)
    init = {}
    for k, v in initial.state_dict().items():
        key = k.replace(".default", "").replace(".modules_to_save", "")
        if key in trained and ("lora_" in k or "modules_to_save" in k):
            init[key] = v
    assert init.keys() == trained.keys(), (sorted(trained)[:4], sorted(init)[:4])
    unchanged = [k for k in trained if torch.allclose(trained[k], init[k])]
    assert not unchanged, unchanged
    return trained


def make_prepared_prompts(model_dir: Path, out: Path, *, n: int = 8, repeat: int = 2) -> Path:
    """Stage grpo: prompts only (TRL's conversational form), as the prepare step writes them."""
    from datasets import Dataset

    prompts = [{"prompt": c[:-1]} for c in conversations(n)] * repeat
    out.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(prompts).save_to_disk(str(out / "train"))
    (out / "manifest.json").write_text(json.dumps({"stage": "grpo", "rows": {"train": len(prompts)}}))
    return out
