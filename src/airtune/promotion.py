"""Promotion: which registered version is the `champion`, the version in use.

Two aliases on the registered model named after a job (docs/mlflow.md):

- `best`     the lowest eval loss on the same data, moved by register (`tracking.register_version`);
- `champion` the version in use, moved only here, by the job's `promote` policy:
  `auto`    the new version takes it when it beats the current champion on `promote_metric`
            (a tie keeps the champion); a first version with no champion takes it;
  `approve` a person approves or rejects in Airflow (the `approve` task, a human-in-the-loop task);
            approved, it takes it; rejected or timed out, it does not;
  `never`   register only.

Whatever the outcome, the decision, who made it and the numbers are written on the new version as
tags (`airtune.promotion.*`) and in the task log; a rejection is not a failed job.

The comparison uses the numbers the evaluate task measured on this job's held-out data: the
tuned model's, and, where the evaluate task also scored the current champion on the same data
(`evaluation.json["champion"]`), the champion's. When it could not (the champion's files are gone),
the champion's numbers recorded at its own evaluation are used, and the reason says so.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

from airtune.spec import LOWER_IS_BETTER

log = logging.getLogger("airtune")

ALIAS_CHAMPION = "champion"
TAG_PREFIX = "airtune.promotion"
APPROVE, REJECT = "Approve", "Reject"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    mode: str  # auto | approve | never
    metric: str
    value: float | None  # the new version's
    champion_version: str | None  # the champion before this decision
    champion_value: float | None
    by: str  # "policy", or who answered the approval ("timeout" when nobody did)
    reason: str

    def tags(self) -> dict[str, str]:
        out = {f"{TAG_PREFIX}.{k}": ("" if v is None else str(v)) for k, v in asdict(self).items()}
        out[f"{TAG_PREFIX}.outcome"] = "promoted" if self.promoted else "kept"
        return out


def retraining_default(mapping) -> str:
    """`promote` for a retraining job file that does not say (docs/form.md#promote): auto when the job has
    held-out data to compare on (val_size > 0 or eval_dataset), else never — a default the user did not
    write must not make their file invalid."""
    val = mapping.get("val_size")
    held_out = (isinstance(val, (int, float)) and not isinstance(val, bool) and val > 0) or bool(mapping.get("eval_dataset"))
    return "auto" if held_out else "never"


def metric_key(metric: str) -> str:
    """A promote_metric as MLflow spells keys (no ':'): benchmark:mmlu -> benchmark.mmlu."""
    return metric.replace(":", ".")


def is_better(metric: str, new: float, old: float) -> bool:
    """Strictly better: lower for a loss, higher for a score; a tie is not better."""
    return new < old if metric in LOWER_IS_BETTER else new > old


def finite(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def decide(mode: str, metric: str, value, *, champion_version: str | None, champion_value,
           approval: dict | None = None, champion_source: str = "") -> Decision:
    """The decision, from the numbers and (for `approve`) the answer; pure, no MLflow.

    approval: the approve task's result, {"chosen_options": [...], "responded_by_user": {...} | None},
    or None when nobody answered in time (the timeout's default, Reject, is applied by Airflow and
    comes here with responded_by_user None)."""
    value, champion_value = finite(value), finite(champion_value)
    facts = dict(mode=mode, metric=metric, value=value, champion_version=champion_version, champion_value=champion_value)
    shown = f"{metric} {value:.4g}" if value is not None else f"{metric} not measured"
    versus = (f"champion version {champion_version}: {champion_value:.4g}{champion_source}" if champion_value is not None
              else f"champion version {champion_version}: {metric} not measured")
    if mode == "never":
        return Decision(False, by="policy", reason="promote is never: registered only", **facts)
    if mode == "approve":
        chosen = (approval or {}).get("chosen_options") or []
        user = (approval or {}).get("responded_by_user") or None
        who = (user.get("name") or user.get("id")) if isinstance(user, dict) else (str(user) if user else None)
        if APPROVE in chosen:
            return Decision(True, by=who or "unknown", reason=f"approved by {who or 'an unnamed user'} ({shown})", **facts)
        if who is None:
            return Decision(False, by="timeout", reason="no answer before promote_timeout_hours: counted as a rejection",
                            **facts)
        return Decision(False, by=who, reason=f"rejected by {who}", **facts)
    # auto
    if champion_version is None:
        return Decision(True, by="policy", reason=f"first version with a champion to hold ({shown})", **facts)
    if value is None:
        return Decision(False, by="policy", reason=f"{shown}: the champion stays", **facts)
    if champion_value is None:
        return Decision(True, by="policy", reason=f"{shown}; {versus}: promoted", **facts)
    if is_better(metric, value, champion_value):
        return Decision(True, by="policy", reason=f"{shown} beats {versus}", **facts)
    word = "ties" if value == champion_value else "does not beat"
    return Decision(False, by="policy", reason=f"{shown} {word} {versus}: the champion stays", **facts)


def champion_of(c, name: str):
    """The model version holding `champion`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, ALIAS_CHAMPION)
    except MlflowException:
        return None


def recorded_value(mv, metric: str) -> float | None:
    """A version's own tuned-model figure for the metric, as register recorded it (tag eval.tuned.<metric>)."""
    if mv is None:
        return None
    return finite(mv.tags.get(f"eval.tuned.{metric_key(metric)}"))


def apply(c, name: str, version: str, decision: Decision) -> None:
    """Record the decision on the version (tags) and move `champion` when promoted; safe to repeat."""
    for key, value in decision.tags().items():
        c.set_model_version_tag(name, version, key, value)
    if decision.promoted:
        c.set_registered_model_alias(name, ALIAS_CHAMPION, version)
