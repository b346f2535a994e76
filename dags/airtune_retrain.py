"""airtune_retrain__<name>: one DAG per file of configs/jobs/, retraining that job on its schedule.

A job file is a job (the flat mapping of docs/form.md) plus `schedule`: a cron expression, Airflow assets
(retrain when a dataset is updated: a producing DAG's outlet or `POST /api/v2/assets/events`), or
both (AssetOrTimeSchedule). Every run builds the same graph as airtune_finetune
(airtune.job_graph) from the file's job, validated like any conf, and registers a new version of
the registered model named after the job. docs/retraining.md has the format and examples.

A file that cannot be used becomes a paused placeholder DAG under its name, with one task that
fails naming the file and the field: the other files' DAGs are unaffected (Airflow records import
errors per Python file, and this one never raises while parsing).

Thin and cheap to parse: airtune.retrain reads the files (yaml, airtune.spec, the catalog); no
torch, transformers, datasets or mlflow.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from datetime import timedelta

from airflow.sdk import dag, task

from airtune import job_graph, notify, pools, retrain

log = logging.getLogger(__name__)


def _retrain_dag(job: retrain.RetrainJob):
    schedule = job.schedule
    # The Kubernetes train tasks' pool and slots, known here from the file (train_local: always local's).
    location = job.mapping.get("location") or "local"
    train_pool = pools.train_slots(job.mapping) if location != "local" else None

    @dag(
        dag_id=job.dag_id,
        dag_display_name=f"airtune: retrain {job.name}",
        description=f"Retrain {job.name} ({schedule.describe()}) from {job.path.name}; each run registers a new version",
        doc_md=f"Retraining job `{job.name}` from `{job.path}`: {schedule.describe()}.\n\n"
               f"```yaml\n{job.path.read_text(encoding='utf-8')}\n```",
        schedule=schedule.airflow_schedule(),
        catchup=False,
        max_active_runs=1,  # one version at a time: a run started while one trains waits for it
        tags=["airtune", "retraining"],
        default_args={"retries": 1, "retry_delay": timedelta(seconds=20)},
        max_active_tasks=8,
        # the job's `notify` connections are told how each run ended (docs/notifications.md)
        **notify.dag_callbacks(job.mapping),
    )
    def retraining():
        job_graph.build_job_graph(job=job.mapping, train_pool=train_pool)

    return retraining()


def _placeholder_dag(job: retrain.RetrainJob, problem: str | None = None):
    from airtune import redact

    # the description and doc are readable by anyone who sees DAGs: no secret from the file in them
    problem = redact.text(problem or job.problem())
    job = dataclasses.replace(job, errors=tuple(redact.text(e) for e in job.errors))
    fields = ", ".join(dict.fromkeys(job.fields)) or "(file)"
    task_id = re.sub(r"[^A-Za-z0-9_.\-]", "_", f"invalid__{job.path.name}__{fields.replace(', ', '__')}")[:250]

    @dag(
        dag_id=job.dag_id,
        dag_display_name=f"airtune: retrain {job.name} (BROKEN job file)",
        description=f"BROKEN: {job.path} — fix {fields}: {problem}"[:1000],
        doc_md=f"The job file `{job.path}` cannot be used, so this DAG only says why:\n\n"
               + "\n".join(f"- {e}" for e in (job.errors or (problem,)))
               + "\n\nFix the file; the next parse turns this into the retraining DAG (unpause it then).",
        schedule=None,
        is_paused_upon_creation=True,
        catchup=False,
        tags=["airtune", "retraining", "broken"],
    )
    def broken():
        @task(task_id=task_id, task_display_name=f"fix {job.path.name}: {fields}", retries=0)
        def job_file_is_invalid() -> None:
            raise ValueError(f"the job file {job.path} is not valid (fix {fields}):\n" + "\n".join(f"  {e}" for e in job.errors or (problem,)))

        job_file_is_invalid()

    return broken()


for _job in retrain.load_jobs():
    if _job.ok:
        try:
            _retrain_dag(_job)
            continue
        except Exception as exc:  # never let one file take the others down (one import error per Python file)
            log.exception("retraining DAG from %s", _job.path)
            _job = retrain.RetrainJob(_job.name, _job.path, _job.mapping, _job.schedule,
                                      (f"schedule: {exc}",), ("schedule",))
    _placeholder_dag(_job)
