"""`docs/form.md`, the job form's reference, written from the field table in `airtune.spec`.

The table (`spec.FIELDS`: section, key, labels and help in English and Chinese, type, default,
limits, the stage/method a field is used with) is the one source of truth; this module only renders
it. Rules between fields are shown with the very message the code gives: each is a small job that
breaks the rule, parsed by `spec.parse_partial` here, so the page cannot say one thing while the
code says another (an example that no longer gives its error stops the generator). The rules that
need the catalog, the hardware or earlier jobs (`airtune.resolve`) and the prose around the table
(what a job name means, stage fit, why there is no ppo, ...) are this module's hand-written text.

    airtune form-doc            # (re)write docs/form.md
    airtune form-doc --check    # exit 1 when docs/form.md is not what this module writes
    make form-doc               # the same as the first

Cheap to import: spec and resolve's constants (standard library and PyYAML).
"""

from __future__ import annotations

import json
from pathlib import Path

from airtune import paths
from airtune.resolve import KIND_WORDS, PARENT_STAGES, STAGE_DATASET_KINDS
from airtune.form import param_schema
from airtune.spec import (EXTRA_ARGS_FROM_FIELDS, EXTRA_ARGS_RESERVED, EXTRA_ARGS_RESERVED_PREFIXES, FIELD_BY_NAME,
                          FIELDS, SECTIONS, FieldInfo, parse_partial)

DOC_PATH = Path("docs") / "form.md"
REGENERATE = "make form-doc"

# Names the shipped catalog (configs/) has, so that examples, docs and tests agree; more may be
# added. tests/test_catalog.py checks configs/ against these.
CATALOG_NAMES: dict[str, tuple[str, ...]] = {
    "models": ("smollm2-135m-instruct", "tiny-llama-dev", "qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct",
               "qwen2.5-7b-instruct", "qwen3-8b", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct",
               "llama-3.1-8b-instruct", "llama-3.1-8b", "glm-4-9b-chat", "mistral-7b-instruct-v0.3",
               "gemma-2-9b-it"),
    "templates": ("default", "empty", "alpaca", "chatml", "qwen", "qwen3", "llama3", "glm4", "mistral", "gemma", "smollm2"),
    "datasets": ("alpaca_en_demo", "identity", "identity_tuna", "dpo_en_demo", "kto_en_demo", "c4_demo"),
    "locations": ("local", "k8s-example"),
}

# Where a catalog-backed field takes its names from.
_CATALOG_SOURCES = {
    "locations": "a location of `configs/locations.yaml`",
    "models": "a model of `configs/models.yaml`",
    "templates": "`auto`, or a template of `configs/templates/`",
    "datasets": "datasets of `configs/datasets.yaml`",
    "gpu_types": "a GPU type the chosen location offers (`configs/locations.yaml`)",
    "benchmarks": "benchmarks of `configs/benchmarks.yaml`",
}
_KIND_WORDS = {"str": "text", "choice": "choice", "int": "integer", "float": "number",
               "bool": "boolean", "names": "one or more names", "target": "`all` or module names",
               "object": "object (mapping)"}

# Every rule between fields that `airtune.spec` checks (beyond `used_with`, whose examples are
# built from the table itself), as a job that breaks it. The page shows the message the code gives.
# Single-field refusals with a message of their own are here too (ppo).
RULE_EXAMPLES: tuple[dict, ...] = (
    {"stage": "ppo"},
    {"stage": "grpo"},
    {"finetuning_method": "full", "quantization_bit": "4"},
    {"quantization_method": "eetq", "quantization_bit": "4"},
    {"quantization_method": "hqq"},
    {"distributed": "zero3", "quantization_bit": "8"},
    {"export_merged": True, "quantization_bit": "4"},
    {"booster": "unsloth", "distributed": "zero3"},
    {"extra_args": {"output_dir": "/tmp/x"}},
    {"extra_args": {"optim": "sgd"}},
    {"eval_dataset": "alpaca_en_demo", "val_size": 0.1},
    {"promote": "auto"},
    {"promote": "auto", "val_size": 0.1, "promote_metric": "reward_accuracy"},
    {"promote": "auto", "val_size": 0.1, "promote_metric": "rouge-l", "eval_max_samples": 0},
    {"promote": "approve", "val_size": 0.1, "promote_metric": "benchmark:mmlu"},
)
# A job every example starts from (the table's rules need no catalog: these names are not looked up).
_BASE_JOB = {"name": "example", "base_model": "tiny-llama-dev", "dataset": "identity"}

