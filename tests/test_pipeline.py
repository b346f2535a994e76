"""Pipeline rules that need no training: a job name identifies one job."""

from __future__ import annotations

import pytest

from airtune import pipeline


def test_name_in_use_is_refused_for_another_run(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(tmp_path))
    pipeline.claim_name("job-a", "airtune_finetune/run-1", "run-1")
    # the same DAG run again (a retry of validate) keeps its name
    pipeline.claim_name("job-a", "airtune_finetune/run-1", "run-1")
    with pytest.raises(pipeline.NameInUse, match="name: 'job-a' is in use"):
        pipeline.claim_name("job-a", "airtune_finetune/run-2", "run-2")


def test_retraining_dag_owns_its_name_across_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(tmp_path))
    pipeline.claim_name("nightly", "airtune_retrain__nightly", "scheduled__1")
    pipeline.claim_name("nightly", "airtune_retrain__nightly", "scheduled__2")
    with pytest.raises(pipeline.NameInUse):
        pipeline.claim_name("nightly", "airtune_finetune/manual__3", "manual__3")
