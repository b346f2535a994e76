"""One table says which datasets a stage takes (airtune.stages): validate and the data step agree on
every stage and kind, and grpo's prompts come from preference pairs as well as from conversations."""

from __future__ import annotations

import pytest

from airtune import stages
from airtune.data import DataError, check_stage_fit, prepare

from .conftest import DEMO, entry_dict, load_rows, resolved

KIND_OF_DATASET = {"sft": "identity", "text": "c4_demo", "preference": "dpo_en_demo", "kto": "kto_en_demo"}


class FinishedRewardModel:
    """A JobLookup with one finished rm job (grpo needs one)."""

    def __init__(self, folder):
        self.folder = folder

    def get(self, name):
        return {"name": name, "state": "finished", "run_id": "r", "job_dir": str(self.folder),
                "resolved": {"spec": {"stage": "rm", "base_model": "tiny-llama-dev", "finetuning_method": "lora"}},
                "result": {}, "final_dir": str(self.folder)}


@pytest.mark.parametrize("stage", sorted(stages.STAGE_DATASET_KINDS))
def test_validate_and_the_data_step_accept_the_same_kinds(stage, tmp_path):
    from airtune.resolve import validate_mapping
    from airtune.spec import SpecError

    for kind, name in KIND_OF_DATASET.items():
        job = {"name": "fit", "base_model": "tiny-llama-dev", "stage": stage, "dataset": [name]}
        if stage == "grpo":
            job["reward_model"] = "rm-job"
        try:
            validate_mapping(job, hardware={"cuda_devices": 0}, jobs=FinishedRewardModel(tmp_path))
            validate_accepts = True
        except SpecError as exc:
            assert all(e.field != "dataset" or "trains on" in e.message for e in exc.errors), exc.errors
            validate_accepts = not any(e.field == "dataset" for e in exc.errors)
        try:
            check_stage_fit(stage, [{"name": name, "kind": kind}])
            data_accepts = True
        except DataError:
            data_accepts = False
        assert validate_accepts == data_accepts == (kind in stages.dataset_kinds(stage)), (stage, kind)


def test_grpo_prompts_from_preference_pairs(tiny_model_dir, tokenizer, lf_catalog, tmp_path):
    """What train/grpo.py gives GRPOTrainer (the prompt column) from a preference dataset: its prompts."""
    import json

    entry = lf_catalog.dataset("dpo_en_demo")
    out = tmp_path / "o"
    prepare(resolved(tiny_model_dir, [entry_dict(entry)], stage="grpo", cutoff_len=100_000), out, log=lambda m: None)
    rows = load_rows(out)
    source = json.loads((DEMO / "dpo_en_demo.json").read_text())
    assert len(rows) == len(source) and set(rows[0]) >= {"prompt", "prompt_ids"}
    first = [{"role": {"human": "user", "gpt": "assistant"}[m["from"]], "content": m["value"]} for m in source[0]["conversations"]]
    assert rows[0]["prompt"] == first and rows[0]["prompt"][-1]["role"] == "user"
    assert tokenizer.decode(rows[0]["prompt_ids"]).endswith("<|im_start|>assistant\n")
