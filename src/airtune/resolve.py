"""`resolve(spec, catalog)`: a parsed JobSpec as the *resolved spec* every later step reads.

It looks the job's names up in the catalog, resolves every `auto` (template, GPU type and count,
compute type, booster, distributed strategy) and the defaults that depend on the method or stage
(LoRA 8/16/0.1, lora_target, packing, ...), applies docs/form.md's rules that need the catalog, the
hardware or earlier jobs, and estimates the GPU memory one training process needs. Every error
comes at once, in one `SpecError`. The shape of the result is docs/architecture.md's.

Imports: spec and catalog only. torch is imported (lazily, in `detect_hardware`) only for location
`local` with gpu_type `auto` when no `hardware` is given. `extra_args` is checked against a table of
the stage's TRL config fields (airtune.train.trl_fields), never by importing trl.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Protocol

import airtune
from airtune import paths
from airtune.catalog import Catalog, Location, ModelEntry
from airtune.resolved import (BenchmarkRecord, DatasetRecord, EarlierJob, Estimate, LocationRecord,
                              ModelRecord, Resolved, Runtime, TemplateRecord, as_settings,
                              settings_from_json)
from airtune.spec import APPLIED_DEFAULTS, FieldError, JobSpec, SpecError, parse_partial

# docs/form.md: the dataset's format must fit the stage (one table, airtune.stages; the data step reads it too).
from airtune.stages import KIND_WORDS, STAGE_DATASET_KINDS  # noqa: E402
# docs/form.md: a parent is a finished pt, sft, dpo, kto or grpo job (an rm job is no parent).
PARENT_STAGES = ("pt", "sft", "dpo", "kto", "grpo")
HALF = ("fp16", "bf16", "pure_bf16")
ZERO3 = ("zero3", "zero3_offload")
# transformers fetches EETQ's kernels from the hub (kernels-community/quantization-eetq): usable only
# where they are already in the local Hugging Face cache.
EETQ_KERNEL_REPO = "kernels-community/quantization-eetq"

_UNSET = object()


# -- earlier jobs ---------------------------------------------------------------------------------


class JobLookup(Protocol):
    """Finds an earlier job by name (for parent_job and reward_model).

    `get(name)` returns None when no job has that name, else a dict:
      name, state ("finished" or another word), run_id, job_dir,
      resolved (that run's resolved spec, docs/architecture.md), result (its result.json or None),
      final_dir (absolute path of its final adapter/weights, or None).
    """

    def get(self, name: str) -> dict | None: ...


class WorkspaceJobs:
    """The default JobLookup: `<workspace>/jobs/<name>/<run>/spec.json`, finished when result.json exists.

    Of several runs of one name (a retraining DAG adds one per run), the newest finished one counts.
    """

    def __init__(self, workspace: Path | str | None = None):
        self.root = Path(workspace or paths.workspace()) / "jobs"

    def get(self, name: str) -> dict | None:
        folder = self.root / name
        if not folder.is_dir():
            return None
        runs = [d for d in folder.iterdir() if d.is_dir() and (d / "spec.json").is_file()]
        if not runs:
            return None
        finished = [d for d in runs if (d / "result.json").is_file()]
        if finished:
            run = max(finished, key=lambda d: (d / "result.json").stat().st_mtime)
            result = _read_json(run / "result.json")
            final = (run / (result.get("final_dir") or "output/final")).resolve()
            state = "finished"
        else:
            run = max(runs, key=lambda d: (d / "spec.json").stat().st_mtime)
            result, final, state = None, None, "not finished (no result.json)"
        return {"name": name, "state": state, "run_id": run.name, "job_dir": str(run),
                "resolved": _read_json(run / "spec.json"), "result": result,
                "final_dir": str(final) if final else None}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# -- hardware -------------------------------------------------------------------------------------

HARDWARE_KEYS = {"cuda_devices": 0, "bf16": False, "flash_attn": False, "eetq": False, "gpu_memory_gib": None,
                 "cpu_bf16": False}
# x86 CPU flags with bf16 matrix instructions (oneDNN runs PyTorch's bf16 matmuls on them); elsewhere bf16 on
# the CPU is emulated, slower than fp32.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """This machine's CPU has bf16 matrix instructions (AVX-512 BF16 or AMX; Linux's /proc/cpuinfo flags).
    Cheap: no torch."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return any(f in flags for f in CPU_BF16_FLAGS)
    return False


def detect_hardware() -> dict:
    """This machine's accelerators, for location `local` with gpu_type `auto` (torch imported here only).

    cuda_devices, bf16 (every device has it), flash_attn (the package is installed and the GPU is Ampere
    or newer, which FlashAttention-2 needs), eetq (its kernels are in the local hub cache, CUDA present),
    gpu_memory_gib (the smallest device's memory), cpu_bf16 (the CPU has bf16 matrix instructions).
    """
    hw = dict(HARDWARE_KEYS)
    hw["cpu_bf16"] = cpu_has_bf16()
    try:
        import torch
    except ImportError:
        return hw
    if not torch.cuda.is_available():
        return hw
    n = torch.cuda.device_count()
    props = [torch.cuda.get_device_properties(i) for i in range(n)]
    hw.update(
        cuda_devices=n,
        bf16=bool(torch.cuda.is_bf16_supported()),
        flash_attn=installed("flash_attn") and min(p.major for p in props) >= 8,
        eetq=_eetq_kernels_cached(),
        gpu_memory_gib=round(min(p.total_memory for p in props) / 2**30, 1),
    )
    return hw


def installed(package: str) -> bool:
    """Whether a Python package can be imported here (where a local job trains)."""
    return importlib.util.find_spec(package) is not None


