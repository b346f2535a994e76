"""What the register task writes for people: the curves (PNG), the run's summary and each model
version's README. Plain functions of the trainer's records; no MLflow calls here."""

from __future__ import annotations

import time
from pathlib import Path

from airtune.resolved import as_resolved


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = {}
    for r in records:  # the newest record of a step wins (a resumed attempt trains its steps again)
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and "step" in r:
            points[int(r["step"])] = float(v)
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def curves_png(records: list[dict], out: Path, *, title: str = "") -> Path | None:
    """Training loss (and eval loss) over steps, and the learning rate below it. None without records."""
    steps, loss = _series(records, "loss")
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display in a task or a pod
    import matplotlib.pyplot as plt

    eval_steps, eval_loss = _series(records, "eval_loss")
    lr_steps, lr = _series(records, "learning_rate")
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[2, 1])
    ax1.plot(steps, loss, label="training loss", color="tab:blue")
    if eval_steps:
        ax1.plot(eval_steps, eval_loss, "o-", label="eval loss", color="tab:orange")
    ax1.set_ylabel("loss")
    ax1.grid(alpha=0.3)
    ax1.legend()
    if title:
        ax1.set_title(title)
    if lr_steps:
        ax2.plot(lr_steps, lr, color="tab:green")
    ax2.set_ylabel("learning rate")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _fmt(v, digits: int = 4) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return "—" if v is None else str(v)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def summary_markdown(resolved, result: dict, records: list[dict], lineage: dict, registered: dict, run_start_ms: int | None) -> str:
    """The run's short summary: final metrics, steps, tokens, duration, the registered version."""
    spec = as_resolved(resolved).spec
    last = {}
    for r in records:
        last.update({k: v for k, v in r.items() if isinstance(v, (int, float))})
    tokens = last.get("num_tokens", last.get("num_input_tokens_seen"))
    tps = [r["tokens_per_second"] for r in records if isinstance(r.get("tokens_per_second"), (int, float))]
    duration = result.get("runtime_s") or last.get("train_runtime")
    if duration is None and run_start_ms:
        duration = time.time() - run_start_ms / 1000
    rows = [
        ("job", spec.name),
        ("base model", f"{spec.base_model} ({spec.finetuning_method}, {spec.stage}, template {spec.template})"),
        ("datasets", ", ".join(spec.dataset)),
        ("steps", _fmt(result.get("global_step"))),
        ("epochs", _fmt(result.get("epoch"), 3)),
        ("training loss", f"{_fmt(result.get('train_loss_first'))} at the start → {_fmt(result.get('train_loss_last'))} at the end"),
        ("eval loss (final weights)", _fmt(result.get("eval_loss"))),
        ("best", f"{lineage['checkpoint']} (step {lineage['step']}, eval loss {_fmt(lineage.get('eval_loss'))})"),
        ("tokens trained", _fmt(int(tokens)) if isinstance(tokens, (int, float)) else "—"),
        ("tokens per second", f"{sum(tps) / len(tps):,.0f} on average" if tps else "—"),
        ("duration", _duration(duration)),
        ("registered", f"`{spec.name}` version {registered['version']}" + (" (alias `best`)" if registered.get("alias_best") else "")),
    ]
    lines = [f"## airtune job `{spec.name}`", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "![loss and learning rate](curves.png)", "",
              f"Load it: `mlflow.artifacts.download_artifacts(\"models:/{spec.name}@best\")`, then see the version's README.md."]
    return "\n".join(lines) + "\n"


def model_readme(resolved, info: dict, files: list[str]) -> str:
    """How to load a registered version: the adapter on its base model, or the full weights."""
    spec = as_resolved(resolved).spec
    name = spec.name
    is_adapter = "adapter_config.json" in files
    base = info.get("base_weights") or spec.base_model
    load = (
        [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            "# the adapter's adapter_config.json names its base model; see below when it lives elsewhere",
            "model = AutoPeftModelForCausalLM.from_pretrained(path)",
        ]
        if is_adapter
        else [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            "model = AutoModelForCausalLM.from_pretrained(path)",
        ]
    )
    lines = [
        f"# {name}: {info.get('checkpoint')} (step {info.get('step')})",
        "",
        f"Fine-tuned by airtune from **{spec.base_model}** with {spec.finetuning_method} ({spec.stage}) "
        f"on {', '.join(spec.dataset)}, prompt template `{spec.template}`. "
        f"Eval loss: {_fmt(info.get('eval_loss'))}. DAG run `{info.get('airflow_run_id')}`, MLflow run `{info.get('mlflow_run_id')}`.",
        "",
        "## Load it",
        "",
        "```python",
        "import mlflow",
        "",
        f'mlflow.set_tracking_uri("<your MLflow URL>")',
        f'path = mlflow.artifacts.download_artifacts("models:/{name}@best")  # or models:/{name}/<version>',
        "",
        *load,
        "tokenizer = AutoTokenizer.from_pretrained(path)  # carries the chat template the model was trained with",
        "",
        'messages = [{"role": "user", "content": "Hello!"}]',
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
        "out = model.generate(**inputs, max_new_tokens=64)",
        "print(tokenizer.decode(out[0][inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
        "```",
        "",
    ]
    if is_adapter:
        lines += [
            f"This is a LoRA adapter: it needs its base model's weights (`{base}`). Where they live at another",
            "path or hub id, load them yourself and put the adapter on top:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            "",
            'base = AutoModelForCausalLM.from_pretrained("<path or hub id of the base model>")',
            "model = PeftModel.from_pretrained(base, path)",
            "```",
            "",
        ]
    lines += [
        "## Files",
        "",
        *[f"- `{f}`" for f in files],
        "",
        "`spec.json` is the job's resolved spec (every setting it trained with); `airtune.json` its lineage.",
        "",
    ]
    return "\n".join(lines)
