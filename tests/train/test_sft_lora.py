"""SFT with LoRA through the real `python -m airtune.train` on the tiny model (CPU, fp32)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .helpers import make_job, make_prepared, make_resolved, run_train, train_cmd, train_env, train_in_process


def metrics(job: Path) -> list[dict]:
    return [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]


def adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_result_json_and_loss_fell(sft_run):
    result = json.loads((sft_run / "result.json").read_text())
    assert result["global_step"] == 24  # 32 rows / batch 4 * 3 epochs
    first, last = result["train_loss_first"], result["train_loss_last"]
    assert math.isfinite(first) and math.isfinite(last)
    assert last < first - 1.0, (first, last)  # 8.3 -> 6.7 on this data; a no-op trainer stays at ~8.3
    assert result["final_dir"] == "output/final"
    assert result["checkpoints"] == ["output/checkpoint-10", "output/checkpoint-20", "output/checkpoint-24"]
    assert math.isfinite(result["eval_loss"])
    assert result["best_checkpoint"] in result["checkpoints"] + ["output/final"]
    final = sft_run / result["final_dir"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja", "spec.json"):
        assert (final / name).is_file(), name
    assert json.loads((final / "spec.json").read_text())["spec"]["name"] == "train-test"
    for ckpt in result["checkpoints"]:  # resumable: optimizer, scheduler, RNG, trainer state
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
            assert (sft_run / ckpt / name).is_file(), (ckpt, name)
    assert "[airtune] step 24/24" in (sft_run / "stdout.txt").read_text()


def test_metrics_file(sft_run):
    records = metrics(sft_run)
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, *range(2, 25, 2)]  # logging_first_step, then every 2 steps
    for r in train:
        assert {"step", "epoch", "loss", "learning_rate", "grad_norm"} <= r.keys()
        assert math.isfinite(r["loss"])
    assert all("tokens_per_second" in r and r["tokens_per_second"] > 0 for r in train[1:])
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals][:2] == [10, 20]  # evaluation every save_steps


def test_lora_weights_changed_base_frozen(sft_run, tiny_model_dir):
    """Every LoRA matrix moved away from its initial value; nothing but LoRA matrices was trained or saved."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    final = sft_run / "output" / "final"
    trained = adapter(final)
    assert trained and all("lora_A" in k or "lora_B" in k for k in trained), sorted(trained)[:5]
    # lora_target all: every linear layer of the 4 blocks (q, k, v, o, gate, up, down), never lm_head
    modules = {k.split(".lora_")[0] for k in trained}
    assert len(modules) == 4 * 7 and not any("lm_head" in m for m in modules)

    # the initial adapter, rebuilt the way the trainer builds it (same seed, same config)
    config = LoraConfig.from_pretrained(str(final))
    set_seed(42)
    initial = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
    init_state = {k.replace(".default", ""): v for k, v in initial.state_dict().items() if "lora_" in k}
    assert init_state.keys() == trained.keys()
    unchanged = [k for k in trained if torch.allclose(trained[k], init_state[k])]
    assert not unchanged, unchanged

    # the base weights the adapter applies to are the tiny model's own, bit for bit
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    loaded = PeftModel.from_pretrained(base, str(final))
    for name, param in loaded.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param, reference[key]), name