def _eetq_kernels_cached() -> bool:
    if not installed("kernels"):
        return False
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "hub")
    return (Path(hub) / ("models--" + EETQ_KERNEL_REPO.replace("/", "--"))).is_dir()


# -- GPU memory estimate --------------------------------------------------------------------------

GIB = 2**30
# The catalog has no vocabulary size, so a large modern one is assumed (Llama 3: 128,256; Qwen2.5:
# 151,936); prepare_dataset uses the tokenizer's.
ASSUMED_VOCAB = 128_000
# Optimizer state bytes per trainable parameter (fp32 states): AdamW keeps two moments (2 × 4 B),
# the 8-bit ones from bitsandbytes keep 1 B per moment, Adafactor factors its second moment
# (rows + columns per matrix: negligible), SGD without momentum keeps nothing.
OPTIMIZER_STATE_BYTES = {"adamw_torch": 8.0, "adamw_torch_fused": 8.0, "adamw_8bit": 2.0, "lion_8bit": 1.0,
                         "adafactor": 0.0, "sgd": 0.0}
# TRL's fused LM head projects the LM head in tiles of TOKEN_CHUNK_SIZE tokens × _CHUNKED_LOGPROB_CHUNK_SIZE
# vocabulary entries (trl/kernels/chunked_logprob.py, trl/trainer/utils.py; TRL is pinned).
FUSED_TILE_TOKENS = 4096
FUSED_TILE_VOCAB = 32768
# Stages whose rows are two sequences in one forward pass (TRL concatenates chosen and rejected).
SEQUENCES_PER_ROW = {"dpo": 2, "rm": 2}


def trainable_params(model: ModelEntry, method: str, lora_rank: int | None, freeze_layers: int | None) -> float:
    """Trainable parameters, approximately.

    lora: rank × (in + out) per adapted linear layer. With every linear layer adapted, a Llama/Qwen
    layer sums to about 24 × hidden (q, o: 2h each; k, v: h + kv; gate, up, down: h + intermediate,
    with intermediate ≈ 3.5-5.3 h): qwen2.5-7b at rank 8 gives 24 × 3584 × 28 × 8 = 19.3 M (PEFT
    counts 20.2 M). freeze: the last N of L layers (embeddings excluded). full: every parameter.
    """
    total = model.params_b * 1e9
    if method == "full":
        return total
    layers = model.num_layers or 0
    if method == "freeze":
        return total * min(freeze_layers or 2, layers) / layers if layers else total * 0.1
    if model.hidden_size and layers:
        return 24.0 * model.hidden_size * layers * (lora_rank or 8)
    return total * 0.005


