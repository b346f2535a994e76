"""airtune.resolve: catalog look-ups, `auto` values, hardware fit, earlier jobs, the memory estimate.

Every test passes `hardware` (or uses a location that needs none), so nothing here depends on this
machine's GPUs; earlier jobs come from a small in-memory JobLookup or a temporary workspace.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from airtune import resolve as R
from airtune.catalog import Catalog
from airtune.resolve import format_errors, validate_mapping
from airtune.spec import FIELDS, SpecError, parse, show_value

REAL_DETECT = R.detect_hardware
BASE = {"name": "demo-job", "base_model": "tiny-llama-dev", "dataset": "identity"}
K8S = {"location": "k8s-example"}
QWEN7 = {"base_model": "qwen2.5-7b-instruct"}
NO_GPU = {"cuda_devices": 0, "bf16": False, "flash_attn": False, "eetq": False, "gpu_memory_gib": None}
TWO_GPUS = {"cuda_devices": 2, "bf16": True, "flash_attn": True, "eetq": False, "gpu_memory_gib": 80.0}
ONE_OLD_GPU = {"cuda_devices": 1, "bf16": False, "flash_attn": False, "eetq": False, "gpu_memory_gib": 16.0}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture(autouse=True)
def no_detection(monkeypatch):
    """Tests give `hardware`; detecting this machine's (importing torch) would be a bug here."""
    def boom():
        raise AssertionError("detect_hardware() called although hardware was given or not needed")
    monkeypatch.setattr(R, "detect_hardware", boom)


class Jobs:
    """An in-memory JobLookup."""

    def __init__(self, **records):
        self.records = records

    def get(self, name):
        return self.records.get(name)


def finished_job(tmp_path: Path, name: str, *, stage="sft", method="lora", base_model="tiny-llama-dev",
                 template="chatml", state="finished") -> dict:
    final = tmp_path / name / "output" / "final"
    final.mkdir(parents=True, exist_ok=True)
    return {"name": name, "state": state, "run_id": "run1", "job_dir": str(tmp_path / name),
            "resolved": {"spec": {"stage": stage, "finetuning_method": method, "base_model": base_model,
                                  "template": template}},
            "result": {"final_dir": "output/final"}, "final_dir": str(final)}


def ok(catalog, mapping, hardware=None, jobs=None) -> dict:
    return validate_mapping({**BASE, **mapping}, catalog, hardware=hardware, jobs=jobs)


def errors_of(catalog, mapping, hardware=None, jobs=None):
    with pytest.raises(SpecError) as info:
        validate_mapping({**BASE, **mapping}, catalog, hardware=hardware, jobs=jobs)
    return info.value.errors


# -- the resolved spec ----------------------------------------------------------------------------

# What validate writes for tiny-llama-dev on the CPU: the table's defaults (airtune.spec.FIELDS), the
# job's own values, and what resolve fills in (the `auto` values and the defaults that depend on the method).
TRAINER_JOB = {"name": "train-test", "base_model": "tiny-llama-dev", "dataset": "identity", "learning_rate": 5e-3,
               "cutoff_len": 128, "per_device_train_batch_size": 4, "val_size": 0.2, "logging_steps": 2,
               "save_steps": 10}
FILLED_IN = {"template": "chatml", "gpu_type": "cpu", "gpus_per_node": 0, "compute_type": "fp32", "booster": "sdpa",
             "distributed": "ddp", "lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.1, "lora_target": "all",
             "packing": False, "promote": "never"}
TRAINER_VIEW = {**{f.name: f.default for f in FIELDS}, **TRAINER_JOB, "dataset": ["identity"], **FILLED_IN}