def test_final_loads_with_peft_and_generates(sft_run, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = sft_run / "output" / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert "<|im_start|>" in tokenizer.chat_template
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(final))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_export_merged_equals_base_plus_adapter(sft_run, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = json.loads((sft_run / "result.json").read_text())
    merged_dir = sft_run / result["merged_dir"]
    assert result["merged_dir"] == "output/merged" and (merged_dir / "spec.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(sft_run / "output" / "final")).eval()
    ids = torch.arange(5, 40)[None]
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_extra_args_unknown_key_fails_naming_it(tiny_model_dir, sft_data, tmp_path):
    job = make_job(tmp_path / "job", tiny_model_dir, sft_data, extra_args={"no_such_argument": 1})
    proc = run_train(job, sft_data, check=False)
    assert proc.returncode == 78  # EX_CONFIG: the launcher fails the task without retries
    assert "[airtune] configuration error: ArgsError: extra_args: 'no_such_argument'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (job / "result.json").exists()


def test_extra_args_mapping(tiny_model_dir, tmp_path):
    from airtune.train.args import ArgsError, map_spec

    def mapped(**over):
        return map_spec(make_resolved(tiny_model_dir, **over), output_dir=str(tmp_path), train_rows=32, has_eval=True)

    m = mapped(extra_args={"weight_decay": 0.05, "adam_beta2": 0.95})
    assert m.config.weight_decay == 0.05 and m.config.adam_beta2 == 0.95
    assert m.config.report_to == [] or m.config.report_to == "none" or m.config.report_to == ["none"]
    for key in ("output_dir", "report_to", "deepspeed", "local_rank", "push_to_hub", "hub_model_id", "logging_dir"):
        with pytest.raises(ArgsError, match=key):
            mapped(extra_args={key: "x"})
    m = mapped(lr_scheduler_type="cosine_with_min_lr", min_lr_rate=0.2)
    assert m.config.lr_scheduler_kwargs == {"min_lr_rate": 0.2}
    m = mapped(lr_scheduler_type="warmup_stable_decay", decay_ratio=0.25)
    assert m.config.lr_scheduler_kwargs == {"num_decay_steps": 6}  # 25 % of 24 steps
    assert m.config.eval_steps == 10 and m.config.bf16 is False and m.config.fp16 is False
    assert m.peft.target_modules == "all-linear" and m.peft.r == 8


@pytest.mark.slow
def test_packed_rows_train_padding_free(tiny_model_dir, tmp_path):
    """Packed rows (position_ids restarting per example) train without attention crossing examples."""
    data = make_prepared(tiny_model_dir, tmp_path / "packed", packing=True, cutoff=256)
    job = make_job(tmp_path / "job", tiny_model_dir, data, packing=True, cutoff_len=256,
                   per_device_train_batch_size=2, num_train_epochs=4, save_steps=100)
    train_in_process(job, data)
    result = json.loads((job / "result.json").read_text())
    assert math.isfinite(result["train_loss_last"])
    assert result["train_loss_last"] < result["train_loss_first"] - 0.5, result


KILLER = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    import airtune.train.__main__ as trainer_main

    class KillAt(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step >= int(os.environ["KILL_AT_STEP"]):
                os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, like an OOM kill or a lost node

    extra = trainer_main.extra_callbacks
    trainer_main.extra_callbacks = lambda: extra() + [KillAt()]
    sys.exit(trainer_main.main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(sft_run, tiny_model_dir, sft_data, tmp_path):
    import torch

    job = make_job(tmp_path / "job", tiny_model_dir, sft_data)
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    cmd = [sys.executable, str(killer), *train_cmd(job, sft_data)[3:]]
    proc = subprocess.run(cmd, env=train_env(KILL_AT_STEP="13"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (job / "output" / "checkpoint-10" / "trainer_state.json").exists()
    assert not (job / "output" / "final").exists() and not (job / "result.json").exists()

    proc = run_train(job, sft_data)
    assert "resuming from" in proc.stdout and "checkpoint-10" in proc.stdout
    result = json.loads((job / "result.json").read_text())
    assert result["global_step"] == 24
    steps = [r["step"] for r in metrics(job) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 24  # no step logged twice

    resumed, reference = adapter(job / "output" / "final"), adapter(sft_run / "output" / "final")
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
    ref_result = json.loads((sft_run / "result.json").read_text())
    assert result["train_loss_first"] == pytest.approx(ref_result["train_loss_first"])
    assert result["train_loss_last"] == pytest.approx(ref_result["train_loss_last"], rel=1e-4)


def test_liger_booster_uses_the_installed_kernels(tiny_model_dir, tmp_path):
    """booster liger_kernel: liger-kernel from the image (use_liger_kernel), never Hub kernels
    (use_kernels downloads at run time); on the CPU it is refused. The mapping only: no CUDA here."""
    from airtune.train.args import ArgsError, map_spec

    resolved = make_resolved(tiny_model_dir, booster="liger_kernel")
    with pytest.raises(ArgsError, match="needs a CUDA GPU"):
        map_spec(resolved, output_dir=str(tmp_path), train_rows=32, has_eval=False)
    resolved["runtime"]["device"] = "cuda"
    m = map_spec(resolved, output_dir=str(tmp_path), train_rows=32, has_eval=False)
    assert m.config.use_liger_kernel is True
    assert "use_kernels" not in m.model_kwargs and m.model_kwargs["attn_implementation"] == "sdpa"
