"""The GPU memory check: validate refuses only what cannot fit whatever the rows' lengths, warns when only
rows of cutoff_len tokens would not fit, and prepare_dataset decides again with the prepared rows' longest
(data.figures.memory_check), failing at once (not retried) before any GPU is asked for.

Pure: every job is on a Kubernetes location's GPU type or given `hardware`; nothing here needs a GPU."""

from __future__ import annotations

import json

import pytest

from airtune import resolve as R
from airtune.catalog import Catalog
from airtune.data.figures import longest_row_tokens, memory_check
from airtune.resolve import validate_mapping
from airtune.spec import SpecError

# The issue's example: qwen2.5-1.5b-instruct, LoRA, fp16, batch 8, cutoff 2048 on a 16 GiB T4.
T4_JOB = {"name": "t4-job", "base_model": "qwen2.5-1.5b-instruct", "dataset": "alpaca_en_demo", "location": "k8s-example",
          "gpu_type": "nvidia-t4", "finetuning_method": "lora", "compute_type": "fp16",
          "per_device_train_batch_size": 8, "cutoff_len": 2048}
SMOOTHED = {"extra_args": {"label_smoothing_factor": 0.1}}  # the model's full logits instead of TRL's fused LM head
QWEN_VOCAB = 151_665  # len(tokenizer) of Qwen2.5, as the manifest records it


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def _memory_warnings(resolved: dict) -> list[str]:
    return [w for w in resolved["warnings"] if w.startswith("gpu_type:")]


def _manifest(longest: int | None) -> dict:
    m = {"rows": {"train": 999}, "tokens": {"train": 999 * 200}, "tokenizer": {"vocab_size": QWEN_VOCAB}}
    if longest is not None:
        m["longest_row_tokens"] = {"train": longest}
    return m


# -- validate ---------------------------------------------------------------------------------------

def test_the_issues_example_fits_a_t4_with_trls_fused_lm_head(catalog):
    """Before: refused, 18.7 GiB of which 11.7 GiB logits (8 × 2048 tokens × 128k vocabulary × 6 B). TRL 1.16's
    SFTTrainer scores the LM head in 4096 × 32768 tiles (trl/kernels/chunked_logprob.py): no full logits."""
    r = validate_mapping(T4_JOB, catalog)
    est = r["estimate"]
    assert est["gpu_memory_gib_per_process"] < 16 and est["gpu_memory_gib_available"] == 16
    assert est["parts_gib"]["logits"] < 0.5  # one tile (0.25 GiB) + the scored hidden states and their fp32 gradient
    assert est["gpu_memory_gib_certain"] == pytest.approx((2.87 + 0.12) * 1.05 + 1, abs=0.1)
    assert est["row_tokens"] == 2048
    assert _memory_warnings(r) == []


def test_the_worst_case_only_warns_and_leaves_the_decision_to_prepare_dataset(catalog):
    """With label smoothing the logits are the full 8 × 2048 × vocabulary: the issue's 18.7 GiB, now a warning."""
    r = validate_mapping({**T4_JOB, **SMOOTHED}, catalog)
    est = r["estimate"]
    assert est["gpu_memory_gib_per_process"] == pytest.approx(18.7, abs=0.1) and est["parts_gib"]["logits"] > 11
    assert est["gpu_memory_gib_certain"] < 16
    (warning,) = _memory_warnings(r)
    assert "cutoff_len 2048" in warning and "18.7 GiB" in warning and "16 GiB" in warning
    assert "prepare_dataset decides again" in warning
    # long rows, no smoothing: the layers' activations alone exceed the T4, still only a warning
    long = validate_mapping({**T4_JOB, "per_device_train_batch_size": 32, "cutoff_len": 4096}, catalog)
    assert long["estimate"]["gpu_memory_gib_per_process"] > 16 > long["estimate"]["gpu_memory_gib_certain"]
    assert len(_memory_warnings(long)) == 1


def test_refused_when_it_cannot_fit_whatever_the_rows(catalog):
    with pytest.raises(SpecError) as info:
        validate_mapping({**T4_JOB, "base_model": "qwen2.5-7b-instruct", "finetuning_method": "full",
                          "compute_type": "fp32", "per_device_train_batch_size": 1, "cutoff_len": 64}, catalog)
    (error,) = info.value.errors
    text = str(error)
    assert error.field == "gpu_type" and text.startswith("gpu_type: 'nvidia-t4' is not accepted: ")
    assert "before any row's activations" in text and "have 16 GiB" in text
    assert "per_device_train_batch_size" not in text  # no smaller batch would make it fit


