"""Methods `freeze` and `full`, and stage `pt`, trained for real on the tiny model (CPU, fp32)."""

from __future__ import annotations

import pytest

from .helpers import assert_loss_fell, load_safetensors_dir, make_job, make_prepared_text, train_in_process


def base_weights(model_dir):
    return load_safetensors_dir(model_dir)


@pytest.mark.slow
def test_freeze_trains_only_the_last_layers(tiny_model_dir, sft_data, tmp_path):
    import torch

    job = make_job(tmp_path / "job", tiny_model_dir, sft_data, finetuning_method="freeze", freeze_trainable_layers=1,
                   lora_rank=None, lora_alpha=None, lora_dropout=None, learning_rate=2e-3)
    train_in_process(job, sft_data)
    assert_loss_fell(job)
    final = job / "output" / "final"
    assert not (final / "adapter_config.json").exists()
    trained, base = load_safetensors_dir(final), base_weights(tiny_model_dir)
    assert trained.keys() == base.keys()
    for name, tensor in base.items():
        if ".layers.3." in name:  # 4 layers, the last 1 trains
            assert not torch.equal(trained[name], tensor), f"{name} did not change"
        else:
            assert torch.equal(trained[name], tensor), f"{name} changed but is frozen"


@pytest.mark.slow
def test_full_trains_every_weight(tiny_model_dir, sft_data, tmp_path):
    import torch

    job = make_job(tmp_path / "job", tiny_model_dir, sft_data, finetuning_method="full",
                   lora_rank=None, lora_alpha=None, lora_dropout=None, learning_rate=1e-3)
    train_in_process(job, sft_data)
    assert_loss_fell(job, by=1.0)
    trained, base = load_safetensors_dir(job / "output" / "final"), base_weights(tiny_model_dir)
    assert trained.keys() == base.keys()
    unchanged = [name for name, tensor in base.items() if torch.equal(trained[name], tensor)]
    assert not unchanged, unchanged


@pytest.mark.slow
def test_pt_on_packed_text(tiny_model_dir, tmp_path):
    data = make_prepared_text(tiny_model_dir, tmp_path / "text")
    job = make_job(tmp_path / "job", tiny_model_dir, data, stage="pt", dataset=["c4_demo"], packing=True,
                   per_device_train_batch_size=2, num_train_epochs=3)
    train_in_process(job, data)
    assert_loss_fell(job)


def test_stage_mismatch_with_data_is_refused(tiny_model_dir, sft_data, tmp_path):
    job = make_job(tmp_path / "job", tiny_model_dir, sft_data, stage="pt")
    with pytest.raises(SystemExit, match="prepared for stage 'sft'"):
        train_in_process(job, sft_data)

