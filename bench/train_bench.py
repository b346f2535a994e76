"""Training throughput: an SFT LoRA job, airtune against LLaMA-Factory, same run.

    bash bench/setup_llamafactory.sh          # once: LLaMA-Factory 0.9.5 in its own virtualenv
    .venv/bin/python bench/train_bench.py [--repeats 3] [--configs padded packed] [--steps 25]
    .venv/bin/python bench/train_bench.py --model smollm2-135m-instruct [--model-dir DIR] \
        --cases identity:256 alpaca_en_demo:512 --configs default padded packed \
        --steps 6 --warmup-steps 1 --rank 16 --lr 1e-3 --threads 2     # the real model (docs/benchmarks.md)

The default setup is the reference one (docs/benchmarks.md): tiny-llama-dev (4 layers, 1.8 M parameters),
LoRA rank 8 (alpha 16, dropout 0) on all linear layers, template chatml, cutoff_len 512, batch 8, 25
optimizer steps, learning rate 1e-4 (cosine, no warm-up), fp32, on alpaca_en_demo (999 rows), no
evaluation, no checkpoints, gradient checkpointing off for both (on this CPU it costs ~30 %).

The model: `--model NAME` is a catalog model (configs/models.yaml: its weights folder and template),
`--model-dir DIR` a folder of weights and tokenizer (with `--model`, in place of the catalog's folder;
alone, a model outside the catalog: airtune then renders with the folder's own chat template). The
cases: `--cases DATASET:CUTOFF ...` (default alpaca_en_demo at `--cutoff`); `identity` is
data/llamafactory-demo/identity.json with its {{name}} and {{author}} filled in: airtune trains the
catalog's filled entry (configs/datasets.yaml, `fill`; identity_tuna), LLaMA-Factory, which has no such
option, a copy the bench fills with the same values under `--work` (with `--identity-name` /
`--identity-author`, or without such a catalog entry, both tools train the bench's copy).

Same token sequences for both tools: LLaMA-Factory gets the template that renders what airtune's
template renders (chatml for the tiny model; for ChatML with a default system prompt, as
SmolLM2-Instruct's own template, `smollm2` with `default_system` set to the exact prompt airtune's
template writes: LLaMA-Factory's `smollm2` default ends with a full stop that SmolLM2's tokenizer
template does not have), and before any timing the bench checks it: LLaMA-Factory's preprocessing
(`lf_train.py --dump-tokens`, the training arguments) against airtune's prepared rows, example by
example (it stops if they differ, unless `--no-token-check`). Trained labels differ by design by one
token a turn: LLaMA-Factory also trains the "\\n" after each <|im_end|>, airtune stops at <|im_end|>.

Configurations, each tool in its own way:
- `padded`: `packing: false`, each batch 8 examples: LLaMA-Factory pads them to the longest; airtune
  on the CPU lays them back to back in one row (padding-free, attention per example; same loss).
- `packed`: airtune `packing: true` (rows packed best-fit into cutoff_len, attention kept within each
  example); LLaMA-Factory `packing: true` (its best here in earlier measurements; its packed rows let examples
  attend to each other, and count their tail padding as tokens).
- `default`: each tool's defaults: LLaMA-Factory `packing: false` with its gradient checkpointing on;
  airtune `packing: false` (it turns checkpointing off on the CPU), i.e. airtune's `padded` run, which
  is measured once and quoted for both rows when both are asked for.
Gradient checkpointing is off for LLaMA-Factory in `padded` and `packed`.

Measured: non-padding tokens trained / the time they took, and the peak RSS of the training process
(LLaMA-Factory's includes its in-process preprocessing; airtune prepares in its own step, as its DAG
does). Without warm-up steps, the time is the trainer's `train_runtime` (model loading and data
preparation not included: both tools prepare before the clock starts); with `--warmup-steps W` both
tools train W + steps optimizer steps and the figure is the tokens and wall time from the end of step
W to the end of the last step, as logged by each trainer's `on_log` (the first steps of a fresh
process are slow: allocator, thread pools). airtune's tokens are TRL's `num_tokens` (attention mask, or
the padding-free row's length), LLaMA-Factory's transformers' `num_input_tokens_seen` (non_padding).
Runs are interleaved (the order alternates each repeat) because these machines are shared; medians
are quoted, and the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEMO, LF_PYTHON, REPO, gib, last_json_line, medians, order, pinned_env, ratio, run_measured, write_report  # noqa: E402

CONFIGS = ("default", "padded", "packed")
AIRTUNE_SAME = {"default": "padded"}  # airtune's default configuration is its padded run
DATASETS = {"alpaca_en_demo": DEMO / "alpaca_en_demo.json", "identity": DEMO / "identity.json"}
TINY = "tiny-llama-dev"
FIELDS = ("tokens_per_s", "peak_rss_bytes", "tokens", "seconds", "train_runtime", "wall_s")


def parse_case(text: str) -> tuple[str, int]:
    """'identity:256' -> ('identity', 256)."""
    name, _, cutoff = text.partition(":")
    if name not in DATASETS or not cutoff.isdigit() or int(cutoff) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected DATASET:CUTOFF with DATASET one of {', '.join(DATASETS)}")
    return name, int(cutoff)


def case_name(dataset: str, cutoff: int) -> str:
    return f"{dataset}@{cutoff}"


def fill(obj, values: dict[str, str]):
    """`{{key}}` -> value in every string of a row: airtune's own dataset `fill`, so that LLaMA-Factory's
    copy of the data is filled exactly as airtune fills it."""
    from airtune.data.build import fill_placeholders

    return fill_placeholders(obj, values)


def fill_identity(path: Path, values: dict[str, str], source: Path = DATASETS["identity"]) -> Path:
    """identity.json with its placeholders ({{name}}, {{author}}) filled in, at `path`."""
    rows = fill(json.loads(source.read_text(encoding="utf-8")), values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def identity_dataset(catalog, name: str | None, author: str | None) -> tuple[str, dict[str, str], bool]:
    """(airtune's dataset for the identity case, the values filled in, whether airtune fills them itself):
    the catalog's filled entry of identity.json when there is one and no names are asked for, else
    `identity` filled by the bench."""
    if name is None and author is None:
        for entry in catalog.datasets.values():
            values = getattr(entry, "fill", None)
            if values and [f.name for f in entry.files] == ["identity.json"]:
                return entry.name, dict(values), True
    return "identity", {"name": name or "Airtune", "author": author or "the airtune team"}, False


def own_chat_template(model_dir: Path) -> str | None:
    """The chat template a model folder carries (chat_template.jinja, else tokenizer_config.json's)."""
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    cfg = model_dir / "tokenizer_config.json"
    template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template") if cfg.is_file() else None
    return template if isinstance(template, str) else None


def resolve_model(name: str | None, model_dir: Path | None, work: Path) -> dict:
    """What both tools train: {name, dir, base_model (the catalog entry airtune's job names), template
    (the job's template field), template_path (airtune's template file: the catalog's, or the folder's own)}."""
    from airtune.catalog import Catalog

    catalog = Catalog.load()
    if name is None and model_dir is None:
        name = TINY
    if name is not None and name in catalog.models:
        entry = catalog.model(name)
        folder = Path(model_dir) if model_dir else Path(entry.weights())
        if name == TINY and model_dir is None:
            from airtune.tinymodel import make_tiny_model

            folder = make_tiny_model(folder)
        template = "chatml" if name == TINY else "auto"  # an instruct model takes its own template only
        tname = entry.template if template == "auto" else template
        out = {"name": name, "dir": folder, "base_model": name, "template": template, "template_name": tname,
               "template_path": catalog.template(tname).path}
    elif model_dir is not None:
        # Outside the catalog: airtune's job validates as the tiny (base) model, then trains the folder's
        # weights with the folder's own chat template (the one the model was trained with).
        folder = Path(model_dir)
        own = own_chat_template(folder)
        out = {"name": name or folder.name, "dir": folder, "base_model": TINY, "template": "chatml",
               "template_name": "chatml", "template_path": catalog.template("chatml").path}
        if own is not None:
            path = work / "templates" / f"{out['name']}.jinja"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(own, encoding="utf-8")
            out.update(template_name=f"{out['name']} (its own)", template_path=path)
    else:
        raise SystemExit(f"--model {name}: not in the catalog (configs/models.yaml); accepted: {', '.join(catalog.models)}. "
                         f"For a model folder outside it, pass --model-dir DIR")
    if not (Path(out["dir"]) / "config.json").is_file():
        hint = f" (install it: airtune's model command, or pass --model-dir DIR)" if name != TINY else ""
        raise SystemExit(f"no model at {out['dir']}{hint}")
    return out


SYSTEM_RE = re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\nPROBE<\|im_end\|>\n$", re.S)


def lf_template(rendered: str) -> tuple[str, str | None]:
    """(LLaMA-Factory template, default_system) that render what airtune's template renders for one user
    turn (`rendered`): ChatML alone is LLaMA-Factory's `chatml`; ChatML with a default system prompt
    (SmolLM2-Instruct's own template) is its `smollm2` with default_system set to the exact prompt
    (LLaMA-Factory's own smollm2 default ends with a full stop that SmolLM2's template does not have)."""
    if rendered == "<|im_start|>user\nPROBE<|im_end|>\n":
        return "chatml", None
    m = SYSTEM_RE.fullmatch(rendered)
    if m:
        return "smollm2", m.group(1)
    raise SystemExit(f"airtune's template is not ChatML ({rendered!r}): pass --lf-template (the token check compares)")


def render_probe(model: dict) -> str:
    """airtune's rendering (its encoder: the template and the tokenizer's special tokens) of one user turn."""
    from airtune.data.encode import Encoder

    enc = Encoder(str(model["dir"]), None, Path(model["template_path"]).read_text(encoding="utf-8"), stage="sft",
                  cutoff_len=16)
    return enc.render([{"role": "user", "content": "PROBE"}])


def job_mapping(config: str, *, steps: int, batch: int, cutoff: int, rank: int, lr: float, base_model: str = TINY,
                template: str = "chatml", dataset: str = "alpaca_en_demo", compute: str = "fp32") -> dict:
    """The airtune job (docs/form.md keys) for one configuration (`steps`: all optimizer steps, warm-up included)."""
    return {
        "name": f"bench-train-{config}", "base_model": base_model, "template": template,
        "finetuning_method": "lora", "stage": "sft", "dataset": [dataset],
        "learning_rate": lr, "num_train_epochs": 3, "lr_scheduler_type": "cosine", "warmup_steps": 0,
        "cutoff_len": cutoff, "per_device_train_batch_size": batch, "gradient_accumulation_steps": 1,
        "val_size": 0, "compute_type": compute, "lora_rank": rank, "lora_alpha": 2 * rank, "lora_dropout": 0,
        "lora_target": "all", "packing": config == "packed", "logging_steps": 1, "save_steps": 10_000,
        "seed": 42, "extra_args": {"max_steps": steps},
    }


def resolved_job(config: str, model: dict, data_file: Path | None = None, **kw) -> dict:
    """The validated airtune job, pointed at the model folder and its template (and at `data_file`, the
    bench's filled identity copy, in place of the catalog dataset's files)."""
    from airtune.resolve import validate_mapping

    resolved = validate_mapping(job_mapping(config, base_model=model["base_model"], template=model["template"], **kw))
    resolved["model"]["weights"] = str(model["dir"])
    resolved["template"] = {"name": model["template_name"], "path": str(model["template_path"])}
    if data_file is not None:
        resolved["datasets"][0]["files"] = [str(data_file)]
    return resolved


def prepare_job(config: str, work: Path, model: dict | None = None, data_file: Path | None = None, *,
                case: str | None = None, **kw) -> tuple[Path, Path]:
    """Validate and prepare one airtune job (not timed): (spec.json, prepared data folder)."""
    from airtune.data import prepare

    model = model or resolve_model(None, None, work)
    resolved = resolved_job(config, model, data_file, **kw)
    base = work / "airtune" / (case or case_name(kw.get("dataset", "alpaca_en_demo"), kw["cutoff"])) / config
    data_dir = base / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    prepare(resolved, data_dir, cache_dir=None, log=lambda m: None)
    spec = base / "spec.json"
    spec.write_text(json.dumps(resolved, indent=2))
    return spec, data_dir


def compare_tokens(airtune_rows: list[list[int]], lf_rows: list[list[int]], cutoff: int) -> dict:
    """Example-by-example comparison of the two tools' token sequences (as multisets: order aside).
    `same` is True when every example airtune trains on is one of LLaMA-Factory's, and the other way;
    `only_at_cutoff`, when some differ, whether all of those are cut at the cutoff (truncated)."""
    a, b = Counter(map(tuple, airtune_rows)), Counter(map(tuple, lf_rows))
    common_n = sum((a & b).values())
    only_a, only_b = a - b, b - a
    return {"examples_airtune": len(airtune_rows), "examples_llamafactory": len(lf_rows), "identical": common_n,
            "only_airtune": sum(only_a.values()), "only_llamafactory": sum(only_b.values()),
            "only_at_cutoff": all(len(r) >= cutoff for r in [*only_a, *only_b]) if only_a or only_b else None,
            "tokens": sum(map(len, airtune_rows)), "same": not only_a and not only_b}


def check_tokens(data_dir: Path, lf_cmd: list[str], env: dict, work: Path, cutoff: int) -> dict:
    """airtune's prepared (unpacked) rows against LLaMA-Factory's preprocessing with the training arguments."""
    from datasets import load_from_disk

    dump = work / "tokens" / "llamafactory.json"
    shutil.rmtree(dump.parent, ignore_errors=True)
    log = work / "tokens" / "llamafactory.log"
    m = run_measured(lf_cmd + ["--dump-tokens", str(dump)], env, log)
    if m["rc"] != 0:
        raise SystemExit(f"LLaMA-Factory's preprocessing failed ({m['rc']}):\n{log.read_text(errors='replace')[-4000:]}")
    lf = json.loads(dump.read_text())
    train = load_from_disk(str(data_dir / "train")).select_columns(["input_ids", "labels"]).to_dict()
    result = compare_tokens(train["input_ids"], lf["input_ids"], cutoff)
    result["label_tokens_airtune"] = int(sum(sum(1 for t in r if t != -100) for r in train["labels"]))
    result["label_tokens_llamafactory"] = int(sum(sum(1 for t in r if t != -100) for r in lf["labels"]))
    return result


def steps_log_airtune(records: list[dict]) -> list[dict]:
    return [{"step": r["step"], "time": r["time"], "tokens": int(r["num_tokens"])} for r in records
            if "loss" in r and "num_tokens" in r and "time" in r]


def window(steps_log: list[dict], warmup: int) -> tuple[int, float]:
    """(tokens, seconds) from the end of step `warmup` to the end of the last step."""
    by_step = {s["step"]: s for s in steps_log}
    if warmup not in by_step or max(by_step) <= warmup:
        raise ValueError(f"no step {warmup} or nothing after it in the step log")
    first, last = by_step[warmup], by_step[max(by_step)]
    return last["tokens"] - first["tokens"], last["time"] - first["time"]


def airtune_result(job: Path) -> dict:
    """Tokens and train_runtime from the job's metrics.jsonl (written by airtune.train's callback)."""
    records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines() if line.strip()]
    tokens = max(r["num_tokens"] for r in records if "num_tokens" in r)
    runtime = [r["train_runtime"] for r in records if "train_runtime" in r][-1]  # the last: the whole run's
    losses = [r["loss"] for r in records if "loss" in r]
    return {"tool": "airtune", "tokens": int(tokens), "train_runtime": runtime, "steps": max(r["step"] for r in records),
            "loss_first": losses[0], "loss_last": losses[-1], "steps_log": steps_log_airtune(records)}


def measure(r: dict, warmup: int) -> dict:
    """The run's measured tokens, seconds and tokens/s: the whole run, or the steps after `warmup`."""
    if warmup:
        r["tokens_total"] = r["tokens"]
        r["tokens"], r["seconds"] = window(r["steps_log"], warmup)
    else:
        r["seconds"] = r["train_runtime"]
    r["tokens_per_s"] = r["tokens"] / r["seconds"] if r["seconds"] else float("nan")
    return r


def summarize(runs: list[dict], configs: list[str]) -> list[dict]:
    """Per case and configuration: each tool's medians and the ratios; then each tool's best against the other's."""
    runs = [{"case": "", **r} for r in runs]
    fields = tuple(f for f in FIELDS if all(f in r for r in runs))
    med = medians(runs, ("tool", "case", "config"), fields)
    out = []
    for case in dict.fromkeys(r["case"] for r in runs):
        rows = []
        for c in configs:
            at = med.get(("airtune", case, c)) or med.get(("airtune", case, AIRTUNE_SAME.get(c)))
            lf = med.get(("llamafactory", case, c))
            if at is None or lf is None:
                continue
            rows.append({"case": case, "config": c, "airtune": at, "llamafactory": lf,
                         "ratio": ratio(at["tokens_per_s"], lf["tokens_per_s"]),
                         "rss_ratio": ratio(at["peak_rss_bytes"], lf["peak_rss_bytes"])})
        out += rows
        if len(rows) > 1:  # each tool's best against the other's best
            best = {}
            for t in ("airtune", "llamafactory"):  # over the configurations the tool itself ran
                top = max((c for c in configs if (t, case, c) in med), key=lambda c: med[(t, case, c)]["tokens_per_s"])
                best[t] = {**med[(t, case, top)], "config": top}
            out.append({"case": case, "config": "best", **best,
                        "ratio": ratio(best["airtune"]["tokens_per_s"], best["llamafactory"]["tokens_per_s"]),
                        "rss_ratio": ratio(best["airtune"]["peak_rss_bytes"], best["llamafactory"]["peak_rss_bytes"])})
    return out


def print_table(summary: list[dict]) -> None:
    print(f"{'case':>20} {'config':>14} {'tool':>12} {'tokens/s':>9} {'peak RSS':>9}   ratio (airtune / LLaMA-Factory)")
    for row in summary:
        for tool in ("airtune", "llamafactory"):
            m = row[tool]
            label = row["config"] + (f" ({m['config']})" if "config" in m else "")
            print(f"{row['case']:>20} {label:>14} {tool:>12} {m['tokens_per_s']:>9,.0f} {gib(m['peak_rss_bytes']):>7.2f} G"
                  + (f"   {row['ratio']:.2f}x tokens/s, {row['rss_ratio']:.2f}x peak RSS" if tool == "airtune" else ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=["padded", "packed"])
    p.add_argument("--steps", type=int, default=25, help="measured optimizer steps (after the warm-up steps)")
    p.add_argument("--warmup-steps", type=int, default=0, help="steps trained first and left out of the figure")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cutoff", type=int, default=512, help="the cutoff of the default case")
    p.add_argument("--cases", nargs="+", type=parse_case, help="DATASET:CUTOFF ... (default alpaca_en_demo:--cutoff)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=1.0e-4)
    p.add_argument("--model", help=f"a catalog model (configs/models.yaml; default {TINY})")
    p.add_argument("--model-dir", type=Path, help="the model's folder (weights, tokenizer), instead of the catalog's")
    p.add_argument("--lf-template", help="LLaMA-Factory's template (default: the one matching airtune's template)")
    p.add_argument("--identity-name", help="fills identity.json's {{name}} (default: the catalog's filled entry's)")
    p.add_argument("--identity-author", help="fills identity.json's {{author}} (default: the catalog's filled entry's)")
    p.add_argument("--no-token-check", action="store_true", help="train even if the tools' token sequences differ")
    p.add_argument("--threads", default="2", help="OMP_NUM_THREADS (torch's threads) for both tools")
    p.add_argument("--compute", choices=("fp32", "bf16"), default="fp32",
                   help="both tools' precision: bf16 is mixed precision (on the CPU, autocast; airtune's frozen "
                        "LoRA base weights in bf16)")
    p.add_argument("--work", type=Path, default=REPO / ".airtune" / "bench" / "train")
    p.add_argument("--lf-python", type=Path, default=LF_PYTHON)
    p.add_argument("--json-out", type=Path, help="also write every run and the summary here")
    a = p.parse_args()
    if not a.lf_python.exists():
        raise SystemExit(f"LLaMA-Factory is not installed at {a.lf_python}: run bash bench/setup_llamafactory.sh")
    cases = a.cases or [("alpaca_en_demo", a.cutoff)]
    model = resolve_model(a.model, a.model_dir, a.work)
    lf_tpl, lf_system = (a.lf_template, None) if a.lf_template else lf_template(render_probe(model))
    total_steps = a.steps + a.warmup_steps
    hp = {"steps": a.steps, "warmup_steps": a.warmup_steps, "batch": a.batch, "rank": a.rank, "lr": a.lr,
          "compute": a.compute}
    # identity: LLaMA-Factory trains the bench's filled copy; airtune the catalog's filled entry (it
    # fills the rows itself as it prepares them), or the same copy when there is none
    from airtune.catalog import Catalog

    id_name, id_values, id_by_airtune = identity_dataset(Catalog.load(), a.identity_name, a.identity_author)
    lf_files = {**DATASETS, "identity": fill_identity(a.work / "data" / "identity.json", id_values)}
    at_dataset = {"alpaca_en_demo": ("alpaca_en_demo", None),
                  "identity": (id_name, None if id_by_airtune else lf_files["identity"])}
    env = pinned_env("1", "false", a.threads)
    # airtune runs each distinct job once per repeat: its `default` is its `padded` when both are asked for
    at_configs = [c for c in a.configs if not (c in AIRTUNE_SAME and AIRTUNE_SAME[c] in a.configs)]

    def lf_cmd(dataset: str, cutoff: int, config: str, out: Path) -> list[str]:
        cmd = [str(a.lf_python), str(REPO / "bench" / "lf_train.py"), "--model", str(model["dir"]),
               "--data", str(lf_files[dataset]), "--out", str(out), "--steps", str(total_steps),
               "--batch", str(a.batch), "--cutoff", str(cutoff), "--rank", str(a.rank), "--lr", str(a.lr),
               "--template", lf_tpl]
        cmd += ["--default-system", lf_system] if lf_system is not None else []
        cmd += ["--packing"] if config == "packed" else []
        cmd += ["--gradient-checkpointing"] if config == "default" else []  # LLaMA-Factory's default
        cmd += ["--bf16"] if a.compute == "bf16" else []
        return cmd

    jobs, token_checks = {}, {}
    for dataset, cutoff in cases:
        case = case_name(dataset, cutoff)
        kw = {"steps": total_steps, "batch": a.batch, "cutoff": cutoff, "rank": a.rank, "lr": a.lr,
              "dataset": at_dataset[dataset][0], "compute": a.compute}
        for c in {*at_configs, "padded"}:
            jobs[(case, c)] = prepare_job(c, a.work, model, at_dataset[dataset][1], case=case, **kw)
        if not a.no_token_check:
            chk = check_tokens(jobs[(case, "padded")][1], lf_cmd(dataset, cutoff, "padded", a.work / "tokens" / case),
                               env, a.work / "tokens" / case, cutoff)
            token_checks[case] = chk
            print(f"  tokens {case}: {chk['identical']} of {chk['examples_airtune']} airtune examples identical to "
                  f"LLaMA-Factory's ({chk['examples_llamafactory']}); target tokens airtune {chk['label_tokens_airtune']}, "
                  f"LLaMA-Factory {chk['label_tokens_llamafactory']}", file=sys.stderr, flush=True)
            if not chk["same"]:
                raise SystemExit(f"{case}: the two tools' token sequences differ ({chk}); fix the template "
                                 f"(--lf-template) or pass --no-token-check")
    runs = []
    for rep in range(a.repeats):
        for ki, (dataset, cutoff) in enumerate(cases):
            case = case_name(dataset, cutoff)
            for ci, config in enumerate(a.configs):
                tools = ["airtune", "llamafactory"] if config in at_configs else ["llamafactory"]
                for tool in order(tools, rep, ki * len(a.configs) + ci):
                    base = a.work / "runs" / f"{tool}-{case}-{config}-{rep}"
                    shutil.rmtree(base, ignore_errors=True)
                    if tool == "airtune":
                        spec, data_dir = jobs[(case, config)]
                        base.mkdir(parents=True)
                        shutil.copyfile(spec, base / "spec.json")
                        cmd = [sys.executable, "-m", "airtune.train", "--spec", str(base / "spec.json"), "--data",
                               str(data_dir), "--output", str(base / "output")]
                    else:
                        cmd = lf_cmd(dataset, cutoff, config, base)
                    log = a.work / "logs" / f"{tool}-{case}-{config}-{rep}.log"
                    m = run_measured(cmd, env, log)
                    text = log.read_text(encoding="utf-8", errors="replace")
                    if m["rc"] != 0:
                        raise SystemExit(f"failed ({m['rc']}): {' '.join(cmd)}\n{text[-4000:]}")
                    r = airtune_result(base) if tool == "airtune" else last_json_line(text)
                    r.update(case=case, config=config, repeat=rep, wall_s=m["wall_s"], peak_rss_bytes=m["peak_rss_bytes"])
                    runs.append(measure(r, a.warmup_steps))
                    print(f"  {tool:12s} {case:20s} {config:7s} repeat={rep}: {r['tokens_per_s']:,.0f} tokens/s "
                          f"({r['tokens']} tokens in {r['seconds']:.1f} s), peak RSS {gib(r['peak_rss_bytes']):.2f} GiB, "
                          f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}", file=sys.stderr, flush=True)
                    shutil.rmtree(base / "output", ignore_errors=True)
    summary = summarize(runs, a.configs)
    steps = f"{a.steps} steps" + (f" after {a.warmup_steps} warm-up" if a.warmup_steps else "")
    print(f"\nSFT LoRA r{a.rank} all-linear, {model['name']}, template {model['template_name']} (LLaMA-Factory {lf_tpl}), "
          f"batch {a.batch}, {steps}, lr {a.lr:g}, {a.compute}; OMP_NUM_THREADS={a.threads}; medians of {a.repeats}")
    print_table(summary)
    report = {"model": {k: str(v) for k, v in model.items()}, "llamafactory_template": lf_tpl,
              "llamafactory_default_system": lf_system, "cases": [case_name(*c) for c in cases], "hyperparameters": hp,
              "identity": {"airtune_dataset": id_name, "fill": id_values},
              "threads": a.threads, "repeats": a.repeats, "token_check": token_checks, "summary": summary, "runs": runs}
    write_report(report, a.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