def test_local_defaults_resolve_to_what_the_trainer_expects(catalog):
    resolved = validate_mapping(TRAINER_JOB, catalog)
    assert resolved["spec"] == TRAINER_VIEW
    assert set(resolved) == {"format_version", "airtune_version", "spec", "model", "template", "datasets", "eval_datasets",
                             "benchmarks", "location", "runtime", "parent", "reward_model", "estimate", "warnings"}
    assert resolved["runtime"] == {"nodes": 1, "gpus_per_node": 0, "world_size": 1, "device": "cpu",
                                   "processes_per_node": 1, "gpu_type": "cpu"}
    assert resolved["model"]["kind"] == "base" and resolved["model"]["context_length"] == 2048
    assert Path(resolved["template"]["path"]).name == "chatml.jinja"
    assert resolved["datasets"][0]["kind"] == "sft" and Path(resolved["datasets"][0]["files"][0]).is_absolute()
    assert resolved["location"]["kind"] == "local" and resolved["location"]["gpu_type"]["name"] == "cpu"
    assert resolved["estimate"] == {"gpu_memory_gib_per_process": None}
    assert resolved["parent"] is None and resolved["warnings"] == []
    json.dumps(resolved)


def test_local_auto_uses_the_machines_gpus(catalog):
    r = ok(catalog, {"gpu_type": "auto"}, hardware=TWO_GPUS)
    assert (r["spec"]["gpus_per_node"], r["spec"]["compute_type"], r["spec"]["booster"], r["spec"]["distributed"]) == \
        (2, "bf16", "flash_attention_2", "ddp")
    assert r["runtime"]["world_size"] == 2 and r["runtime"]["device"] == "cuda"
    assert r["estimate"]["gpu_memory_gib_per_process"] > 0
    full = ok(catalog, {"gpu_type": "auto", "finetuning_method": "full"}, hardware=TWO_GPUS)
    assert full["spec"]["distributed"] == "zero3"  # full on more than one GPU
    one = ok(catalog, {"gpu_type": "auto", "finetuning_method": "full", "gpus_per_node": 1}, hardware=TWO_GPUS)
    assert one["spec"]["distributed"] == "ddp"


def test_local_auto_without_a_gpu_trains_on_the_cpu(catalog):
    r = ok(catalog, {"gpu_type": "auto"}, hardware=NO_GPU)
    assert (r["spec"]["gpus_per_node"], r["spec"]["compute_type"], r["spec"]["booster"]) == (0, "fp32", "sdpa")
    assert r["runtime"]["device"] == "cpu"


def test_local_auto_on_an_old_gpu_gets_fp16_and_sdpa(catalog):
    r = ok(catalog, {"gpu_type": "auto"}, hardware=ONE_OLD_GPU)
    assert (r["spec"]["compute_type"], r["spec"]["booster"]) == ("fp16", "sdpa")


def test_hardware_is_detected_only_when_needed(catalog, monkeypatch):
    calls = []
    monkeypatch.setattr(R, "detect_hardware", lambda: calls.append(1) or dict(TWO_GPUS))
    ok(catalog, {})  # local, gpu_type cpu: nothing to detect
    ok(catalog, {**K8S, **QWEN7})
    assert calls == []
    assert ok(catalog, {"gpu_type": "auto"})["spec"]["gpus_per_node"] == 2
    assert calls == [1]


@pytest.mark.parametrize("gpu_type, compute, memory", [
    ("nvidia-h100-80gb", "bf16", 80), ("nvidia-a100-80gb", "bf16", 80), ("nvidia-t4", "fp16", 16)])
def test_kubernetes_gpu_types(catalog, gpu_type, compute, memory):
    r = ok(catalog, {**K8S, "gpu_type": gpu_type, "base_model": "qwen2.5-0.5b-instruct"})
    s = r["spec"]
    assert (s["gpus_per_node"], s["compute_type"], s["booster"], s["distributed"], s["template"]) == \
        (1, compute, "sdpa", "ddp", "qwen")
    assert r["runtime"] == {"nodes": 1, "gpus_per_node": 1, "world_size": 1, "device": "cuda",
                            "processes_per_node": 1, "gpu_type": gpu_type}
    assert r["location"]["gpu_type"]["node_selector"]["nvidia.com/gpu.product"]
    assert r["location"]["namespace"] == "airtune"
    # the whole locations.yaml entry: the Kubernetes launcher reads gpu_types[spec.gpu_type].node_selector
    raw = catalog.locations["k8s-example"].raw
    assert r["location"]["gpu_types"] == raw["gpu_types"] and r["location"]["storage"] == raw["storage"]
    assert r["location"]["gpu_types"][r["spec"]["gpu_type"]]["node_selector"]
    assert r["estimate"]["gpu_memory_gib_available"] == memory