def estimate_gpu_memory(model: ModelEntry, spec: Any, world_size: int, *, row_tokens: int | None = None,
                        vocab_size: int | None = None) -> dict:
    """GPU memory one training process needs, in GiB, with its parts (resolved spec values).

    Two totals: `gpu_memory_gib_certain`, what the job needs whatever its rows' lengths (weights,
    gradients, optimizer states, overhead), and `gpu_memory_gib_per_process`, that plus the
    activations and LM-head memory of a batch whose longest row has `row_tokens` tokens (default
    cutoff_len: the worst case validate sees; prepare_dataset passes the data's real longest row).

    weights      params × bytes: QLoRA 4-bit 0.52 B (nf4 + double-quantized scales), 8-bit 1.03 B;
                 full fine-tuning keeps fp32 master weights (4 B) unless pure_bf16 (2 B); lora and
                 freeze load the frozen weights in the half type (2 B) or fp32 (4 B).
                 ZeRO-3 shards them over the processes.
    trainable    per trainable param: fp32 gradient (4 B; pure_bf16 2 B) + optimizer states
                 (AdamW 8 B; pure_bf16 4 B) + an fp32 copy where the weights are not already fp32
                 (lora adapters 4 B, freeze's upcast layers 2 B). ZeRO-2/3 shard gradients and
                 states; zero3_offload moves the states to the CPU.
    activations  a batch is padded to its longest row: batch × row_tokens tokens (× 2 for dpo and rm,
                 whose rows are a chosen and a rejected sequence in one forward pass). The trainer
                 checkpoints activations on the GPU (train/args.py): each layer keeps its input
                 (2 B × tokens × hidden), and the layer being recomputed needs ~34 B × tokens × hidden
                 (Korthikanti et al. 2022, half precision, flash/SDPA attention: no tokens² term);
                 twice that in fp32.
    logits       TRL 1.16's trainers (SFT, pt, DPO, KTO, GRPO) compute the loss with a fused LM head
                 (trl.trainer.utils.add_fused_lm_head, trl/kernels/chunked_logprob.py): the
                 logits are never held for the whole batch, only one tile of 4096 tokens × 32768
                 vocabulary entries in the compute type, plus the scored positions' hidden states
                 (compute type) and their fp32 gradient. Label smoothing (extra_args
                 label_smoothing_factor) takes the model's full logits instead: tokens × vocab in the
                 compute type plus an fp32 copy. rm has a one-number score head: nothing.
    overhead     CUDA context and allocator slack: 1 GiB + 5 %.

    Example (the tests'): qwen2.5-7b-instruct, lora bf16, batch 8 × 2048 tokens on one H100:
    14.2 (weights) + 0.3 (adapter states) + 4.9 (layers) + 0.6 (fused LM head) + 2.0 = ~22 GiB of 80.
    """
    spec = as_settings(spec)
    method, compute = spec.finetuning_method, spec.compute_type
    bits = spec.quantization_bit
    distributed, optimizer = spec.distributed, spec.optimizer
    params = model.params_b * 1e9
    if method == "lora" and bits == "4":
        weight_bytes = 0.52
    elif method == "lora" and bits == "8":
        weight_bytes = 1.03
    elif compute == "pure_bf16":
        weight_bytes = 2.0
    elif method == "full" or compute == "fp32":
        weight_bytes = 4.0
    else:
        weight_bytes = 2.0
    weights = params * weight_bytes

    trainable = trainable_params(model, method, spec.lora_rank, spec.freeze_trainable_layers)
    grad_bytes = 2.0 if compute == "pure_bf16" else 4.0
    state_bytes = OPTIMIZER_STATE_BYTES.get(optimizer, 8.0) / (2.0 if compute == "pure_bf16" else 1.0)
    copy_bytes = 4.0 if method == "lora" else (4.0 - weight_bytes if method == "freeze" else 0.0)
    grads, states, copies = trainable * grad_bytes, trainable * state_bytes, trainable * copy_bytes

    n = max(1, world_size)
    if distributed in ("zero2", "zero3", "zero3_offload"):
        grads /= n
        states /= n
    if distributed in ZERO3:
        weights /= n
        copies /= n
    if distributed == "zero3_offload":
        states = 0.0

    stage = spec.stage
    row = int(row_tokens if row_tokens is not None else spec.cutoff_len)
    tokens = spec.per_device_train_batch_size * row * SEQUENCES_PER_ROW.get(stage, 1)
    hidden = model.hidden_size or int(math.sqrt(params / (12 * (model.num_layers or 32))))
    layers = model.num_layers or 32
    compute_bytes = 4.0 if compute == "fp32" else 2.0
    layer_acts = tokens * hidden * (2.0 * layers + 34.0) * compute_bytes / 2.0
    vocab = vocab_size or getattr(model, "vocab_size", None) or ASSUMED_VOCAB
    if stage == "rm":
        logits = 0.0
    elif float(spec.extra_args.get("label_smoothing_factor") or 0) > 0:
        logits = tokens * vocab * (compute_bytes + 4.0)
    else:
        logits = (min(tokens, FUSED_TILE_TOKENS) * min(vocab, FUSED_TILE_VOCAB) * compute_bytes
                  + tokens * hidden * (compute_bytes + 4.0) + tokens * 32.0)

    certain = weights + grads + states + copies
    certain_total = certain * 1.05 + GIB
    subtotal = certain + layer_acts + logits
    total = subtotal * 1.05 + GIB
    parts = {"weights": weights, "trainable_states": grads + states + copies, "activations": layer_acts,
             "logits": logits, "overhead": total - subtotal}
    return {
        "gpu_memory_gib_per_process": round(total / GIB, 1),
        "gpu_memory_gib_certain": round(certain_total / GIB, 1),
        "row_tokens": row,
        "parts_gib": {k: round(v / GIB, 2) for k, v in parts.items()},
        "trainable_params": int(trainable),
    }


def memory_refusal(estimate: dict, available: float, gpu: str, *, certain: bool, rows: str) -> str:
    """The message of a job whose estimate does not fit its GPUs (validate's and prepare_dataset's)."""
    if certain:
        parts = {k: v for k, v in estimate["parts_gib"].items() if k in ("weights", "trainable_states")}
        return (f"this job needs about {estimate['gpu_memory_gib_certain']} GiB of GPU memory per process before any "
                f"row's activations (estimate; parts in GiB: {_parts(parts)}, overhead) but {gpu}'s GPUs have "
                f"{available} GiB; use lora, quantization_bit 4, or more GPUs with distributed zero3")
    return (f"this job needs about {estimate['gpu_memory_gib_per_process']} GiB of GPU memory per process {rows} "
            f"(estimate; parts in GiB: {_parts(estimate['parts_gib'])}) but {gpu}'s GPUs have {available} GiB; "
            f"use a smaller per_device_train_batch_size or cutoff_len, lora, quantization_bit 4, or more GPUs "
            f"with distributed zero3")


# -- extra_args against the stage's TRL config ----------------------------------------------------

def _trl_config_fields(stage: str, pref_loss: str | None) -> tuple[str, dict]:
    """(class name, {field: [type, shown type] or None}) of the TRL config the stage trains with, from the
    table generated from the pinned TRL (airtune.train.trl_fields): no TRL import, validate stays fast."""
    from airtune.train import trl_fields

    return trl_fields.config_fields(stage, pref_loss)


# -- resolve --------------------------------------------------------------------------------------


def resolve_typed(spec: JobSpec, catalog: Catalog, *, hardware: dict | None = None,
                  jobs: JobLookup | None = None) -> Resolved:
    """The resolved spec as a typed record (airtune.resolved). Raises SpecError with every error at once."""
    resolved, errors = _resolve_typed(spec, catalog, hardware=hardware, jobs=jobs, skip=set())
    if errors:
        raise SpecError(errors)
    return resolved


def resolve(spec: JobSpec, catalog: Catalog, *, hardware: dict | None = None, jobs: JobLookup | None = None) -> dict:
    """The resolved spec as spec.json holds it (docs/architecture.md): `resolve_typed(...).to_json()`."""
    return resolve_typed(spec, catalog, hardware=hardware, jobs=jobs).to_json()


def validate_typed(mapping: Mapping, catalog: Catalog | None = None, *, hardware: dict | None = None,
                   jobs: JobLookup | None = None) -> Resolved:
    """parse + resolve, reporting the errors of both at once; the typed record (airtune.resolved)."""
    spec, errors, bad = parse_partial(mapping)
    resolved, more = _resolve_typed(spec, catalog or Catalog.load(), hardware=hardware, jobs=jobs, skip=bad)
    if errors or more:
        raise SpecError(errors + more)
    return resolved