def test_the_certain_part_does_not_depend_on_the_rows(catalog):
    model = catalog.models["qwen2.5-1.5b-instruct"]
    spec = validate_mapping(T4_JOB, catalog)["spec"]
    short = R.estimate_gpu_memory(model, spec, 1, row_tokens=100)
    long = R.estimate_gpu_memory(model, spec, 1, row_tokens=2048)
    assert short["gpu_memory_gib_certain"] == long["gpu_memory_gib_certain"]
    assert short["gpu_memory_gib_per_process"] < long["gpu_memory_gib_per_process"]
    assert long == R.estimate_gpu_memory(model, spec, 1)  # default: cutoff_len
    # chosen and rejected are one forward pass: a dpo row's activations count twice
    dpo = R.estimate_gpu_memory(model, {**spec, "stage": "dpo"}, 1, row_tokens=1024)
    assert dpo["parts_gib"]["activations"] == pytest.approx(long["parts_gib"]["activations"], rel=0.01)


# -- prepare_dataset --------------------------------------------------------------------------------

def test_prepare_decides_with_the_datas_longest_row(catalog):
    resolved = validate_mapping({**T4_JOB, **SMOOTHED}, catalog)  # validate warned
    fits, refusal = memory_check(_manifest(longest=300), resolved)  # alpaca-like rows: a few hundred tokens
    assert refusal is None
    assert fits["row_tokens"] == 300 and fits["gpu_memory_gib_per_process"] < 16

    real, refusal = memory_check(_manifest(longest=2048), resolved)  # rows really are ~2048 tokens long
    assert real["gpu_memory_gib_per_process"] > 16
    assert refusal.startswith("gpu_type: 'nvidia-t4' is not accepted: this job needs about ")
    assert "with its data's longest row (2048 tokens, batch 8)" in refusal and "have 16 GiB" in refusal
    assert "per_device_train_batch_size" in refusal

    # a manifest from before longest_row_tokens: the worst case, and the message says why
    _, refusal = memory_check(_manifest(longest=None), resolved)
    assert "records no row lengths" in refusal
    # a job validate had no GPU memory for (the CPU): nothing decided here
    cpu = validate_mapping({"name": "cpu-job", "base_model": "tiny-llama-dev", "dataset": "identity"}, catalog)
    assert memory_check(_manifest(longest=100), cpu) == (None, None)


def test_prepare_dataset_fails_at_once_before_training(catalog, tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from airtune import data, pipeline, tracking

    one_t4 = {"cuda_devices": 1, "bf16": False, "flash_attn": False, "eetq": False, "gpu_memory_gib": 16.0}
    resolved = validate_mapping({**T4_JOB, **SMOOTHED, "location": "local", "gpu_type": "auto"}, catalog, hardware=one_t4)
    assert len(_memory_warnings(resolved)) == 1
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "spec.json").write_text(json.dumps(resolved))
    job = {"name": "t4-job", "job_dir": str(job_dir), "mlflow_run_id": "r1", "launcher": "local"}
    recorded = []
    monkeypatch.setattr(tracking, "record_dataset", lambda *a, **k: recorded.append(a))
    monkeypatch.setattr(tracking, "log_params_once", lambda *a, **k: None)
    monkeypatch.setattr(tracking, "client", lambda: None)

    monkeypatch.setattr(data, "prepare", lambda *a, **k: _manifest(longest=2048))
    with pytest.raises(AirflowFailException) as info:
        pipeline.prepare_dataset(job)
    text = str(info.value)
    assert "gpu_type: 'this machine'" not in text and "with its data's longest row (2048 tokens" in text
    assert "(not retried" in text and not recorded

    monkeypatch.setattr(data, "prepare", lambda *a, **k: _manifest(longest=300))
    assert pipeline.prepare_dataset(job)["data_dir"] == str(job_dir / "data")


def test_longest_row_tokens_per_stage():
    from airtune.data.columns import IntLists

    def col(*lengths):
        return IntLists.from_lists([[1] * n for n in lengths])

    assert longest_row_tokens({"input_ids": col(3, 9, 4), "labels": col(3, 9, 4)}, "sft") == 9
    assert longest_row_tokens({"prompt_ids": col(5, 2), "chosen_ids": col(1, 8), "rejected_ids": col(4, 3)}, "dpo") == 10
    assert longest_row_tokens({"chosen_ids": col(5, 2), "rejected_ids": col(1, 8)}, "rm") == 8
    assert longest_row_tokens({"prompt_ids": col(5, 2), "completion_ids": col(1, 8)}, "kto") == 10
    assert longest_row_tokens({"input_ids": col(), "labels": col()}, "sft") == 0
