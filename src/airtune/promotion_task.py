"""The `approve` task: Airflow's human-in-the-loop operator asking whether the new version becomes
the champion, with the comparison in front of the person who answers.

It is a plain `HITLOperator` with the options Approve and Reject (not `ApprovalOperator`): a Reject
from ApprovalOperator skips the task after it, and here the task after it (`promote`) must run
whatever the answer, to record the decision. Its body (templated Markdown: a table renders in the
UI's Required Actions) and its timeout come from the job, which is known only when the run starts
(the finetune DAG takes its job from the run's params), so `execute` sets them before waiting.
No answer within `promote_timeout_hours`: Airflow's scheduler applies the default, Reject.
Answered in the UI, or with `PATCH /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/approve/-1/hitlDetails`
and `{"chosen_options": ["Approve"]}` (the official client's `TaskInstanceApi.update_hitl_detail`).
The job's `notify` connections are told that an approval waits: `execute` builds the operator's own
`notifiers` from them (airtune.notify), which HITLOperator calls before it waits; the message links
to the Required Actions page and the job's page.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator

from airtune.promotion import APPROVE, REJECT


class PromotionApproval(HITLOperator):
    template_fields: Sequence[str] = (*HITLOperator.template_fields, "airtune_job")

    def __init__(self, *, airtune_job: Any, **kwargs) -> None:
        kwargs.setdefault("subject", "Promote the new model version?")
        super().__init__(options=[APPROVE, REJECT], defaults=[REJECT], multiple=False, retries=0, **kwargs)
        self.airtune_job = airtune_job

    def execute(self, context):
        from airtune import pipeline

        job = self.airtune_job
        resolved = pipeline.load_resolved(job)
        spec = resolved["spec"]
        self.subject = f"Promote {spec['name']} version {job.get('model_version')} to champion?"
        self.body = pipeline.comparison_markdown(job)
        self.response_timeout = timedelta(hours=float(spec.get("promote_timeout_hours") or 24))
        self.notifiers = self._notifiers(job, spec, context)
        self.log.info("waiting for an answer (Approve / Reject) for at most %s; Required Actions: %s",
                      self.response_timeout, self._link(context))
        return super().execute(context)

    def _notifiers(self, job, spec, context) -> list:
        """The job's notify connections, each as its provider's notifier: an approval waits."""
        from airtune import notify

        link = self._link(context)
        return notify.approval_notifiers(job, spec, link if "://" in link else None)

    def _link(self, context) -> str:
        try:
            return self.generate_link_to_ui(task_instance=context["task_instance"])
        except Exception:  # no api.base_url configured: the UI's Required Actions page still lists it
            return "the Airflow UI's Required Actions page"