def test_kubernetes_default_gpu_type_is_the_first(catalog):
    r = ok(catalog, {**K8S, **QWEN7})
    assert r["spec"]["gpu_type"] == "nvidia-h100-80gb"


def test_multi_node_full_fine_tuning(catalog):
    r = ok(catalog, {**K8S, **QWEN7, "finetuning_method": "full", "gpus_per_node": 8, "nodes": 2})
    assert r["spec"]["distributed"] == "zero3" and r["runtime"]["world_size"] == 16
    assert r["spec"]["lora_rank"] is None and r["spec"]["lora_target"] is None


# -- defaults that depend on method / stage -------------------------------------------------------


def test_method_and_stage_defaults(catalog):
    s = ok(catalog, {"stage": "pt", "dataset": "c4_demo"})["spec"]
    assert s["packing"] is True and s["train_on_prompt"] is None
    assert ok(catalog, {"stage": "pt", "dataset": "c4_demo", "packing": False})["spec"]["packing"] is False
    s = ok(catalog, {"stage": "dpo", "dataset": "dpo_en_demo"})["spec"]
    assert (s["pref_loss"], s["pref_beta"], s["packing"]) == ("sigmoid", 0.1, False)
    s = ok(catalog, {"stage": "kto", "dataset": "kto_en_demo", "pref_beta": 0.3})["spec"]
    assert (s["pref_loss"], s["pref_beta"]) == (None, 0.3)
    s = ok(catalog, {"finetuning_method": "freeze"})["spec"]
    assert s["freeze_trainable_layers"] == 2 and s["lora_rank"] is None and s["use_dora"] is None
    s = ok(catalog, {"lr_scheduler_type": "cosine_with_min_lr"})["spec"]
    assert (s["min_lr_rate"], s["decay_ratio"]) == (0.1, None)
    s = ok(catalog, {"lr_scheduler_type": "warmup_stable_decay", "decay_ratio": 0.3})["spec"]
    assert (s["min_lr_rate"], s["decay_ratio"]) == (None, 0.3)
    s = ok(catalog, {"lora_rank": 32, "lora_alpha": 64, "lora_dropout": 0})["spec"]
    assert (s["lora_rank"], s["lora_alpha"], s["lora_dropout"]) == (32, 64.0, 0.0)


def test_lora_target_from_the_catalog(catalog):
    glm = ok(catalog, {"base_model": "glm-4-9b-chat", **K8S})["spec"]["lora_target"]
    assert glm == list(catalog.models["glm-4-9b-chat"].lora_target)
    assert ok(catalog, {"lora_target": "q_proj,v_proj"})["spec"]["lora_target"] == ["q_proj", "v_proj"]


def test_template_auto_is_the_models(catalog):
    assert ok(catalog, {**K8S, "base_model": "llama-3.1-8b-instruct"})["spec"]["template"] == "llama3"
    # a base model takes any template
    assert ok(catalog, {**K8S, "base_model": "llama-3.1-8b", "template": "alpaca"})["spec"]["template"] == "alpaca"


def test_rope_scaling(catalog):
    r = ok(catalog, {"rope_scaling": "linear"})
    assert r["spec"]["rope_scaling"] == "none" and r["model"]["rope_factor"] is None
    assert r["warnings"] == ["rope_scaling 'linear' skipped: cutoff_len 2048 fits the 2048 positions of tiny-llama-dev"]
    r = ok(catalog, {"rope_scaling": "yarn", "cutoff_len": 4097})
    assert r["spec"]["rope_scaling"] == "yarn" and r["model"]["rope_factor"] == 3 and r["warnings"] == []
    r = ok(catalog, {"cutoff_len": 4096})
    assert r["spec"]["rope_scaling"] == "none" and "longer than the 2048 positions" in r["warnings"][0]