def validate_mapping(mapping: Mapping, catalog: Catalog | None = None, *, hardware: dict | None = None,
                     jobs: JobLookup | None = None) -> dict:
    """parse + resolve, reporting the errors of both at once (what `airtune validate` and the validate task run):
    the resolved spec as spec.json holds it, `validate_typed(...).to_json()`."""
    return validate_typed(mapping, catalog, hardware=hardware, jobs=jobs).to_json()


def format_errors(error: SpecError) -> str:
    """Every error on its own line, numbered, for logs and the CLI."""
    n = len(error.errors)
    head = f"{n} error{'s' if n != 1 else ''}:"
    return "\n".join([head, *(f"  {i}. {e}" for i, e in enumerate(error.errors, 1))])


def _resolve(spec: JobSpec, catalog: Catalog, *, hardware: dict | None, jobs: JobLookup | None,
             skip: set) -> tuple[dict, list[FieldError]]:
    """(resolved spec as spec.json holds it, errors): `_resolve_typed`'s, for callers that read the dict."""
    resolved, errors = _resolve_typed(spec, catalog, hardware=hardware, jobs=jobs, skip=skip)
    return resolved.to_json(), errors


class _Rules:
    """One resolve's state: the job's values, the errors and warnings so far, and `refuse`."""

    def __init__(self, v: dict, skip: set):
        self.v, self.skip = v, skip
        self.errors: list[FieldError] = []
        self.warnings: list[str] = []

    def refuse(self, name: str, message: str, *involved: str, value: Any = _UNSET) -> None:
        # A rule is not checked when a field it involves is already refused (by parse, or by an
        # earlier rule here): one mistake, one message. Several values of one field (two unknown
        # datasets) are each reported.
        refused = self.skip | {e.field.split(".")[0] for e in self.errors}
        if name.split(".")[0] in self.skip or refused.intersection(involved):
            return
        self.errors.append(FieldError(name, self.v.get(name) if value is _UNSET else value, message))


@dataclasses.dataclass(frozen=True)
class _Hardware:
    """Where the job trains, as resolved: the GPU type, what it offers, and the processes."""

    gpu_name: str | None
    gpu: Any  # the location's GpuType, or None
    is_local: bool
    detected: bool  # location local with gpu_type auto: this machine's GPUs
    capacity: int | None
    has_bf16: bool
    memory_gib: float | None
    has_flash: bool
    has_eetq: bool
    gpus: int
    nodes: int
    facts: Mapping | None = None  # the hardware given or detected (HARDWARE_KEYS); None: neither

    def cpu_bf16(self) -> bool:
        """This machine's CPU has bf16 matrix instructions: from the facts, else read now (the one rule that
        asks does so only for bf16 on the CPU)."""
        return bool(self.facts.get("cpu_bf16")) if self.facts is not None else cpu_has_bf16()

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus

    @property
    def world_size(self) -> int:
        return self.nodes * max(1, self.gpus)


def _resolve_typed(spec: JobSpec, catalog: Catalog, *, hardware: dict | None, jobs: JobLookup | None,
                   skip: set) -> tuple[Resolved, list[FieldError]]:
    """(resolved spec, errors). Rules that involve a field in `skip` (already refused) are not checked.
    One function per concern, in this order (a later one reads what an earlier one resolved)."""
    r = _Rules(spec.to_dict(), skip)
    v = r.v
    model, location = _look_up(r, catalog)
    fitting = STAGE_DATASET_KINDS[v["stage"]]
    datasets = _catalog_datasets(r, catalog, "dataset", "trains on", fitting)
    eval_datasets = _catalog_datasets(r, catalog, "eval_dataset", "evaluates on", fitting)
    benchmarks = _benchmarks(r, catalog)
    notify_ids = _notify(r, location)
    parent, reward_model = _earlier_jobs(r, jobs)
    template = _template(r, catalog, model, parent)
    hw = _hardware(r, location, hardware)
    compute, distributed, booster = _precision_and_kernels(r, hw, location)
    _quantization(r, hw, location)
    out = dict(v)
    out.update(template=template, gpu_type=hw.gpu_name, gpus_per_node=hw.gpus, nodes=hw.nodes, compute_type=compute,
               distributed=distributed, booster=booster)
    _applied_defaults(r, out, model, notify_ids)
    rope_factor = _rope(r, out, model)
    _extra_args(r, out)
    estimate = _memory_estimate(r, out, model, hw)

    resolved = Resolved(
        airtune_version=airtune.__version__,
        spec=settings_from_json(out),
        model=_model_record(model, rope_factor),
        template=(TemplateRecord(name=template, path=str(catalog.templates[template].path))
                  if template in catalog.templates else None),
        datasets=tuple(datasets),
        eval_datasets=tuple(eval_datasets),
        benchmarks=tuple(BenchmarkRecord(**b) for b in benchmarks),
        location=LocationRecord.from_json(_location_record(location, hw.gpu_name)),
        runtime=Runtime(nodes=hw.nodes, gpus_per_node=hw.gpus, world_size=hw.world_size, device=hw.device,
                        processes_per_node=max(1, hw.gpus), gpu_type=hw.gpu_name),
        parent=EarlierJob(**parent) if parent else None,
        reward_model=EarlierJob(**reward_model) if reward_model else None,
        estimate=Estimate(**estimate),
        warnings=tuple(r.warnings),
    )
    return resolved, r.errors


