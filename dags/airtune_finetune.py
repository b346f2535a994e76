"""airtune_finetune: one fine-tuning job per DAG run.

Trigger it from the form (Trigger DAG ▸ the job form), from the REST API with the job as `conf`,
or with `airtune run FILE.yaml`. The fields are FORM.md's; a value left empty uses its default.

    validate ─► prepare_dataset ─► choose_launcher ─► train_local ─► register
                                                   (one train task per launcher kind)
    cleanup runs last, always: it stops anything training left behind.

This file stays thin and quick to parse: the work happens in `airtune.pipeline`, imported inside
the tasks (no torch, transformers, datasets or mlflow at parse time).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, get_current_context, task

from airtune import form

DAG_ID = "airtune_finetune"


@dag(
    dag_id=DAG_ID,
    dag_display_name="airtune: fine-tune a model",
    description="Fine-tune a language model: validate, prepare the data, train, register in MLflow",
    doc_md=__doc__,
    schedule=None,
    catchup=False,
    params=form.dag_params(),
    tags=["airtune", "fine-tuning"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=20)},
    max_active_tasks=8,
)
def airtune_finetune():
    @task(retries=0)  # a job that is not valid stays not valid: no retry, fail in seconds
    def validate() -> dict:
        from airtune import pipeline

        ctx = get_current_context()
        return pipeline.validate(dict(ctx["params"]), dag_id=ctx["dag"].dag_id, run_id=ctx["run_id"])

    @task
    def prepare_dataset(job: dict) -> dict:
        from airtune import pipeline

        return pipeline.prepare_dataset(job)

    @task.branch
    def choose_launcher(job: dict) -> str:
        return f"train_{job['launcher']}"

    @task(retries=2)  # a retry resumes from the newest checkpoint in the job folder
    def train_local(job: dict) -> dict:
        from airtune import pipeline

        return pipeline.train_local(job)

    @task(trigger_rule="none_failed_min_one_success", retries=2)
    def register(job: dict) -> dict:
        from airtune import pipeline

        return pipeline.register(job)

    @task(retries=0)
    def cleanup() -> None:
        from airtune import pipeline

        ctx = get_current_context()
        job = ctx["ti"].xcom_pull(task_ids="validate")
        pipeline.cleanup(job, failed=not ctx["ti"].xcom_pull(task_ids="register"))

    job = validate()
    prepared = prepare_dataset(job)
    branch = choose_launcher(prepared)
    trained_local = train_local(prepared)
    branch >> trained_local
    registered = register(prepared)
    trained_local >> registered
    # A teardown: it runs however the run ends, and does not decide the run's state.
    registered >> cleanup().as_teardown(setups=job)


airtune_finetune()