# -- rules that need the catalog, the hardware or earlier jobs ------------------------------------

# (mapping, hardware, refused field, shown value, words in the message)
RULES = [
    ({"base_model": "gpt-5"}, None, "base_model", "gpt-5", ["configs/models.yaml", "qwen2.5-7b-instruct", "tiny-llama-dev"]),
    ({"location": "mars"}, None, "location", "mars", ["accepted: local, k8s-example"]),
    ({"template": "vicuna"}, None, "template", "vicuna", ["accepted: auto, alpaca", "chatml"]),
    ({**K8S, **QWEN7, "template": "llama3"}, None, "template", "llama3", ["instruct/chat", "'qwen'"]),
    ({"dataset": "identity, nope"}, None, "dataset", "nope", ["configs/datasets.yaml", "alpaca_en_demo"]),
    ({"dataset": "dpo_en_demo"}, None, "dataset", "dpo_en_demo", ["preference pairs", "stage sft", "alpaca_en_demo, identity"]),
    ({"stage": "pt"}, None, "dataset", "identity", ["stage pt trains on plain text", "c4_demo"]),
    ({"stage": "rm"}, None, "dataset", "identity", ["stage rm trains on preference pairs", "dpo_en_demo"]),
    ({"stage": "dpo", "dataset": "alpaca_en_demo"}, None, "dataset", "alpaca_en_demo", ["stage dpo", "dpo_en_demo"]),
    ({"stage": "kto", "dataset": "dpo_en_demo"}, None, "dataset", "dpo_en_demo", ["stage kto", "kto_en_demo"]),
    ({"stage": "grpo", "dataset": "c4_demo", "reward_model": "rm-job"}, None, "dataset", "c4_demo",
     ["stage grpo trains on instructions or conversations"]),
    ({"gpu_type": "nvidia-t4"}, None, "gpu_type", "nvidia-t4", ["location 'local' offers: cpu, auto"]),
    ({**K8S, **QWEN7, "gpu_type": "auto"}, None, "gpu_type", "auto", ["nvidia-h100-80gb, nvidia-a100-80gb, nvidia-t4"]),
    ({**K8S, **QWEN7, "gpus_per_node": 0}, None, "gpus_per_node", 0, ["only on location local", "1 to 8"]),
    ({**K8S, **QWEN7, "gpus_per_node": 9}, None, "gpus_per_node", 9, ["at most 8", "nvidia-h100-80gb nodes"]),
    ({**K8S, **QWEN7, "gpu_type": "nvidia-t4", "gpus_per_node": 5, "quantization_bit": 4}, None,
     "gpus_per_node", 5, ["at most 4"]),
    ({"gpus_per_node": 1}, None, "gpus_per_node", 1, ["at most 0", "gpu_type auto"]),
    ({"gpu_type": "auto", "gpus_per_node": 3}, TWO_GPUS, "gpus_per_node", 3, ["at most 2", "this machine has 2 GPUs"]),
    ({"nodes": 2}, None, "nodes", 2, ["Kubernetes"]),
    ({**K8S, **QWEN7, "gpus_per_node": 2, "booster": "unsloth"}, None, "booster", "unsloth", ["exactly one GPU", "1 node(s) × 2"]),
    ({**K8S, **QWEN7, "nodes": 2, "booster": "unsloth"}, None, "booster", "unsloth", ["exactly one GPU"]),
    ({"booster": "unsloth"}, None, "booster", "unsloth", ["exactly one GPU", "× 0"]),
    ({**K8S, **QWEN7, "booster": "unsloth"}, None, "booster", "unsloth", ["not in airtune's training image", "liger_kernel"]),
    ({"booster": "flash_attention_2"}, None, "booster", "flash_attention_2", ["CUDA GPU", "fp32"]),
    ({**K8S, **QWEN7, "compute_type": "fp32", "booster": "flash_attention_2"}, None, "booster", "flash_attention_2",
     ["fp16 or bf16", "fp32"]),
    ({"gpu_type": "auto", "booster": "flash_attention_2"}, ONE_OLD_GPU, "booster", "flash_attention_2",
     ["flash-attn package is not installed"]),
    ({"booster": "liger_kernel"}, None, "booster", "liger_kernel", ["CUDA GPU"]),
    ({**K8S, **QWEN7, "gpu_type": "nvidia-t4", "compute_type": "bf16", "quantization_bit": 4}, None, "compute_type",
     "bf16", ["nvidia-t4 has no bf16"]),
    ({**K8S, **QWEN7, "gpu_type": "nvidia-t4", "compute_type": "pure_bf16", "quantization_bit": 4}, None,
     "compute_type", "pure_bf16", ["no bf16"]),
    ({"gpu_type": "auto", "compute_type": "bf16"}, ONE_OLD_GPU, "compute_type", "bf16", ["has no bf16"]),
    ({"compute_type": "bf16"}, NO_GPU, "compute_type", "bf16", ["AVX-512 BF16 or AMX", "fp32 or auto"]),
    ({"compute_type": "pure_bf16"}, {**NO_GPU, "cpu_bf16": True}, "compute_type", "pure_bf16", ["trains on the CPU"]),
    ({"compute_type": "fp16"}, None, "compute_type", "fp16", ["fp16 needs a GPU"]),
    ({"distributed": "zero3"}, None, "distributed", "zero3", ["DeepSpeed ZeRO", "CPU"]),
    ({"quantization_bit": 8, "quantization_method": "eetq"}, None, "quantization_method", "eetq", ["CUDA GPU", "bnb"]),
    ({**K8S, **QWEN7, "quantization_bit": 8, "quantization_method": "eetq"}, None, "quantization_method", "eetq",
     ["kernels are not available", "model hub", "eetq_kernels"]),
    ({"gpu_type": "auto", "quantization_bit": 8, "quantization_method": "eetq"}, ONE_OLD_GPU, "quantization_method",
     "eetq", ["not available on this machine"]),
    ({"finetuning_method": "freeze", "freeze_trainable_layers": 5}, None, "freeze_trainable_layers", 5,
     ["at most the 4 layers"]),
    ({**K8S, **QWEN7, "gpu_type": "nvidia-t4", "finetuning_method": "full", "compute_type": "fp32"}, None,
     "gpu_type", "nvidia-t4", ["GiB of GPU memory per process", "16 GiB", "quantization_bit 4"]),
]