# Rules that need the catalog, the hardware or earlier jobs: `airtune.resolve` (and, for names,
# `airtune.pipeline`) checks them in the validate task. Hand-written; each says what resolve refuses.
CHECKED_BY_VALIDATE: dict[str, tuple[str, ...]] = {
    "name": ("A name identifies one job: starting a job under a name that already has a run (active or finished) "
             "is refused (\"in use\"), except for the runs of a retraining DAG, whose job file owns the name "
             "(see [Job names](#job-names)).",),
    "location": ("A name that is not in `configs/locations.yaml`: error.",),
    "base_model": ("A name that is not in `configs/models.yaml`: error.",),
    "template": ("A name that is not in `configs/templates/`: error.",
                 "An instruct/chat model takes only its own template (or `auto`); a base model takes any.",
                 "When continuing from `parent_job`, the template must be the one that job used (or `auto`)."),
    "dataset": ("A name that is not in `configs/datasets.yaml`: error.",
                "Each dataset's kind must fit the stage: see [Datasets and stages](#datasets-and-stages)."),
    "reward_model": ("Must name a finished `rm` job whose final weights exist.",),
    "parent_job": ("Must name a finished job of a stage that can be continued (see "
                   "[Continuing from an earlier job](#continuing-from-an-earlier-job)) with the same `base_model`.",),
    "gpu_type": ("Must be a GPU type the location offers.",
                 "When the memory estimate of one training process exceeds the GPU type's memory whatever the rows' "
                 "lengths (weights, gradients, optimizer states): error, with the estimate's parts and what would make "
                 "it fit. When only batches of `cutoff_len`-token rows would not fit: a warning, and `prepare_dataset` "
                 "decides again with the prepared data's longest row, failing at once (before any GPU is asked for) "
                 "if even that does not fit."),
    "gpus_per_node": ("0 (CPU only) only on `local`.",
                      "At most the GPUs the GPU type's nodes have (on `local` with `auto`: the GPUs of this machine)."),
    "nodes": ("More than 1 only on a Kubernetes location.",),
    "compute_type": ("`bf16` / `pure_bf16` need a GPU type with bf16; `fp16` and `bf16` need a GPU: error on the "
                     "CPU.",),
    "booster": ("`flash_attention_2` needs fp16 or bf16 on a CUDA GPU (and the flash-attn package).",
                "`unsloth` needs exactly one GPU in total, and is refused while airtune's training image lacks it.",
                "`liger_kernel` needs a CUDA GPU."),
    "distributed": ("The DeepSpeed ZeRO strategies need CUDA GPUs: error on the CPU.",),
    "quantization_method": ("`eetq` needs a CUDA GPU and its kernels available without a model hub (a Kubernetes "
                            "GPU type declares `eetq_kernels`); refused where they are not, saying so.",
                            "`hqq` needs the hqq package on `local` (it comes with `airtune[train]`)."),
    "rope_scaling": ("Factor = ceil(cutoff_len / the model's context length); when cutoff_len fits, scaling is "
                     "skipped with a warning. A cutoff_len longer than the model's context without rope_scaling: "
                     "a warning.",),
    "freeze_trainable_layers": ("At most the layers the model has.",),
    "eval_dataset": ("A name that is not in `configs/datasets.yaml`: error.",
                     "Each dataset's kind must fit the stage, as for `dataset`."),
    "eval_benchmarks": ("A name that is not in `configs/benchmarks.yaml`, or whose files do not exist: error.",),
    "promote": ("`approve` under `airtune run` (the embedded default) needs the stack of `make up` running: "
                "its api-server records the answer. Refused otherwise, saying so.",),
    "notify": ("Each id must be an Airflow connection of type `smtp`, `apprise` or `http` (a notifier provider's); an "
               "unknown connection, another type, or an `smtp` connection without recipients (its extra's `to`): "
               "error, naming the connection. Empty: the location's `notify` in `configs/locations.yaml`, checked "
               "the same way. See [notifications.md](notifications.md).",),
    "extra_args": ("Each key must be a field of the stage's TRL config (`SFTConfig`, `DPOConfig`, ...): an "
                   "unknown key is refused, naming it.",),
}