# -- catalog look-ups -----------------------------------------------------------------------------

def _look_up(r: _Rules, catalog: Catalog) -> tuple[ModelEntry | None, Location | None]:
    v = r.v
    model = catalog.models.get(v["base_model"]) if v["base_model"] else None
    if v["base_model"] and model is None:
        r.refuse("base_model", "not in the catalog (configs/models.yaml); accepted: " + ", ".join(catalog.models))
    location = catalog.locations.get(v["location"])
    if location is None:
        r.refuse("location", "not in configs/locations.yaml; accepted: " + ", ".join(catalog.locations))
    return model, location


def _catalog_datasets(r: _Rules, catalog: Catalog, field: str, verb: str, fitting) -> list[DatasetRecord]:
    """The named catalog datasets of `field` (dataset, eval_dataset), each refused unless it fits the stage."""
    stage, records = r.v["stage"], []
    for name in r.v[field] or []:
        entry = catalog.datasets.get(name)
        if entry is None:
            r.refuse(field, "not in the catalog (configs/datasets.yaml); accepted: " + ", ".join(catalog.datasets),
                     value=name)
            continue
        if entry.kind not in fitting:
            fits = [d.name for d in catalog.datasets.values() if d.kind in fitting]
            r.refuse(field, f"it holds {KIND_WORDS.get(entry.kind, entry.kind)} (kind {entry.kind}) but stage "
                            f"{stage} {verb} {' or '.join(KIND_WORDS[k] for k in fitting)}; datasets that fit: "
                            f"{', '.join(fits) or 'none in the catalog'}", "stage", value=name)
        records.append(_dataset_record(entry))
    return records


def _benchmarks(r: _Rules, catalog: Catalog) -> list[dict]:
    """eval_benchmarks (docs/form.md, section 5): catalog benchmarks whose files exist."""
    benchmarks = []
    for name in r.v["eval_benchmarks"] or []:
        bench = catalog.benchmarks.get(name)
        if bench is None:
            r.refuse("eval_benchmarks", "not in the catalog (configs/benchmarks.yaml); accepted: "
                                        + (", ".join(catalog.benchmarks) or "none: the catalog has no benchmarks yet"),
                     value=name)
            continue
        missing = [str(f) for f in bench.files if not f.is_file()]
        if missing:
            r.refuse("eval_benchmarks", f"its file {missing[0]} does not exist (configs/benchmarks.yaml)", value=name)
        benchmarks.append({"name": bench.name, "files": [str(f) for f in bench.files], "lang": bench.lang})
    return benchmarks


def _notify(r: _Rules, location: Location | None) -> list[str]:
    """notify: Airflow connections of a notifier provider's type; empty: the location's (docs/notifications.md)."""
    v = r.v
    notify_ids = list(v["notify"] or (location.notify if location else ()))
    from_location = bool(notify_ids) and not v["notify"]
    if notify_ids and "notify" not in r.skip:
        from airtune import notify as notifying

        for conn_id, problem in notifying.check_connections(notify_ids):
            r.refuse("notify", problem + (f" (the default notify of location {location.name})" if from_location else ""),
                     value=conn_id)
    return notify_ids


# -- earlier jobs: parent_job, reward_model ---------------------------------------------------------

def _earlier_jobs(r: _Rules, jobs: JobLookup | None) -> tuple[dict | None, dict | None]:
    v = r.v
    lookup = jobs
    if lookup is None and (v["parent_job"] or v["reward_model"]):
        lookup = WorkspaceJobs()
    parent = _parent(v, lookup, r.refuse) if v["parent_job"] else None
    reward_model = _reward_model(v, lookup, r.refuse) if v["reward_model"] else None
    return parent, reward_model


def _template(r: _Rules, catalog: Catalog, model: ModelEntry | None, parent: dict | None) -> str | None:
    template = r.v["template"]
    if template == "auto":
        return parent["template"] if parent and parent.get("template") else (model.template if model else None)
    if template not in catalog.templates:
        r.refuse("template", "not a template of configs/templates/; accepted: auto, " + ", ".join(catalog.templates))
        return None
    if model and model.is_instruct and template != model.template:
        r.refuse("template", f"{model.name} is an instruct/chat model trained with template {model.template!r}: "
                             f"it takes only that one (or auto); a base model may take any", "base_model")
    if parent and parent.get("template") and template != parent["template"]:
        r.refuse("template", f"the parent job {parent['name']!r} used template {parent['template']!r}; "
                             f"continuing from it takes the same template (or auto)", "parent_job")
    return template


# -- hardware: GPU type and count, precision, kernels, quantization --------------------------------