@pytest.mark.parametrize("mapping, hardware, field, value, words", RULES,
                         ids=[f"{i}-{r[2]}" for i, r in enumerate(RULES)])
def test_rule(catalog, mapping, hardware, field, value, words):
    errors = errors_of(catalog, mapping, hardware, jobs=_jobs_for(mapping))
    assert [e.field for e in errors] == [field], [str(e) for e in errors]
    text = str(errors[0])
    assert text.startswith(f"{field}: {show_value(value)} is not accepted: "), text
    for word in words:
        assert word in text, (word, text)


def test_hqq_trains_on_the_cpu_when_installed_and_is_refused_when_not(catalog, monkeypatch):
    resolved = ok(catalog, {"quantization_bit": 4, "quantization_method": "hqq"})
    assert resolved["spec"]["quantization_method"] == "hqq" and resolved["runtime"]["device"] == "cpu"
    # Only the package lookup is replaced: this machine has hqq (airtune[train]), an Airflow worker may not.
    monkeypatch.setattr(R, "installed", lambda package: package != "hqq")
    errors = errors_of(catalog, {"quantization_bit": 4, "quantization_method": "hqq"})
    assert [e.field for e in errors] == ["quantization_method"]
    assert "hqq needs the hqq package" in str(errors[0]) and "bnb" in str(errors[0])
    # a Kubernetes location trains in the image, which has it: not checked here
    assert ok(catalog, {**K8S, **QWEN7, "quantization_bit": 4, "quantization_method": "hqq"})["spec"]["quantization_method"] == "hqq"


