"""Stages rm, dpo (sigmoid, ORPO, SimPO) and kto, each trained for real on the tiny model (CPU, fp32)."""

from __future__ import annotations

import pytest

from .helpers import assert_adapter_trained, assert_loss_fell, load_safetensors_dir, make_job, make_prepared_pairs, make_resolved, train_in_process

SHORT = dict(num_train_epochs=2, save_steps=100)  # 16 rows / batch 4 * 2 epochs = 8 steps (kto: 32 rows, 16 steps)


@pytest.fixture(scope="module")
def pairs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    return {s: make_prepared_pairs(tiny_model_dir, root / s, stage=s, n=8) for s in ("dpo", "kto", "rm")}


@pytest.mark.slow
@pytest.mark.parametrize("pref_loss,beta,by", [("sigmoid", 0.1, 0.2), ("orpo", 0.1, 0.1), ("simpo", 2.0, 0.1)])
def test_dpo(tiny_model_dir, pairs, tmp_path, pref_loss, beta, by):
    job = make_job(tmp_path / "job", tiny_model_dir, pairs["dpo"], stage="dpo", pref_loss=pref_loss, pref_beta=beta, **SHORT)
    train_in_process(job, pairs["dpo"])
    assert_loss_fell(job, by=by)
    assert_adapter_trained(job / "output" / "final", tiny_model_dir)


def test_dpo_losses_map_to_trl(tiny_model_dir, tmp_path):
    from airtune.train.args import map_spec

    def config(**over):
        return map_spec(make_resolved(tiny_model_dir, stage="dpo", **over), output_dir=str(tmp_path), train_rows=16, has_eval=False).config

    for loss in ("sigmoid", "ipo", "hinge"):
        c = config(pref_loss=loss, pref_beta=0.3)
        assert type(c).__name__ == "DPOConfig" and c.loss_type == [loss] and c.beta == 0.3 and c.max_length == 128
    assert type(config(pref_loss="orpo")).__name__ == "ORPOConfig"
    c = config(pref_loss="simpo", pref_beta=2.0)
    assert type(c).__name__ == "CPOConfig" and c.loss_type == "simpo" and c.cpo_alpha == 0.0 and c.beta == 2.0


@pytest.mark.slow
def test_kto(tiny_model_dir, pairs, tmp_path):
    job = make_job(tmp_path / "job", tiny_model_dir, pairs["kto"], stage="kto", pref_beta=0.1, **SHORT)
    train_in_process(job, pairs["kto"])
    assert_loss_fell(job, by=0.05)  # KTO's loss starts at 0.5 (both halves at sigmoid(0))
    assert_adapter_trained(job / "output" / "final", tiny_model_dir)


@pytest.mark.slow
def test_rm_lora_trains_adapter_and_score_head(tiny_model_dir, pairs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    job = make_job(tmp_path / "job", tiny_model_dir, pairs["rm"], stage="rm", **SHORT)
    train_in_process(job, pairs["rm"])
    assert_loss_fell(job, by=0.2)
    trained = assert_adapter_trained(job / "output" / "final", tiny_model_dir, model_class=AutoModelForSequenceClassification)
    assert any(k.startswith("base_model.model.score") for k in trained), sorted(trained)[-3:]


@pytest.mark.slow
def test_rm_freeze_trains_last_layer_and_score(tiny_model_dir, pairs, tmp_path):
    import torch

    job = make_job(tmp_path / "job", tiny_model_dir, pairs["rm"], stage="rm", finetuning_method="freeze",
                   freeze_trainable_layers=1, lora_rank=None, lora_alpha=None, lora_dropout=None, learning_rate=2e-3, **SHORT)
    train_in_process(job, pairs["rm"])
    assert_loss_fell(job, by=0.1)
    trained, base = load_safetensors_dir(job / "output" / "final"), load_safetensors_dir(tiny_model_dir)
    assert "score.weight" in trained
    for name, tensor in trained.items():
        if name == "score.weight":
            continue
        if ".layers.3." in name:
            assert not torch.equal(tensor, base[name]), name
        else:
            assert torch.equal(tensor, base[name]), name


@pytest.fixture(scope="module")
def reward_model(tiny_model_dir, pairs, tmp_path_factory):
    """A finished rm job (LoRA): its output/final is the reward model of the grpo test."""
    job = make_job(tmp_path_factory.mktemp("rm") / "job", tiny_model_dir, pairs["rm"], stage="rm", **SHORT)
    train_in_process(job, pairs["rm"])
    return job / "output" / "final"


@pytest.mark.slow
def test_grpo_against_a_trained_reward_model(tiny_model_dir, reward_model, tmp_path):
    """GRPO's loss is ~0 by construction (advantages are centred per group), so this test checks what
    can be checked in 8 steps of a random tiny model: completions were sampled and scored by the
    reward model (rewards finite, spread within groups), gradients reached every LoRA matrix."""
    import json
    import math

    from .helpers import make_prepared_prompts, metrics

    data = make_prepared_prompts(tiny_model_dir, tmp_path / "prompts", repeat=1)
    job = make_job(tmp_path / "job", tiny_model_dir, data, stage="grpo", num_train_epochs=1, save_steps=100, logging_steps=1,
                   cutoff_len=32, val_size=0.0, extra_args={"max_completion_length": 16})
    spec = json.loads((job / "spec.json").read_text())
    spec["reward_model"] = {"name": "rm-job", "final_dir": str(reward_model)}
    (job / "spec.json").write_text(json.dumps(spec))
    result = train_in_process(job, data)
    assert result["global_step"] == 8  # 8 prompts, 4 completions each, batch 4
    rewards = [r for r in metrics(job) if "reward" in r]
    assert len(rewards) == 8 and all(math.isfinite(r["reward"]) for r in rewards)
    assert any(r["reward_std"] > 0.01 for r in rewards)  # completions of a group differ and are scored apart
    assert_adapter_trained(job / "output" / "final", tiny_model_dir)