# Notes on a field the table does not hold (value spellings the parser accepts, what resolve fills in).
NOTES: dict[str, tuple[str, ...]] = {
    "quantization_bit": ("Also written `int4` / `int8`, or the integers 4 / 8 as LLaMA-Factory does: the same "
                         "values in the form, a REST `conf` and a YAML file. The form's drop-down lists `none`, "
                         "`4`, `8`; the schema's `definitions.accepted` holds every spelling (its `$ref` is what "
                         "is checked).",),
    "quantization_method": ("bitsandbytes also runs on the CPU: 4-bit QLoRA trains there.",),
    "optimizer": ("The values are transformers' `optim` names.",),
    "dataset": ("A list, or names separated by commas; each dataset at most once.",),
    "lora_target": ("A list, or module names separated by commas; `all` alone, not inside a list.",),
}

# Evaluation, promotion and notifications: part of the form's contract that the table does not
# hold yet. A row disappears from this list once its key is a field of the table.
PLANNED: tuple[tuple[str, str, str, str], ...] = (
    ("eval_dataset", "one or more catalog datasets used only for evaluation", "none (the validation split)",
     "its kind must fit the stage"),
    ("eval_max_samples", "integer ≥ 0 (0: no generation)", "50", "prompts generated and scored, base and tuned"),
    ("eval_benchmarks", "list of catalog benchmarks (MMLU / C-Eval / CMMLU layout)", "none", ""),
    ("promote", "`auto`, `approve`, `never`", "`never` for one-off jobs, `auto` in retraining job files",
     "moves the registered model's `champion` alias (`best` keeps its meaning: lowest eval loss on the same data)"),
    ("promote_metric", "`eval_loss`, `rouge-l`, `bleu-4`, `reward_accuracy` (`rm`, `dpo`), `benchmark:<name>`",
     "`eval_loss`", "with `promote` `auto`/`approve` the metric must be computable: `eval_loss` needs `val_size` "
                    "> 0 or `eval_dataset`; a benchmark must be in `eval_benchmarks`"),
    ("promote_timeout_hours", "number > 0", "24", "only with `approve`; the approval times out as a rejection"),
    ("notify", "list of Airflow connection ids (each of a notifier provider's type)", "none (the location's)",
     "notified when the job succeeds, fails or waits for approval; an unknown connection: error"),
)

HEADER = """\
# The fine-tuning job form

This page is the contract for what a user fills in to create a fine-tuning job, whether in the
Airflow trigger form (the `airtune_finetune` DAG), a YAML file under `configs/jobs/` or given to the
CLI, or the `conf` of a REST API call ([rest-api.md](rest-api.md)). Its fields follow the platform's
original job form (written in Chinese: the Chinese labels and help texts keep its wording, with its
recommended ranges) and the LLaMA-Factory training arguments that form mirrors. Every field here
exists in the job spec (`src/airtune/spec/fields.py`), in the trigger form, and reaches the trainer with
the meaning given here.

All three entry points take the keys below as **one flat mapping**; a key that is not listed is an
error (naming the closest key when there is one).

## How values are checked

- A bad value is refused with a message that names the field, the value and what would be accepted.
- **Single-field rules** (types, limits, fixed values, patterns) are each param's JSON schema, so
  Airflow checks them when a run is triggered: the trigger form refuses the run, the REST API
  answers HTTP 400 naming the param, and the jobs page's create wizard shows each error at its
  field. Every entry point accepts exactly the same values.
- **Rules between fields**, unknown keys and catalog look-ups fail the DAG's `validate` task within
  seconds, before any GPU or pod is requested. `airtune validate FILE` checks everything at once and
  reports every error, not only the first.
- A value left **empty** means "use the default": no value (YAML `key:`, JSON `null`), or an empty
  list / object for a list or `extra_args`. `auto` values are resolved by `validate` and recorded in
  the run's resolved spec ([architecture.md](architecture.md)).
- **One grammar of values** for all entry points (the params' schemas and `validate` are tested to
  agree on every field): numbers are numbers — `1e-4` in a YAML file is one (the job-file loader reads
  exponents as YAML 1.2 and JSON do), `512.0` is an integer, and a number given as text (`"1e-4"`,
  `"8"`) is refused, saying to drop the quotes; `true` / `false` are booleans (not `"yes"`, not `1`);
  a choice is written as listed (lower case, no spaces around it: `LoRA` is refused, naming `lora`);
  a name as the catalog spells it; an empty text (`""`) is refused (except for `reward_model` and
  `parent_job`). The one alias: `quantization_bit` also takes `int4` / `int8` and the numbers 4 / 8
  (the form's drop-down lists `none`, `4`, `8`).

## Job names

A name identifies one job. Starting a job under a name that already has a run (active or
finished) is refused ("in use"), except for the runs of a retraining DAG: its job file owns the
name, and each run adds a version to the same registered model ([retraining.md](retraining.md)).
Deleting a job (`airtune delete NAME`) frees its name. Every Kubernetes object, MLflow experiment
and folder derived from the name stays valid (truncated with a short hash where needed, never a late
failure).

## Labels

Each field has an English and a Chinese label and help text; `AIRTUNE_FORM_LANG` (`en`, `zh`) in the
Airflow components' environment chooses which the form shows. The form groups the fields in the
sections below, in this order (Airflow's trigger form shows each section closed until it is opened).

## How to read a field

Each field below gives its labels (English · Chinese), its type and accepted values, its default,
the recommended range where the platform's form gives one, its help text in both languages, and the
JSON schema Airflow checks when a run is triggered. Under **Rules**, a job in `code` breaks a rule
between fields and the quoted text is the message `validate` answers it with (taken from the code
when this page is generated); the other rules need the catalog, the hardware or earlier jobs.
"""