def _hardware(r: _Rules, location: Location | None, hardware: dict | None) -> _Hardware:
    v = r.v
    gpu_name = v["gpu_type"] or (location.default_gpu_type if location else None)
    gpu = location.gpu_types.get(gpu_name) if location else None
    if location and gpu is None:
        r.refuse("gpu_type", f"location {location.name!r} offers: " + ", ".join(location.gpu_types), "location")
    is_local = bool(location and location.is_local)
    detected = is_local and gpu_name == "auto"
    facts = hardware
    if detected:
        hw = facts = {**HARDWARE_KEYS, **(hardware if hardware is not None else detect_hardware())}
        capacity, has_bf16, memory_gib = int(hw["cuda_devices"] or 0), bool(hw["bf16"]), hw["gpu_memory_gib"]
        has_flash, has_eetq = bool(hw["flash_attn"]), bool(hw["eetq"])
    elif gpu is not None:
        capacity = gpu.gpus_per_node if gpu.gpus_per_node is not None else None
        has_bf16, memory_gib = bool(gpu.bf16), gpu.memory_gib or None
        # A Kubernetes GPU type may declare what its training image offers (configs/locations.yaml).
        has_flash, has_eetq = gpu.flash_attn, gpu.eetq_kernels
    else:
        capacity, has_bf16, memory_gib, has_flash, has_eetq = None, False, None, False, False

    gpus = v["gpus_per_node"]
    where = ("this machine has" if detected else f"the {gpu_name} nodes of {location.name if location else '?'} have")
    if gpus is None:
        gpus = (capacity or 0) if is_local else 1
    elif location and gpu is not None:
        if gpus == 0 and not is_local:
            accepted = f"1 to {capacity}" if capacity else f"1 or more, on a gpu_type with GPUs ({gpu_name} declares none)"
            r.refuse("gpus_per_node", f"0 (CPU only) only on location local; {location.name} is a Kubernetes location: "
                                      f"{accepted}", "location", "gpu_type")
        elif capacity is not None and gpus > capacity:
            if is_local and not detected:
                reason = f"gpu_type {gpu_name} trains on the CPU; pick gpu_type auto to use this machine's GPUs"
            else:
                reason = f"{where} {capacity} GPU{'s' if capacity != 1 else ''}"
            r.refuse("gpus_per_node", f"at most {capacity}: {reason}", "location", "gpu_type")
            gpus = capacity
    nodes = v["nodes"]
    if nodes > 1 and is_local:
        r.refuse("nodes", "more than 1 only on a Kubernetes location; local trains on this one machine", "location")
        nodes = 1
    return _Hardware(gpu_name=gpu_name, gpu=gpu, is_local=is_local, detected=detected, capacity=capacity,
                     has_bf16=has_bf16, memory_gib=memory_gib, has_flash=has_flash, has_eetq=has_eetq,
                     gpus=gpus, nodes=nodes, facts=facts)


def _precision_and_kernels(r: _Rules, hw: _Hardware, location: Location | None) -> tuple[str, str, str]:
    """(compute_type, distributed, booster), their autos resolved and checked against the hardware."""
    v, device, gpu_name = r.v, hw.device, hw.gpu_name
    compute = v["compute_type"]
    if compute == "auto":
        compute = ("bf16" if hw.has_bf16 else "fp16") if device == "cuda" else "fp32"
    elif hw.gpu is not None or hw.detected:
        if compute == "bf16" and device == "cpu" and hw.is_local:
            # bf16 mixed precision on a CPU with bf16 matrix instructions: about twice fp32's speed
            # (docs/benchmarks.md); elsewhere emulated, slower than fp32
            if not hw.cpu_bf16():
                r.refuse("compute_type", "bf16 on the CPU needs AVX-512 BF16 or AMX instructions and this machine's "
                                         "CPU has neither; use fp32 or auto", "gpu_type", "gpus_per_node", "location")
        elif compute in ("bf16", "pure_bf16") and device == "cpu":
            r.refuse("compute_type", f"{compute} needs a GPU with bf16 and this job trains on the CPU; use fp32 or auto",
                     "gpu_type", "gpus_per_node", "location")
        elif compute in ("bf16", "pure_bf16") and not hw.has_bf16:
            r.refuse("compute_type", f"the GPU type {gpu_name} has no bf16; use fp16, fp32 or auto", "gpu_type", "location")
        elif compute == "fp16" and device == "cpu":
            r.refuse("compute_type", "fp16 needs a GPU and this job trains on the CPU; use fp32 or auto",
                     "gpu_type", "gpus_per_node", "location")

    distributed = v["distributed"]
    if distributed == "auto":
        distributed = "zero3" if v["finetuning_method"] == "full" and hw.total_gpus > 1 else "ddp"
    elif distributed != "ddp" and device == "cpu" and location:
        r.refuse("distributed", f"{distributed} (DeepSpeed ZeRO) needs CUDA GPUs and this job trains on the CPU; "
                                f"use ddp or auto", "gpu_type", "gpus_per_node", "location")

    booster = v["booster"]
    if booster == "auto":
        booster = "flash_attention_2" if device == "cuda" and hw.has_flash and compute in HALF else "sdpa"
    elif booster == "flash_attention_2" and location:
        if device != "cuda" or compute not in HALF:
            r.refuse("booster", f"flash_attention_2 needs fp16 or bf16 on a CUDA GPU; this job has compute_type "
                                f"{compute} on the {'GPU' if device == 'cuda' else 'CPU'}; use auto (PyTorch SDPA)",
                     "compute_type", "gpu_type", "gpus_per_node", "location")
        elif hw.detected and not hw.has_flash:
            r.refuse("booster", "the flash-attn package is not installed here, or the GPU is older than Ampere; "
                                "use auto (PyTorch SDPA)", "gpu_type", "location")
        elif not hw.detected and not hw.has_flash:
            r.warnings.append(f"booster flash_attention_2: the training image of {v['location']} must have the "
                              f"flash-attn package (configs/locations.yaml does not declare flash_attn for {gpu_name})")
    elif booster == "unsloth" and location and hw.total_gpus != 1:
        r.refuse("booster", f"unsloth trains on exactly one GPU in total; this job has {hw.nodes} node(s) × {hw.gpus} "
                            f"GPU(s)", "nodes", "gpus_per_node", "gpu_type", "location")
    elif booster == "unsloth" and location:
        # Refused before any GPU is asked for, rather than failing in the pod: see args.py.
        r.refuse("booster", "Unsloth is not in airtune's training image and airtune's trainer does not load models "
                            "through it (it imports only with a CUDA GPU and patches transformers and TRL, which airtune "
                            "pins); use auto (flash-attention 2 where installed, else SDPA) or liger_kernel",
                 "gpu_type", "location")
    elif booster == "liger_kernel" and location and device != "cuda":
        r.refuse("booster", "liger_kernel needs a CUDA GPU (its kernels are Triton kernels) and this job trains on "
                            "the CPU", "gpu_type", "gpus_per_node", "location")
    return compute, distributed, booster


