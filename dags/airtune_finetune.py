"""airtune_finetune: one fine-tuning job per DAG run.

Trigger it from the form (Trigger DAG ▸ the job form), from the REST API with the job as `conf`,
or with `airtune run FILE.yaml`. The fields are FORM.md's; a value left empty uses its default.

    validate ─► prepare_dataset ─► choose_launcher ─► train_local ─► register
                                                   (one train task per launcher kind)
    cleanup runs last, always: it stops anything training left behind.

The train branches (choose_launcher picks one when the run starts, from the job's location):
    train_local            a process group on the worker
    train_kubernetes_pod   one pod (nodes = 1): TrainPodOperator, deferrable
    train_kubernetes_job   several pods (nodes > 1): start (headless Service) ─► train (indexed
                           Job, deferrable) ─► teardown (Job and Service deleted, however it ended)
For a Kubernetes location, prepare_dataset runs its work in a CPU pod in the cluster.

This file stays thin and quick to parse: the work happens in `airtune.pipeline`, imported inside
the tasks (no torch, transformers, datasets or mlflow at parse time).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, get_current_context, task

# The Kubernetes train branches are the cncf.kubernetes provider's operators; importing them costs
# ~0.7 s (the kubernetes clients). The DAG processor imports the `airflow.*` modules a DAG file names
# once, before it forks a parser per file (parsing_pre_import_modules): hence this line.
import airflow.providers.cncf.kubernetes.operators.job  # noqa: F401, E402
from airflow.sdk import TaskGroup

from airtune import form
from airtune.launch.kubernetes.operators import TrainJobOperator, TrainPodOperator

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

    @task(task_id="start")
    def start_kubernetes_job(job: dict) -> dict:
        from airtune import pipeline

        return pipeline.start_kubernetes_job(job)

    @task(task_id="teardown")
    def teardown_kubernetes_job(job: dict) -> None:
        from airtune import pipeline

        pipeline.teardown_kubernetes_job(job)

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
    # retries: a new pod (or Job) resumes from the newest checkpoint in the job folder
    trained_pod = TrainPodOperator(task_id="train_kubernetes_pod", airtune_job=prepared, retries=2)
    with TaskGroup("train_kubernetes_job", tooltip="several machines: Service, indexed Job, teardown") as trained_job:
        started = start_kubernetes_job(prepared)
        trained = TrainJobOperator(task_id="train", airtune_job=prepared, retries=2)
        started >> trained >> teardown_kubernetes_job(prepared).as_teardown(setups=started)
    branch >> [trained_pod, trained_job]
    registered = register(prepared)
    trained_local >> registered
    [trained_pod, trained_job] >> registered
    # A teardown: it runs however the run ends, and does not decide the run's state.
    registered >> cleanup().as_teardown(setups=job)


airtune_finetune()