FOOTER_STAGES = """\
## Datasets and stages

A dataset's kind (`configs/datasets.yaml`) must fit the stage; otherwise `validate` refuses it and
names the datasets that would fit.

| stage | trains on |
|---|---|
{rows}

`grpo` generates answers to the prompts of its datasets and scores them with `reward_model`.
"""

FOOTER_PARENT = """\
## Continuing from an earlier job

`parent_job` names a finished job whose adapter or full weights this job starts from. It must be a
{stages} job (an `rm` job is no parent: name it as `reward_model` of a `grpo` job instead), its base
model must equal `base_model`, and the template must be the one that job used (`auto` takes it). For
`dpo`, `kto` and `grpo` the parent's model (base plus its adapter, or its full weights) is also the
reference model.
"""

FOOTER_PPO = """\
## Why there is no `ppo`

LLaMA-Factory calls its online reinforcement-learning stage `ppo`. airtune trains with TRL, which no
longer has a PPO trainer, so `ppo` is refused with a message that points to `grpo`: online RL
against a reward model (a finished `rm` job named in `reward_model`), with TRL's GRPO trainer.
"""

FOOTER_LORAPLUS = """\
## `loraplus_lr_ratio`

The field means what it means in LoRA+ and in PEFT: the learning rate of LoRA's B matrices is this
many times that of the A matrices (the paper's typical value is 16). The platform's original form
describes it differently and recommends 0.5–1.0, which would make B learn slower than A; the help
texts here (English and Chinese) say what it really does.
"""

FOOTER_CATALOG = """\
## Names the catalog ships

So that examples, docs and tests agree, the catalog (`configs/`) has at least these names (more may
be added; `tests/test_catalog.py` checks them):

- models: {models}. `tiny-llama-dev` is built locally (`airtune make-tiny-model`; a base model,
  template `chatml`).
- templates: {templates}.
- datasets: {datasets}: LLaMA-Factory's demo files under its names, in `data/llamafactory-demo/`.
- locations: {locations}. `k8s-example` is a Kubernetes location with GPU types
  `nvidia-h100-80gb` and `nvidia-a100-80gb` (8 GPUs a node, bf16) and `nvidia-t4` (4 GPUs a node, no
  bf16); `local` offers `cpu` and `auto` (this machine's GPUs).
"""


# -- rendering ------------------------------------------------------------------------------------


def _code(value) -> str:
    return f"`{value}`"


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default_text(f: FieldInfo, lang: str = "en") -> str:
    if f.required:
        return "— (required)" if lang == "en" else "—（必填）"
    described = f.default_zh if lang == "zh" else f.default_en
    if described:
        return described
    if f.default is None:
        return "empty" if lang == "en" else "留空"
    if isinstance(f.default, bool):
        return _code("true" if f.default else "false")
    if isinstance(f.default, (dict, list)):
        return _code(_json(f.default))
    return _code(f.default)