def _jobs_for(mapping):
    """grpo rows need a reward model that passes its own checks."""
    if mapping.get("reward_model") != "rm-job":
        return None

    class _RM:
        def get(self, name):
            return {"name": name, "state": "finished", "resolved": {"spec": {"stage": "rm", "base_model": "tiny-llama-dev"}},
                    "final_dir": str(Path(__file__).parent), "run_id": "r", "job_dir": "/x"}
    return _RM()


def test_memory_estimate_refuses_numbers(catalog):
    errors = errors_of(catalog, {**K8S, **QWEN7, "gpu_type": "nvidia-t4", "finetuning_method": "full",
                                 "compute_type": "fp32"})
    text = str(errors[0])
    need = float(text.split("needs about ")[1].split(" GiB")[0])
    # 7.62e9 params × (4 B weights + 4 B gradients + 8 B AdamW states) alone are 113.5 GiB
    assert need > 113 and "have 16 GiB" in text


def test_memory_estimate_accepts_lora_on_h100(catalog):
    r = ok(catalog, {**K8S, **QWEN7, "gpu_type": "nvidia-h100-80gb"})
    est = r["estimate"]
    assert 16 < est["gpu_memory_gib_per_process"] < 80
    assert est["parts_gib"]["weights"] == pytest.approx(7.62e9 * 2 / 2**30, rel=0.01)  # bf16 frozen weights
    assert 15e6 < est["trainable_params"] < 25e6  # PEFT counts 20.2 M at rank 8, every linear layer


def test_memory_estimate_qlora_fits_a_t4(catalog):
    r = ok(catalog, {**K8S, **QWEN7, "gpu_type": "nvidia-t4", "quantization_bit": 4, "per_device_train_batch_size": 1})
    assert r["estimate"]["gpu_memory_gib_per_process"] < 16
    assert r["spec"]["compute_type"] == "fp16"


def test_zero3_shares_the_memory(catalog):
    one = R.estimate_gpu_memory(catalog.models["qwen2.5-7b-instruct"],
                                {**TRAINER_VIEW, "finetuning_method": "full", "compute_type": "bf16",
                                 "distributed": "ddp", "cutoff_len": 1024, "per_device_train_batch_size": 1}, 1)
    eight = R.estimate_gpu_memory(catalog.models["qwen2.5-7b-instruct"],
                                  {**TRAINER_VIEW, "finetuning_method": "full", "compute_type": "bf16",
                                   "distributed": "zero3", "cutoff_len": 1024, "per_device_train_batch_size": 1}, 8)
    assert eight["parts_gib"]["weights"] == pytest.approx(one["parts_gib"]["weights"] / 8, rel=0.01)
    assert eight["parts_gib"]["trainable_states"] == pytest.approx(one["parts_gib"]["trainable_states"] / 8, rel=0.01)


def test_extra_args_keys_checked_against_the_stages_trl_config(catalog, monkeypatch):
    fields = {"weight_decay": ["float", "float"], "adam_beta2": ["float", "float"], "anything": None}
    seen = []
    monkeypatch.setattr(R, "_trl_config_fields", lambda stage, loss: seen.append((stage, loss)) or ("FakeSFTConfig", fields))
    assert ok(catalog, {"extra_args": {"weight_decay": 0.1}})["spec"]["extra_args"] == {"weight_decay": 0.1}
    errors = errors_of(catalog, {"extra_args": {"weight_decay": 0.1, "weight_decy": 0.1}})
    assert [e.field for e in errors] == ["extra_args.weight_decy"]
    assert "not a field of FakeSFTConfig" in str(errors[0])
    assert seen[0] == ("sft", None)
    ok(catalog, {})  # no extra_args: the table is not read
    assert len(seen) == 2
    ok(catalog, {"extra_args": {"anything": [1, "x"]}})  # a field whose type the table does not check


def test_extra_args_stage_picks_the_table(catalog):
    errors = errors_of(catalog, {"stage": "dpo", "dataset": "dpo_en_demo", "pref_loss": "orpo",
                                 "extra_args": {"max_completion_length": "long"}})
    assert [e.field for e in errors] == ["extra_args.max_completion_length"]
    assert "ORPOConfig.max_completion_length takes int | None" in str(errors[0])