def _quantization(r: _Rules, hw: _Hardware, location: Location | None) -> None:
    v = r.v
    if v["quantization_bit"] != "none" and v["quantization_method"] == "eetq" and location:
        if hw.device != "cuda":
            r.refuse("quantization_method", "eetq needs a CUDA GPU and this job trains on the CPU; use bnb (it also "
                                            "runs on the CPU)", "gpu_type", "gpus_per_node", "location")
        elif not hw.has_eetq:
            place = "on this machine" if hw.detected else f"for {hw.gpu_name} at {v['location']} (configs/locations.yaml " \
                                                          f"declares no eetq_kernels)"
            r.refuse("quantization_method", f"eetq's kernels are not available {place} without a model hub "
                                            f"(transformers fetches {EETQ_KERNEL_REPO}); use bnb or hqq",
                     "gpu_type", "location")
    if v["quantization_bit"] != "none" and v["quantization_method"] == "hqq" and hw.is_local and not installed("hqq"):
        r.refuse("quantization_method", "hqq needs the hqq package, which is not installed on this machine (it comes "
                                        "with airtune[train]); install it, or use bnb", "location")


# -- defaults that depend on the method, stage or scheduler; RoPE; extra_args ------------------------

def _applied_defaults(r: _Rules, out: dict, model: ModelEntry | None, notify_ids: list[str]) -> None:
    v = r.v
    method, stage = v["finetuning_method"], v["stage"]
    lora = method == "lora"
    for name in ("lora_rank", "lora_alpha", "lora_dropout"):
        out[name] = (v[name] if v[name] is not None else APPLIED_DEFAULTS[name]) if lora else None
    if lora and out["lora_alpha"] is not None:
        out["lora_alpha"] = float(out["lora_alpha"])
    for name in ("loraplus_lr_ratio", "use_dora", "use_rslora", "export_merged"):
        out[name] = v[name] if lora else None
    if lora:
        out["lora_target"] = v["lora_target"] or (list(model.lora_target) if model and model.lora_target else "all")
    else:
        out["lora_target"] = None
    if method == "freeze":
        out["freeze_trainable_layers"] = v["freeze_trainable_layers"] or APPLIED_DEFAULTS["freeze_trainable_layers"]
        if model and model.num_layers and out["freeze_trainable_layers"] > model.num_layers:
            r.refuse("freeze_trainable_layers", f"at most the {model.num_layers} layers {model.name} has", "base_model",
                     value=out["freeze_trainable_layers"])
    else:
        out["freeze_trainable_layers"] = None
    out["pref_loss"] = (v["pref_loss"] or APPLIED_DEFAULTS["pref_loss"]) if stage == "dpo" else None
    out["pref_beta"] = (v["pref_beta"] or APPLIED_DEFAULTS["pref_beta"]) if stage in ("dpo", "kto") else None
    out["packing"] = (v["packing"] if v["packing"] is not None else stage == "pt") if stage in ("pt", "sft") else False
    for name in ("train_on_prompt", "mask_history"):
        out[name] = bool(v[name]) if stage == "sft" else None
    out["notify"] = notify_ids or None
    out["promote"] = v["promote"] or "never"
    out["promote_timeout_hours"] = ((v["promote_timeout_hours"] or APPLIED_DEFAULTS["promote_timeout_hours"])
                                    if out["promote"] == "approve" else None)
    scheduler = v["lr_scheduler_type"]
    out["min_lr_rate"] = (v["min_lr_rate"] or APPLIED_DEFAULTS["min_lr_rate"]) if scheduler == "cosine_with_min_lr" else None
    out["decay_ratio"] = (v["decay_ratio"] or APPLIED_DEFAULTS["decay_ratio"]) if scheduler == "warmup_stable_decay" else None


def _rope(r: _Rules, out: dict, model: ModelEntry | None) -> int | None:
    """RoPE scaling: factor = ceil(cutoff_len / the model's positions); None when not scaled."""
    v = r.v
    if not model:
        return None
    cutoff, positions = v["cutoff_len"], model.context_length
    if v["rope_scaling"] != "none":
        rope_factor = math.ceil(cutoff / positions)
        if rope_factor <= 1:
            r.warnings.append(f"rope_scaling {v['rope_scaling']!r} skipped: cutoff_len {cutoff} fits the {positions} "
                              f"positions of {model.name}")
            out["rope_scaling"] = "none"
            return None
        return rope_factor
    if cutoff > positions:
        r.warnings.append(f"cutoff_len {cutoff} is longer than the {positions} positions {model.name} was trained "
                          f"with; set rope_scaling (linear, dynamic, yarn or llama3) or a cutoff_len <= {positions}")
    return None


def _extra_args(r: _Rules, out: dict) -> None:
    """extra_args: each key a field of the stage's TRL config, its value of the field's type."""
    v = r.v
    if not v["extra_args"] or "extra_args" in r.skip:
        return
    from airtune.train.trl_fields import fits

    stage = v["stage"]
    cls_name, known = _trl_config_fields(stage, out["pref_loss"])
    for key, value in v["extra_args"].items():
        if key not in known:
            r.refuse(f"extra_args.{key}", f"not a field of {cls_name} (the TRL config stage {stage} trains "
                                          f"with); check the name in TRL's / transformers' TrainingArguments docs",
                     "stage", value=value)
        elif known[key] is not None and not fits(value, known[key][0]):
            r.refuse(f"extra_args.{key}", f"{cls_name}.{key} takes {known[key][1]}", value=value)