def _type_text(f: FieldInfo) -> str:
    text = _KIND_WORDS[f.kind]
    if f.catalog:
        text = _CATALOG_SOURCES[f.catalog] if f.kind == "str" else f"{text}: {_CATALOG_SOURCES[f.catalog]}"
    return text + ("; required" if f.required else "")


def _sample_value(f: FieldInfo):
    """A value of `f` its own rules accept, for the used_with examples."""
    if f.kind == "bool":
        return True
    if f.kind == "choice":
        return f.choices[0]
    if f.kind == "int":
        return int(f.ge if f.ge is not None else 1)
    if f.kind == "float":
        return 0.5
    if f.kind == "target":
        return "all"
    if f.kind == "str":
        return "some-job"
    raise AssertionError(f"no sample value for {f.name} ({f.kind})")


def _used_with_examples() -> list[dict]:
    """For each option used only with some values of another field: one job giving it otherwise."""
    examples = []
    for f in FIELDS:
        for other, allowed in f.used_with.items():
            wrong = next(c for c in FIELD_BY_NAME[other].choices if c not in allowed)
            examples.append({other: wrong, f.name: _sample_value(f)})
    return examples


def rule_messages() -> dict[str, list[tuple[dict, str]]]:
    """field -> [(the example job's own keys, the message the code gives)], in table order.

    Raises RuntimeError when an example no longer gives exactly one error: the rule changed, so the
    examples here must change with it."""
    found: dict[str, list[tuple[dict, str]]] = {}
    for example in [*_used_with_examples(), *RULE_EXAMPLES]:
        _, errors, _ = parse_partial({**_BASE_JOB, **example})
        if len(errors) != 1:
            raise RuntimeError(f"formdoc: the example job {example} gives {len(errors)} errors, not one: "
                               + "; ".join(map(str, errors)) + " (update RULE_EXAMPLES in src/airtune/formdoc.py)")
        found.setdefault(errors[0].field.split(".")[0], []).append((example, errors[0].message))
    return {name: found[name] for name in FIELD_BY_NAME if name in found}


def _example_text(example: dict) -> str:
    return ", ".join(f"`{k}: {_json(v) if not isinstance(v, str) else v}`" for k, v in example.items())


def _field_block(f: FieldInfo, rules: list[tuple[dict, str]]) -> list[str]:
    lines = [f"### `{f.name}`", "", f"**{f.label_en}** · **{f.label_zh}**", ""]
    lines.append(f"- Type: {_type_text(f)}.")
    if not (f.catalog and f.kind == "str"):  # a catalog name: the type line says where from
        lines.append(f"- Accepted: {f.accepted('en')}.")
    if f.kind == "choice":
        for choice in f.choices:
            en, zh = f.choice_labels.get(choice, (None, None))
            lines.append(f"  - `{choice}`" + (f": {en} · {zh}" if en else ""))
    default_en, default_zh = _default_text(f, "en"), _default_text(f, "zh")
    lines.append(f"- Default: {default_en}" + (f" · {default_zh}" if default_zh != default_en else ""))
    if f.recommended_en:
        lines.append(f"- Recommended: {f.recommended_en} · 推荐：{f.recommended_zh}")
    lines.append(f"- Help: {f.help_en}")
    lines.append(f"- 说明：{f.help_zh}")
    for note in NOTES.get(f.name, ()):
        lines.append(f"- Note: {note}")
    lines.append(f"- Schema (checked when a run is triggered): `{_json(param_schema(f.name))}`")
    if rules or f.name in CHECKED_BY_VALIDATE:
        lines.append("- Rules:")
        for example, message in rules:
            lines.append(f"  - {_example_text(example)}: “{message}”")
        for rule in CHECKED_BY_VALIDATE.get(f.name, ()):
            lines.append(f"  - {rule}")
    lines.append("")
    return lines


