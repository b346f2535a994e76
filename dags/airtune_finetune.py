"""airtune_finetune: one fine-tuning job per DAG run.

Trigger it from the form (Trigger DAG ▸ the job form), from the REST API with the job as `conf`,
or with `airtune run FILE.yaml`. The fields are docs/form.md's; a value left empty uses its default.

    validate ─► prepare_dataset ─► choose_launcher ─► train_local ─► register
                                                   (one train task per launcher kind)
    cleanup runs last, always: it stops anything training left behind.

The train branches (choose_launcher picks one when the run starts, from the job's location):
    train_local            a process group on the worker
    train_kubernetes_pod   one pod (nodes = 1): TrainPodOperator, deferrable
    train_kubernetes_job   several pods (nodes > 1): start (headless Service) ─► train (indexed
                           Job, deferrable) ─► teardown (Job and Service deleted, however it ended)
For a Kubernetes location, prepare_dataset runs its work in a CPU pod in the cluster.

The train tasks take their location's Airflow pool (docs/capacity.md). This file stays thin and
quick to parse: the graph is built by `airtune.job_graph`, the work happens in `airtune.pipeline`,
imported inside the tasks (no torch, transformers, datasets or mlflow at parse time).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag

from airtune import form, job_graph, notify

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
    # the run's `notify` connections are told how it ended (one callback: notify is per run, docs/notifications.md)
    **notify.dag_callbacks(),
)
def airtune_finetune():
    # The graph is airtune.job_graph's, shared with the retraining DAGs (dags/airtune_retrain.py).
    job_graph.build_job_graph()


airtune_finetune()