# -- GPU memory -----------------------------------------------------------------------------------

def _memory_estimate(r: _Rules, out: dict, model: ModelEntry | None, hw: _Hardware) -> dict:
    estimate: dict = {"gpu_memory_gib_per_process": None}
    if not (model and hw.device == "cuda"):
        return estimate
    memory_gib, gpu_name = hw.memory_gib, hw.gpu_name
    estimate = estimate_gpu_memory(model, out, hw.world_size)
    estimate["gpu_memory_gib_available"] = memory_gib
    gpu = "this machine" if hw.detected else gpu_name
    # Refused only when it cannot fit whatever the rows' lengths; when only rows of cutoff_len tokens
    # would not fit, prepare_dataset decides again with the data's longest row (data.figures.memory_check).
    if memory_gib and estimate["gpu_memory_gib_certain"] > memory_gib:
        r.refuse("gpu_type", memory_refusal(estimate, memory_gib, gpu, certain=True, rows=""),
                 "base_model", "location", "finetuning_method", "compute_type", "quantization_bit",
                 "distributed", "gpus_per_node", "nodes", value=gpu_name)
    elif memory_gib and estimate["gpu_memory_gib_per_process"] > memory_gib:
        r.warnings.append(
            f"gpu_type: with rows of cutoff_len {out['cutoff_len']} tokens this job would need about "
            f"{estimate['gpu_memory_gib_per_process']} GiB of GPU memory per process (estimate; parts in GiB: "
            f"{_parts(estimate['parts_gib'])}) and {gpu}'s GPUs have {memory_gib} GiB: prepare_dataset decides "
            f"again with the data's longest row, and fails there (before any GPU is asked for) if even that "
            f"does not fit")
    return estimate


def _dataset_record(entry) -> DatasetRecord:
    """A catalog dataset as the resolved spec holds it (datasets, eval_datasets)."""
    return DatasetRecord(name=entry.name, format=entry.format, kind=entry.kind,
                         files=tuple(str(p) for p in entry.files), columns=dict(entry.columns),
                         tags=dict(entry.tags), fill=dict(entry.fill) if entry.fill else None)


def _parts(parts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in parts.items())


def _model_record(model: ModelEntry | None, rope_factor: int | None) -> ModelRecord | None:
    if model is None:
        return None
    return ModelRecord(name=model.name, family=model.family, kind=model.kind, template=model.template,
                       context_length=model.context_length, params_b=model.params_b, num_layers=model.num_layers,
                       hidden_size=model.hidden_size, weights=model.weights(), revision=model.revision,
                       rope_factor=rope_factor)


def _location_record(location: Location | None, gpu_name: str | None) -> dict | None:
    if location is None:
        return None
    # The whole locations.yaml entry (the Kubernetes launcher reads its keys, gpu_types included),
    # plus the name and the chosen GPU type.
    record = json.loads(json.dumps(location.raw, default=str))
    gpu = location.gpu_types.get(gpu_name) if gpu_name else None
    record.update(name=location.name, kind=location.kind, gpu_quota=location.gpu_quota,
                  connection_id=location.connection_id, namespace=location.namespace, image=location.image,
                  gpu_type=dataclasses.asdict(gpu) if gpu else None)
    return record


def _earlier_job(field: str, v: dict, lookup: JobLookup, refuse, what: str) -> dict | None:
    name = v[field]
    record = lookup.get(name)
    if record is None:
        refuse(field, f"no job of this name; {what}")
        return None
    if record.get("state") != "finished":
        refuse(field, f"that job has not finished (state: {record.get('state')}); {what}")
        return None
    spec = (record.get("resolved") or {}).get("spec") or {}
    final_dir = record.get("final_dir")
    if not final_dir or not Path(final_dir).exists():
        refuse(field, f"its final weights are missing ({final_dir}); {what}")
        return None
    return {"name": name, "run_id": record.get("run_id"), "job_dir": record.get("job_dir"),
            "stage": spec.get("stage"), "finetuning_method": spec.get("finetuning_method"),
            "base_model": spec.get("base_model"), "template": spec.get("template"), "final_dir": final_dir,
            "adapter": spec.get("finetuning_method") == "lora"}


def _parent(v: dict, lookup: JobLookup, refuse) -> dict | None:
    what = "a parent is a finished pt, sft, dpo, kto or grpo job with the same base_model"
    parent = _earlier_job("parent_job", v, lookup, refuse, what)
    if parent is None:
        return None
    ok = True
    if parent["stage"] not in PARENT_STAGES:
        refuse("parent_job", f"it is an {parent['stage']} job (a reward model: name it as reward_model instead); {what}")
        ok = False
    if v["base_model"] and parent["base_model"] != v["base_model"]:
        refuse("parent_job", f"its base_model is {parent['base_model']!r}, this job's is {v['base_model']!r}; "
                             f"they must be equal", "base_model")
        ok = False
    return parent if ok else None


def _reward_model(v: dict, lookup: JobLookup, refuse) -> dict | None:
    what = "reward_model names a finished rm job"
    record = _earlier_job("reward_model", v, lookup, refuse, what)
    if record is not None and record["stage"] != "rm":
        refuse("reward_model", f"it is a {record['stage']} job; {what}")
        return None
    return record
