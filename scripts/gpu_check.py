"""GPU check (issue 3): airtune's GPU paths on a randomly initialised ~0.5 B-parameter Llama, in minutes.

    bash scripts/gpu_check.sh                    # on a GPU machine; see that script for the wheels it needs
    python scripts/gpu_check.py --out DIR [--checks bf16_flash_liger qlora_4bit zero3] [--size 0.5b]

Each check runs in its own process (so its peak GPU memory is its own), trains LoRA rank 8 on all
linear layers for a few warm-up steps and then `--steps` timed steps on random full-length token rows
(no padding), and records tokens per second and peak GPU memory:

- `bf16_flash_liger`: bf16 weights, attention through SDPA restricted to its flash kernel
  (`sdpa_kernel(FLASH_ATTENTION)`: it raises if flash cannot run), Liger's Triton kernels (RMSNorm,
  RoPE, SwiGLU, fused linear cross-entropy) patched into the Llama modules;
- `qlora_4bit`: the frozen weights quantized to 4-bit NF4 by bitsandbytes on load, with the
  quantization config airtune's trainer builds (`airtune.train.args._quantization_config`);
- `zero3`: DeepSpeed ZeRO-3 on one GPU with airtune's `configs/deepspeed/zero3.json`.

Results go to DIR/gpu_check.json (one record per check, with the error where one failed). Without a
CUDA GPU it says so, writes {"cuda": false, ...} and exits 3. The CPU parts (arguments, the model
config, writing results) are tested in tests/test_gpu_check.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKS = ("bf16_flash_liger", "qlora_4bit", "zero3")
EXIT_NO_CUDA = 3

# name -> Llama shape. "0.5b": 32 layers of width 1024 (GQA 16 query / 4 key-value heads, MLP 4096) with
# the tiny model's 4,096-token vocabulary: ~0.49 B parameters, nearly all in the layers LoRA wraps.
SIZES = {
    "0.5b": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 16,
             "num_key_value_heads": 4},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / ".airtune" / "gpu-check"),
                   help="folder for gpu_check.json (default: $OUT, else .airtune/gpu-check)")
    p.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS))
    p.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (kernel compilation, autotuning)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--timeout", type=int, default=150, help="seconds per check")
    p.add_argument("--one", choices=CHECKS, help=argparse.SUPPRESS)  # run one check in this process
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    a = make_parser().parse_args(argv)
    for name in ("seq_len", "batch", "steps", "vocab_size", "lora_rank", "timeout"):
        if getattr(a, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: {getattr(a, name)} is not accepted; give a whole number of at least 1")
    if a.warmup < 0:
        raise SystemExit(f"--warmup: {a.warmup} is not accepted; give 0 or more")
    return a


def llama_config(size: str, vocab_size: int = 4096, max_positions: int = 4096):
    from transformers import LlamaConfig

    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {sorted(SIZES)}")
    shape = SIZES[size]
    return LlamaConfig(vocab_size=vocab_size, max_position_embeddings=max_positions, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                       head_dim=shape["hidden_size"] // shape["num_attention_heads"], **shape)


def count_params(size: str, vocab_size: int = 4096) -> int:
    """Parameters of the Llama of this size (untied embeddings), from its shape alone (no torch needed)."""
    shape = SIZES[size]
    h, i, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    d = h // shape["num_attention_heads"]
    attn = h * shape["num_attention_heads"] * d * 2 + h * shape["num_key_value_heads"] * d * 2  # q, o; k, v
    layer = attn + 3 * h * i + 2 * h  # + gate, up, down; two RMSNorms
    return 2 * vocab_size * h + n * layer + h


def write_results(out: Path, report: dict) -> Path:
    """gpu_check.json in `out`, written whole (a temporary file renamed), so a reader never sees half of it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_check.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def cuda_status() -> dict:
    """Whether a CUDA GPU is usable here, and what the machine has."""
    info = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch
    except ImportError as exc:
        return {**info, "cuda": False, "reason": f"torch is not installed ({exc})"}
    info["torch"] = torch.__version__
    if not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "torch sees no CUDA device"
        return {**info, "cuda": False, "reason": why}
    props = torch.cuda.get_device_properties(0)
    return {**info, "cuda": True, "cuda_version": torch.version.cuda, "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1), "capability": list(torch.cuda.get_device_capability(0))}


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "liger-kernel", "deepspeed", "triton"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# -- the checks (each in its own process, on the GPU) ---------------------------------------------
def _lora(model, rank: int):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


def _build(check: str, a, tmp: Path):
    """The model for one check, on the GPU; returns (model or engine, step function)."""
    import torch
    from transformers import LlamaForCausalLM

    config = llama_config(a.size, a.vocab_size, max(4096, a.seq_len))
    torch.manual_seed(0)
    if check == "bf16_flash_liger":
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        # patches the Llama classes: build the model afterwards
        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=True)
        config._attn_implementation = "sdpa"
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model = _lora(model, a.lora_rank)
        return model, _adamw_step(model)
    if check == "qlora_4bit":
        sys.path.insert(0, str(REPO / "src"))
        from peft import prepare_model_for_kbit_training

        from airtune.train.args import _quantization_config

        # bitsandbytes quantizes on load: save the random bf16 weights, load them back quantized
        weights = tmp / "random-llama"
        if not (weights / "config.json").exists():
            with torch.device("cuda"):
                LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(weights)
        quant = _quantization_config({"quantization_bit": "4", "quantization_method": "bnb", "finetuning_method": "lora"}, "bf16")
        model = LlamaForCausalLM.from_pretrained(weights, quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map={"": 0}, attn_implementation="sdpa")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = _lora(model, a.lora_rank)
        return model, _adamw_step(model)
    if check == "zero3":
        import deepspeed

        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": os.environ.get("MASTER_PORT", "29517"),
                           "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
        ds_config = zero3_config(a.batch)
        config._attn_implementation = "sdpa"
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model = _lora(model, a.lora_rank)
        params = [p for p in model.parameters() if p.requires_grad]
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config,
                                               optimizer=torch.optim.AdamW(params, lr=1e-4))

        def step(batch):
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            return loss

        return engine, step
    raise ValueError(check)


