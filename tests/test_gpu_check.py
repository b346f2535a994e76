"""scripts/gpu_check.py's CPU parts: arguments, the model config at small size, the parameter count, result
writing, and the no-CUDA answer. The GPU checks themselves need a lent GPU machine (scripts/gpu_check.sh);
no GPU is lent to this test suite, so they are not run here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments_defaults_and_choices(gc, tmp_path):
    a = gc.parse_args(["--out", str(tmp_path)])
    assert a.checks == ["bf16_flash_liger", "qlora_4bit", "zero3"]
    assert (a.size, a.seq_len, a.batch, a.steps) == ("0.5b", 1024, 8, 10)
    a = gc.parse_args(["--out", str(tmp_path), "--checks", "zero3", "--size", "tiny", "--steps", "2"])
    assert a.checks == ["zero3"] and a.size == "tiny" and a.steps == 2
    with pytest.raises(SystemExit):
        gc.parse_args(["--checks", "fp8"])  # not a check
    with pytest.raises(SystemExit, match="--seq-len: 0 is not accepted"):
        gc.parse_args(["--seq-len", "0"])


def test_model_config_small_and_half_billion(gc):
    from transformers import LlamaForCausalLM

    config = gc.llama_config("tiny", vocab_size=512)
    model = LlamaForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == gc.count_params("tiny", 512)
    # the GPU size: ~0.5 B parameters, counted from its shape without building it
    assert 0.45e9 < gc.count_params("0.5b") < 0.55e9
    big = gc.llama_config("0.5b")
    assert (big.num_hidden_layers, big.hidden_size, big.num_key_value_heads) == (32, 1024, 4)
    with pytest.raises(ValueError, match="size '7b' is not one of"):
        gc.llama_config("7b")


def test_zero3_config_fills_auto_values(gc):
    config = gc.zero3_config(batch=8)
    assert config["zero_optimization"]["stage"] == 3
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert "auto" not in json.dumps(config)  # DeepSpeed outside the Trainer takes no "auto"


def test_write_results_is_whole_json(gc, tmp_path):
    path = gc.write_results(tmp_path / "out", {"cuda": True, "checks": [{"check": "zero3", "tokens_per_s": 1.5}]})
    assert json.loads(path.read_text())["checks"][0]["tokens_per_s"] == 1.5
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_no_cuda_is_said_and_recorded(tmp_path):
    """On this CPU machine: the script says there is no CUDA GPU, writes {"cuda": false} and exits 3."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "no CUDA GPU here" in proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["cuda"] is False and report["checks"] == [] and report["reason"]
    assert report["model"]["params"] == 494_994_432