# -- earlier jobs ---------------------------------------------------------------------------------


def test_parent_job_rules(catalog, tmp_path):
    jobs = Jobs(
        good=finished_job(tmp_path, "good"),
        running=finished_job(tmp_path, "running", state="running"),
        rm=finished_job(tmp_path, "rm", stage="rm"),
        other=finished_job(tmp_path, "other", base_model="qwen2.5-0.5b-instruct", template="qwen"),
        alpaca=finished_job(tmp_path, "alpaca", template="alpaca"),
        gone={**finished_job(tmp_path, "gone"), "final_dir": str(tmp_path / "nowhere")},
    )
    r = ok(catalog, {"parent_job": "good"}, jobs=jobs)
    assert r["parent"]["name"] == "good" and r["parent"]["adapter"] is True
    assert Path(r["parent"]["final_dir"]).is_dir()
    # auto takes the parent's template; another one is refused
    assert ok(catalog, {"parent_job": "alpaca"}, jobs=jobs)["spec"]["template"] == "alpaca"
    cases = [
        ({"parent_job": "nobody"}, "no job of this name"),
        ({"parent_job": "running"}, "has not finished (state: running)"),
        ({"parent_job": "rm"}, "it is an rm job"),
        ({"parent_job": "other"}, "its base_model is 'qwen2.5-0.5b-instruct'"),
        ({"parent_job": "gone"}, "final weights are missing"),
    ]
    for mapping, words in cases:
        errors = errors_of(catalog, mapping, jobs=jobs)
        assert [e.field for e in errors] == ["parent_job"], errors
        assert str(errors[0]).startswith(f"parent_job: {mapping['parent_job']!r} is not accepted: ")
        assert words in str(errors[0])
    errors = errors_of(catalog, {"parent_job": "alpaca", "template": "chatml"}, jobs=jobs)
    assert [e.field for e in errors] == ["template"] and "used template 'alpaca'" in str(errors[0])


def test_reward_model_rules(catalog, tmp_path):
    jobs = Jobs(rm=finished_job(tmp_path, "rm", stage="rm"), sft=finished_job(tmp_path, "sft"))
    grpo = {"stage": "grpo"}
    r = ok(catalog, {**grpo, "reward_model": "rm"}, jobs=jobs)
    assert r["reward_model"]["name"] == "rm" and Path(r["reward_model"]["final_dir"]).is_dir()
    for name, words in (("sft", "it is a sft job"), ("nobody", "no job of this name")):
        errors = errors_of(catalog, {**grpo, "reward_model": name}, jobs=jobs)
        assert [e.field for e in errors] == ["reward_model"] and words in str(errors[0])


def test_default_lookup_reads_the_workspace(catalog, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(tmp_path))
    run = tmp_path / "jobs" / "first" / "manual__2026"
    (run / "output" / "final").mkdir(parents=True)
    first = ok(catalog, {"name": "first"})
    (run / "spec.json").write_text(json.dumps(first))
    errors = errors_of(catalog, {"parent_job": "first"})  # not finished yet: no result.json
    assert "has not finished" in str(errors[0])
    (run / "result.json").write_text(json.dumps({"final_dir": "output/final", "global_step": 3}))
    r = ok(catalog, {"parent_job": "first"})
    assert r["parent"]["run_id"] == "manual__2026" and r["parent"]["template"] == "chatml"
    assert Path(r["parent"]["final_dir"]) == (run / "output" / "final").resolve()


# -- all at once ----------------------------------------------------------------------------------


def test_parse_and_catalog_errors_reported_together(catalog):
    with pytest.raises(SpecError) as info:
        validate_mapping({"name": "x", "base_model": "gpt-5", "dataset": "dpo_en_demo, nope", "learning_rate": 0,
                          "location": "local", "nodes": 3, "unknown": 1}, catalog)
    fields = [e.field for e in info.value.errors]
    assert sorted(fields) == sorted(["learning_rate", "unknown", "base_model", "dataset", "dataset", "nodes"])
    report = format_errors(info.value)
    assert report.splitlines()[0] == "6 errors:" and "  6. " in report


