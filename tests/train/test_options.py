"""Advanced options, each trained for real on the tiny model (8 steps, in this process, CPU, fp32)."""

from __future__ import annotations

import json
import math

import pytest

from .helpers import assert_loss_fell, load_safetensors_dir, make_job, make_resolved, metrics, train_in_process

SHORT = dict(num_train_epochs=1, save_steps=100)  # 32 rows / batch 4 = 8 steps


def run(tmp_path, model_dir, data, **over):
    job = make_job(tmp_path / "job", model_dir, data, **{**SHORT, **over})
    train_in_process(job, data)
    return job


@pytest.mark.slow
def test_dora(tiny_model_dir, sft_data, tmp_path):
    job = run(tmp_path, tiny_model_dir, sft_data, use_dora=True)
    assert_loss_fell(job)
    state = load_safetensors_dir(job / "output" / "final")
    assert any("lora_magnitude_vector" in k for k in state)


@pytest.mark.slow
def test_rslora(tiny_model_dir, sft_data, tmp_path):
    job = run(tmp_path, tiny_model_dir, sft_data, use_rslora=True)
    assert_loss_fell(job)
    assert json.loads((job / "output" / "final" / "adapter_config.json").read_text())["use_rslora"] is True


@pytest.mark.slow
def test_loraplus_gives_b_matrices_ratio_times_the_learning_rate(tiny_model_dir, sft_data, tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from airtune.train.args import map_spec
    from airtune.train.optim import loraplus_optimizer

    mapped = map_spec(make_resolved(tiny_model_dir, loraplus_lr_ratio=16.0), output_dir=str(tmp_path), train_rows=32, has_eval=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), mapped.peft)
    optimizer = loraplus_optimizer(model, mapped.config, mapped.loraplus_lr_ratio)
    ids = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            expected = 5e-3 * 16 if "lora_B" in ids[id(p)] else 5e-3
            assert group["lr"] == pytest.approx(expected), ids[id(p)]
    job = run(tmp_path, tiny_model_dir, sft_data, loraplus_lr_ratio=16.0, learning_rate=1e-3)
    assert_loss_fell(job)


@pytest.mark.slow
def test_neftune_adds_noise_in_training(tiny_model_dir, sft_data, sft_run, tmp_path):
    job = run(tmp_path, tiny_model_dir, sft_data, neftune_noise_alpha=1.0)  # noise ~ 1/sqrt(60*128): like the embeddings (std 0.02)
    res = assert_loss_fell(job, by=0.1)
    plain = json.loads((sft_run / "result.json").read_text())["train_loss_first"]
    # step 1's loss comes before any update: it differs from the plain run only through the noise
    assert abs(res["train_loss_first"] - plain) > 1e-4, (res["train_loss_first"], plain)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,lr", [("adafactor", 5e-3), ("sgd", 0.5), ("adamw_torch_fused", 5e-3),
                                          ("adamw_8bit", 5e-3), ("lion_8bit", 1e-3)])
def test_optimizers(tiny_model_dir, sft_data, tmp_path, optimizer, lr):
    if optimizer.endswith("_8bit"):
        pytest.importorskip("bitsandbytes")
    job = run(tmp_path, tiny_model_dir, sft_data, optimizer=optimizer, learning_rate=lr)
    assert_loss_fell(job, by=0.2)


SCHEDULERS = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay"]


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_builds_from_the_spec(tiny_model_dir, tmp_path, scheduler):
    import torch
    from transformers import get_scheduler

    from airtune.train.args import map_spec

    mapped = map_spec(make_resolved(tiny_model_dir, lr_scheduler_type=scheduler, warmup_steps=2, min_lr_rate=0.1, decay_ratio=0.5),
                      output_dir=str(tmp_path), train_rows=32, has_eval=False)
    c = mapped.config
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=c.learning_rate)
    sched = get_scheduler(c.lr_scheduler_type, optimizer, num_warmup_steps=c.get_warmup_steps(24),
                          num_training_steps=24, scheduler_specific_kwargs=c.lr_scheduler_kwargs)
    lrs = []
    for _ in range(24):
        lrs.append(sched.get_last_lr()[0])
        optimizer.step()
        sched.step()
    if scheduler != "constant":  # transformers' constant schedule has no warmup
        assert lrs[0] < lrs[2] == pytest.approx(5e-3)  # warmup over 2 steps
    if scheduler == "cosine_with_min_lr":
        assert min(lrs[2:]) >= 5e-4 * 0.999  # never below min_lr_rate * lr
    if scheduler == "warmup_stable_decay":
        assert lrs[2:12] == pytest.approx([5e-3] * 10) and lrs[-1] < 1e-3  # decays over the last half


@pytest.mark.slow
def test_scheduler_and_warmup_in_a_run(tiny_model_dir, sft_data, tmp_path):
    job = run(tmp_path, tiny_model_dir, sft_data, lr_scheduler_type="cosine_with_min_lr", min_lr_rate=0.2, warmup_steps=2,
              logging_steps=1)
    assert_loss_fell(job)
    lrs = [r["learning_rate"] for r in metrics(job) if "loss" in r]
    # the rate each step trained with: warmup 0 -> 2.5e-3 -> 5e-3, then cosine down to 20 %
    assert lrs[:3] == pytest.approx([0.0, 2.5e-3, 5e-3])
    assert min(lrs[2:]) >= 1e-3 * 0.999 and lrs[-1] < 2e-3


