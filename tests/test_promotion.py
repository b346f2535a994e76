"""The promote policy (airtune.promotion.decide): pure, so every branch is checked here; the MLflow
side (aliases, tags) and the approval task run for real in tests/tracking/test_promotion_mlflow.py
and tests/e2e/test_approval.py."""

from __future__ import annotations

import pytest

from airtune.promotion import Decision, decide, is_better, metric_key


def test_lower_is_better_for_the_loss_higher_for_scores_and_a_tie_is_not_better():
    assert is_better("eval_loss", 1.0, 1.1) and not is_better("eval_loss", 1.1, 1.0)
    assert is_better("rouge-l", 30.0, 20.0) and not is_better("rouge-l", 20.0, 30.0)
    assert not is_better("eval_loss", 1.0, 1.0) and not is_better("bleu-4", 5.0, 5.0)
    assert is_better("benchmark:mmlu", 51.0, 50.0)


def test_auto_promotes_a_first_version():
    d = decide("auto", "eval_loss", 2.0, champion_version=None, champion_value=None)
    assert d.promoted and d.by == "policy" and "first version" in d.reason


@pytest.mark.parametrize("metric, new, old, promoted", [
    ("eval_loss", 1.9, 2.0, True), ("eval_loss", 2.1, 2.0, False), ("eval_loss", 2.0, 2.0, False),
    ("rouge-l", 41.0, 40.0, True), ("rouge-l", 39.0, 40.0, False), ("rouge-l", 40.0, 40.0, False),
])
def test_auto_moves_champion_only_when_strictly_better(metric, new, old, promoted):
    d = decide("auto", metric, new, champion_version="3", champion_value=old)
    assert d.promoted is promoted
    assert d.champion_version == "3" and d.champion_value == old and d.value == new
    assert ("beats" in d.reason) if promoted else ("the champion stays" in d.reason)
    if new == old:
        assert "ties" in d.reason


def test_auto_keeps_the_champion_when_the_new_figure_is_missing_or_not_finite():
    for value in (None, float("nan"), float("inf"), "n/a"):
        d = decide("auto", "rouge-l", value, champion_version="1", champion_value=10.0)
        assert not d.promoted and d.value is None


def test_never_records_but_never_promotes_even_a_first_better_version():
    d = decide("never", "eval_loss", 0.1, champion_version=None, champion_value=None)
    assert not d.promoted and "never" in d.reason


def test_approve_follows_the_answer_and_names_who_gave_it():
    yes = decide("approve", "eval_loss", 2.5, champion_version="1", champion_value=2.0,  # worse, yet approved
                 approval={"chosen_options": ["Approve"], "responded_by_user": {"id": "7", "name": "ana"}})
    assert yes.promoted and yes.by == "ana" and "approved by ana" in yes.reason
    no = decide("approve", "eval_loss", 1.0, champion_version="1", champion_value=2.0,  # better, yet rejected
                approval={"chosen_options": ["Reject"], "responded_by_user": {"id": "7", "name": "ana"}})
    assert not no.promoted and no.by == "ana" and "rejected by ana" in no.reason


def test_approve_timeout_is_a_rejection():
    # Airflow's scheduler applies the task's default (Reject) with no user when the timeout passes
    d = decide("approve", "eval_loss", 1.0, champion_version=None, champion_value=None,
               approval={"chosen_options": ["Reject"], "responded_by_user": None})
    assert not d.promoted and d.by == "timeout" and "promote_timeout_hours" in d.reason
    assert not decide("approve", "eval_loss", 1.0, champion_version=None, champion_value=None, approval=None).promoted


def test_decision_tags_carry_outcome_and_numbers():
    d = decide("auto", "bleu-4", 12.5, champion_version="2", champion_value=10.0)
    tags = d.tags()
    assert tags["airtune.promotion.outcome"] == "promoted"
    assert tags["airtune.promotion.value"] == "12.5" and tags["airtune.promotion.champion_value"] == "10.0"
    assert tags["airtune.promotion.metric"] == "bleu-4" and tags["airtune.promotion.mode"] == "auto"
    assert isinstance(d, Decision)


def test_metric_keys_are_mlflow_safe():
    assert metric_key("benchmark:mmlu") == "benchmark.mmlu" and metric_key("rouge-l") == "rouge-l"


def test_a_retraining_file_promotes_by_default_only_with_held_out_data():
    from airtune.promotion import retraining_default

    assert retraining_default({"val_size": 0.1}) == "auto"
    assert retraining_default({"eval_dataset": ["identity"]}) == "auto"
    assert retraining_default({}) == "never" and retraining_default({"val_size": 0}) == "never"
    assert retraining_default({"val_size": True}) == "never"  # not a number: validate refuses it anyway