def test_an_already_refused_field_is_not_reported_twice(catalog):
    errors = errors_of(catalog, {"stage": "ppo", "dataset": "c4_demo"})
    assert [e.field for e in errors] == ["stage"]  # no dataset/stage misfit on top of the bad stage


def test_resolve_takes_a_parsed_spec(catalog):
    spec = parse({**BASE, **K8S, **QWEN7})
    assert R.resolve(spec, catalog)["spec"]["compute_type"] == "bf16"
    with pytest.raises(SpecError):
        R.resolve(parse({**BASE, "nodes": 2}), catalog)


def test_resolve_imports_stay_cheap():
    import subprocess

    code = ("import sys; from airtune.resolve import validate_mapping; "
            "validate_mapping({'name': 'a', 'base_model': 'tiny-llama-dev', 'dataset': 'identity'}); "
            "print([m for m in ('torch', 'transformers', 'trl', 'airflow', 'mlflow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_detect_hardware_reads_torch(monkeypatch):
    """detect_hardware with a stand-in torch: two GPUs, one of them pre-Ampere (no FlashAttention-2)."""
    import types

    props = [types.SimpleNamespace(major=9, total_memory=80 * 2**30), types.SimpleNamespace(major=7, total_memory=16 * 2**30)]
    cuda = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 2,
                                 get_device_properties=lambda i: props[i], is_bf16_supported=lambda: True)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(R.importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None)
    hw = REAL_DETECT()
    assert hw == {"cuda_devices": 2, "bf16": True, "flash_attn": False, "eetq": False, "gpu_memory_gib": 16.0,
                  "cpu_bf16": R.cpu_has_bf16()}
    props[1].major = 8
    assert REAL_DETECT()["flash_attn"] is True
    cuda.is_available = lambda: False
    assert REAL_DETECT() == {**R.HARDWARE_KEYS, "cpu_bf16": R.cpu_has_bf16()}


def test_bf16_on_a_cpu_with_bf16_instructions(catalog, monkeypatch):
    """compute_type bf16 on location local's CPU: accepted where the CPU has AVX-512 BF16 or AMX (bf16 mixed
    precision, the frozen weights loaded in bf16), refused by name elsewhere; auto stays fp32 on the CPU."""
    job = {"compute_type": "bf16"}
    resolved = ok(catalog, job, {**NO_GPU, "cpu_bf16": True})
    assert resolved["spec"]["compute_type"] == "bf16" and resolved["runtime"]["device"] == "cpu"
    assert ok(catalog, {}, {**NO_GPU, "cpu_bf16": True})["spec"]["compute_type"] == "fp32"
    (e,) = errors_of(catalog, job, NO_GPU)
    assert e.field == "compute_type" and "AVX-512 BF16 or AMX" in e.message
    # no hardware given: this machine's /proc/cpuinfo decides
    monkeypatch.setattr(R, "cpu_has_bf16", lambda: True)
    assert ok(catalog, job)["spec"]["compute_type"] == "bf16"
    monkeypatch.setattr(R, "cpu_has_bf16", lambda: False)
    assert [e.field for e in errors_of(catalog, job, None)] == ["compute_type"]
    # a Kubernetes location never trains on the CPU; a GPU type without bf16 is still refused
    assert [e.field for e in errors_of(catalog, {**K8S, **QWEN7, "gpu_type": "nvidia-t4", "compute_type": "bf16",
                                                 "quantization_bit": 4}, {**NO_GPU, "cpu_bf16": True})] == ["compute_type"]


def test_cpu_bf16_flags():
    flags = "processor\t: 0\nflags\t\t: fpu sse avx512f {}\nbogomips : 1\n"
    assert R.cpu_has_bf16(flags.format("avx512_bf16")) and R.cpu_has_bf16(flags.format("amx_bf16 amx_tile"))
    assert not R.cpu_has_bf16(flags.format("avx512_vnni")) and not R.cpu_has_bf16("")