def bnb_friendly_copy(model_dir, out):
    """The tiny model with its MLP widened from 344 to 384: bitsandbytes' CPU 4-bit kernels need the
    output width of each linear layer to be a multiple of their block (344 is not: "N must be
    divisible by block_n"); real models' widths (896, 4864, 4096, 14336, ...) all are. Same tokenizer."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.safetensors"))
    config = LlamaConfig.from_pretrained(model_dir)
    config.intermediate_size = 384
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.mark.slow
def test_qlora_4bit_bnb_on_cpu(tiny_model_dir, sft_data, tmp_path):
    pytest.importorskip("bitsandbytes")
    model_dir = bnb_friendly_copy(tiny_model_dir, tmp_path / "tiny-384")
    job = run(tmp_path, model_dir, sft_data, quantization_bit="4")
    assert_loss_fell(job)
    state = load_safetensors_dir(job / "output" / "final")
    assert state and all("lora_" in k for k in state)


@pytest.mark.parametrize("bits", [4, 8])
def test_hqq_quantizes_every_linear_layer_but_the_output(tiny_model_dir, tmp_path, bits):
    import torch
    from hqq.core.quantize import HQQLinear

    from airtune.train.args import map_spec
    from airtune.train.model import load_model, make_trainable

    plain = load_model(make_resolved(tiny_model_dir), {"dtype": "float32"})
    resolved = make_resolved(tiny_model_dir, quantization_bit=str(bits), quantization_method="hqq")
    mapped = map_spec(resolved, output_dir=str(tmp_path), train_rows=32, has_eval=False)
    assert "quantization_config" not in mapped.model_kwargs
    assert mapped.hqq == {"nbits": bits, "group_size": 64, "compute_dtype": "float32", "device": "cpu"}
    model = load_model(resolved, mapped.model_kwargs, hqq=mapped.hqq)
    linears = {n: type(m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, HQQLinear))}
    assert linears.pop("lm_head") is torch.nn.Linear
    assert len(linears) == 4 * 7 and set(linears.values()) == {HQQLinear}  # 4 layers x q,k,v,o,gate,up,down
    assert all(m.meta["nbits"] == bits for m in model.modules() if isinstance(m, HQQLinear))
    ids = torch.arange(16)[None]
    with torch.no_grad():
        exact, quantized = plain(input_ids=ids).logits, model(input_ids=ids).logits
    err = float((quantized - exact).abs().mean() / exact.abs().mean())
    assert 0 < err < (0.5 if bits == 4 else 0.05), err  # quantized: close to the weights, not equal
    # lora_target all: a LoRA layer on each quantized layer
    peft_model = make_trainable(model, resolved["spec"], mapped.peft)
    wrapped = [n for n, m in peft_model.named_modules() if type(m).__name__ == "HqqLoraLinear"]
    assert len(wrapped) == 28


@pytest.mark.slow
def test_qlora_hqq_on_cpu(tiny_model_dir, sft_data, tmp_path):
    job = run(tmp_path, tiny_model_dir, sft_data, quantization_bit="4", quantization_method="hqq")
    assert_loss_fell(job)
    state = load_safetensors_dir(job / "output" / "final")
    assert len(state) == 2 * 28 and all("lora_" in k for k in state)
    adapter = json.loads((job / "output" / "final" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_rope_scaling_factor_from_cutoff(tiny_model_dir, tmp_path):
    from airtune.train.args import map_spec
    from airtune.train.model import load_model

    resolved = make_resolved(tiny_model_dir, rope_scaling="linear", cutoff_len=5000)  # 5000 / 2048 -> factor 3
    mapped = map_spec(resolved, output_dir=str(tmp_path), train_rows=32, has_eval=False)
    model = load_model(resolved, mapped.model_kwargs, config_overrides=mapped.config_overrides)
    rope = model.config.rope_parameters
    assert rope["rope_type"] == "linear" and rope["factor"] == 3.0 and rope["rope_theta"] == 10000.0
    assert model.config.max_position_embeddings == 3 * 2048
    fits = map_spec(make_resolved(tiny_model_dir, rope_scaling="linear", cutoff_len=1024), output_dir=str(tmp_path), train_rows=32, has_eval=False)
    assert fits.config_overrides == {}
    assert math.isfinite(float(model(input_ids=__import__("torch").arange(8)[None]).logits.sum()))


@pytest.mark.slow
def test_bf16_on_the_cpu(tiny_model_dir, sft_data, tmp_path):
    """compute_type bf16 on the CPU (validate accepts it where the CPU has bf16 instructions): transformers'
    bf16 mixed precision (CPU autocast), the frozen weights loaded in bf16, the LoRA weights kept and saved in
    fp32; the loss falls as in fp32. (PyTorch runs bf16 on any CPU: this test does not need the instructions.)"""
    import torch

    from .helpers import run_train

    job = make_job(tmp_path / "job", tiny_model_dir, sft_data, **SHORT, compute_type="bf16")
    proc = run_train(job, sft_data)
    assert "precision: compute_type bf16 (autocast on the CPU); trainable weights float32, frozen weights bfloat16" \
        in proc.stdout, proc.stdout[-3000:]
    assert_loss_fell(job, by=0.2)
    state = load_safetensors_dir(job / "output" / "final")
    assert state and all(v.dtype == torch.float32 for v in state.values())
    from airtune.train.args import map_spec

    spec = json.loads((job / "spec.json").read_text())
    config = map_spec(spec, output_dir=str(tmp_path / "o"), train_rows=32, has_eval=False).config
    assert config.bf16 and config.use_cpu and not config.fp16