def _extra_args_section() -> list[str]:
    reserved = ", ".join(_code(k) for k in sorted(EXTRA_ARGS_RESERVED))
    prefixes = ", ".join(_code(p + "…") for p in EXTRA_ARGS_RESERVED_PREFIXES)
    lines = ["## Keys `extra_args` may not set", "",
             f"airtune sets these itself: {reserved}, and every key starting {prefixes}.", "",
             "These are set by a field of the form (use the field):", "",
             "| `extra_args` key | field |", "|---|---|"]
    lines += [f"| `{key}` | {', '.join(_code(n.strip()) for n in field.split('/'))} |"
              for key, field in sorted(EXTRA_ARGS_FROM_FIELDS.items())]
    return [*lines, ""]


def _planned_section() -> list[str]:
    rows = [row for row in PLANNED if row[0] not in FIELD_BY_NAME]
    if not rows:
        return []
    lines = ["## Planned: evaluation, promotion and notifications", "",
             "These keys belong to the form's contract but are not fields of the table yet: a job giving one "
             "is refused today as an unknown key. They will form a fifth section, shown collapsed after "
             "section 4. The `evaluate` task always computes what it can cheaply; these fields choose the rest.",
             "", "| key | type / values | default | rules |", "|---|---|---|---|"]
    lines += [f"| `{key}` | {kind} | {default} | {rules} |" for key, kind, default, rules in rows]
    return [*lines, ""]


def render() -> str:
    """The whole of docs/form.md."""
    unknown = (set(CHECKED_BY_VALIDATE) | set(NOTES)) - set(FIELD_BY_NAME)
    if unknown:
        raise RuntimeError(f"formdoc: notes for keys that are not fields of the table: {', '.join(sorted(unknown))}")
    rules = rule_messages()
    out = [f"<!-- Generated from the field table in src/airtune/spec/fields.py by src/airtune/formdoc.py: do not edit "
           f"by hand. Regenerate with `{REGENERATE}` (`airtune form-doc`); `airtune form-doc --check` fails "
           f"when this file is out of date. -->", "", HEADER]
    out += ["## Sections", ""]
    out += [f"{s.number}. [{s.title_en} ({s.title_zh})](#section-{s.number})" for s in SECTIONS]
    out.append("")
    for s in SECTIONS:
        fields = [f for f in FIELDS if f.section == s.number]
        out += [f'<a id="section-{s.number}"></a>', "", f"## Section {s.number}: {s.title_en} ({s.title_zh})", ""]
        out += ["| key | label | 标签 | type | default |", "|---|---|---|---|---|"]
        out += [f"| [`{f.name}`](#{f.name}) | {_one_line(f.label_en)} | {_one_line(f.label_zh)} | "
                f"{_one_line(_type_text(f))} | {_one_line(_default_text(f))} |" for f in fields]
        out.append("")
        for f in fields:
            out += _field_block(f, rules.get(f.name, []))
    stage_rows = "\n".join(f"| `{stage}` | {' or '.join(KIND_WORDS[k] for k in kinds)} (kind "
                           f"{', '.join(_code(k) for k in kinds)}) |" for stage, kinds in STAGE_DATASET_KINDS.items())
    out.append(FOOTER_STAGES.format(rows=stage_rows))
    out.append(FOOTER_PARENT.format(stages=", ".join(_code(s) for s in PARENT_STAGES[:-1])
                                    + f" or {_code(PARENT_STAGES[-1])}"))
    out.append(FOOTER_PPO)
    out.append(FOOTER_LORAPLUS)
    out += _extra_args_section()
    out += _planned_section()
    out.append(FOOTER_CATALOG.format(**{k: ", ".join(_code(n) for n in v) for k, v in CATALOG_NAMES.items()}))
    return "\n".join(out).rstrip("\n") + "\n"


def default_path() -> Path:
    return paths.repo_root() / DOC_PATH


def write(path: Path | None = None) -> Path:
    path = Path(path or default_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(), encoding="utf-8")
    return path


def check(path: Path | None = None) -> str | None:
    """None when `path` holds what render() writes, else what is wrong (one line)."""
    path = Path(path or default_path())
    if not path.is_file():
        return f"{path} is missing; run `{REGENERATE}` (or `airtune form-doc`) and commit it"
    current = path.read_text(encoding="utf-8")
    expected = render()
    if current == expected:
        return None
    old, new = current.splitlines(), expected.splitlines()
    line = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    return (f"{path} is not current with the field table in src/airtune/spec/fields.py (first difference at line "
            f"{line + 1}); run `{REGENERATE}` (or `airtune form-doc`) and commit it")