def zero3_config(batch: int) -> dict:
    """configs/deepspeed/zero3.json with its "auto" values filled as transformers' integration fills them."""
    config = json.loads((REPO / "configs" / "deepspeed" / "zero3.json").read_text())
    config.update(train_batch_size=batch, train_micro_batch_size_per_gpu=batch, gradient_accumulation_steps=1,
                  gradient_clipping=1.0)
    config["fp16"]["enabled"] = False
    config["bf16"]["enabled"] = True
    zero = config["zero_optimization"]
    for key, value in (("reduce_bucket_size", 1024 * 1024), ("stage3_prefetch_bucket_size", 1024 * 1024 * 9 // 10),
                       ("stage3_param_persistence_threshold", 10 * 1024)):
        if zero.get(key) == "auto":
            zero[key] = value
    return config


def _adamw_step(model):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step(batch):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def run_one(check: str, a) -> dict:
    """One check in this process: warm-up steps, then timed steps; tokens/s and peak GPU memory."""
    import contextlib

    import torch

    tmp = a.out / "work"
    tmp.mkdir(parents=True, exist_ok=True)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.monotonic()
    model, step = _build(check, a, tmp)
    build_s = time.monotonic() - t0
    build_peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()  # from here: training's peak (the weights stay allocated, so they count)
    gen = torch.Generator(device="cuda").manual_seed(0)

    def batch():
        ids = torch.randint(3, a.vocab_size, (a.batch, a.seq_len), device="cuda", generator=gen)
        return {"input_ids": ids, "labels": ids}  # full-length rows: no padding, no attention mask (flash can run)

    flash = contextlib.nullcontext()
    if check == "bf16_flash_liger":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        flash = sdpa_kernel([SDPBackend.FLASH_ATTENTION])  # only the flash kernel: an error if it cannot run
    losses = []
    with flash:
        for _ in range(a.warmup):
            losses.append(float(step(batch())))
        torch.cuda.synchronize()
        t1 = time.monotonic()
        for _ in range(a.steps):
            losses.append(float(step(batch())))
        torch.cuda.synchronize()
        seconds = time.monotonic() - t1
    tokens = a.steps * a.batch * a.seq_len
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"check": check, "ok": True, "tokens_per_s": round(tokens / seconds, 1), "timed_steps": a.steps,
            "timed_seconds": round(seconds, 3), "tokens_per_step": a.batch * a.seq_len, "build_seconds": round(build_s, 1),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "peak_gpu_memory_build_gib": round(build_peak / 2**30, 3),
            "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3),
            "trainable_params": trainable, "loss_first": losses[0], "loss_last": losses[-1],
            "losses_finite": all(x == x and abs(x) != float("inf") for x in losses)}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.one:
        try:
            result = run_one(a.one, a)
        except Exception as exc:  # recorded, not raised: the other checks still run
            result = {"check": a.one, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(json.dumps(result), flush=True)
        return 0 if result["ok"] else 1

    status = cuda_status()
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **status, "packages": package_versions(),
              "model": {"size": a.size, "params": count_params(a.size, a.vocab_size), "vocab_size": a.vocab_size,
                        **SIZES[a.size], "random_init": True},
              "setup": {"seq_len": a.seq_len, "batch": a.batch, "steps": a.steps, "warmup": a.warmup,
                        "lora_rank": a.lora_rank, "lora_target": "all-linear", "optimizer": "adamw"},
              "checks": []}
    if not status["cuda"]:
        print(f"gpu_check: no CUDA GPU here ({status['reason']}); nothing was run", file=sys.stderr)
        write_results(a.out, report)
        return EXIT_NO_CUDA
    print(f"gpu_check: {status['gpu']} ({status['gpu_memory_gib']} GiB), torch {status['torch']}, model "
          f"{report['model']['params'] / 1e9:.2f} B parameters", flush=True)
    for check in a.checks:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", check, *_forward_args(a)]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
            result = json.loads(lines[-1]) if lines else {"check": check, "ok": False,
                                                          "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
            if not result.get("ok"):
                result["stderr_tail"] = proc.stderr[-3000:]
        except subprocess.TimeoutExpired:
            result = {"check": check, "ok": False, "error": f"timed out after {a.timeout} s"}
        result["wall_seconds"] = round(time.monotonic() - t0, 1)
        report["checks"].append(result)
        write_results(a.out, report)  # after each check: a later timeout keeps what was measured
        if result.get("ok"):
            print(f"  {check:18s} {result['tokens_per_s']:>10,.0f} tokens/s  peak {result['peak_gpu_memory_gib']:.2f} GiB  "
                  f"loss {result['loss_first']:.3f} -> {result['loss_last']:.3f}", flush=True)
        else:
            print(f"  {check:18s} FAILED: {result['error'][:300]}", flush=True)
    path = write_results(a.out, report)
    print(f"gpu_check: results in {path}")
    return 0 if all(r.get("ok") for r in report["checks"]) else 1


def _forward_args(a) -> list[str]:
    return ["--out", str(a.out), "--size", a.size, "--vocab-size", str(a.vocab_size), "--seq-len", str(a.seq_len),
            "--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup), "--lora-rank", str(a.lora_rank)]


if __name__ == "__main__":
    sys.exit(main())
