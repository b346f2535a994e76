"""The task graph of one fine-tuning job, shared by airtune_finetune and the retraining DAGs.

    validate ─► prepare_dataset ─► choose_launcher ─► train_local ─► register
                                                   (one train task per launcher kind)
    cleanup runs last, always: it stops anything training left behind.

`build_job_graph()` is called inside a `@dag` function (dags/airtune_finetune.py,
dags/airtune_retrain.py). The two DAGs differ only in where the job comes from:

- airtune_finetune: the run's params (the trigger form, a REST `conf`, `airtune run`); each run
  claims its name for good (docs/form.md#job-names: a name identifies one job).
- a retraining DAG: its job file, read at parse time (`job=`); the DAG owns the name, so every run
  registers a new version of the same model.

The train tasks take their location's pool (airtune.pools). Heavy work is imported inside the task
bodies (airtune.pipeline): building the graph imports Airflow's SDK and the Kubernetes operators only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airtune import pools


def build_job_graph(*, job: Mapping[str, Any] | None = None, train_pool: tuple[str, int] | None = None) -> None:
    """Declare the job's tasks in the DAG being defined.

    job:        the job mapping every run uses (a retraining DAG); None: the run's params.
    train_pool: (pool, slots) for the Kubernetes train tasks when the location is known at parse
                time; otherwise they use Airflow's default pool unless the deployment's mutation hook
                (deploy/airflow_local_settings.py) sets one per run. train_local always takes the
                local pool.
    """
    from airflow.sdk import TaskGroup, get_current_context, task

    from airtune.launch.kubernetes.operators import TrainJobOperator, TrainPodOperator

    fixed_job = dict(job) if job is not None else None
    local_pool = pools.pool_name("local")
    local_slots = pools.LOCAL_SLOTS  # one local job at a time, whatever its GPUs (airtune.pools)
    kube_pool = {"pool": train_pool[0], "pool_slots": train_pool[1]} if train_pool else {}

    @task(retries=0)  # a job that is not valid stays not valid: no retry, fail in seconds
    def validate() -> dict:
        from airtune import pipeline

        ctx = get_current_context()
        dag_id = ctx["dag"].dag_id
        if fixed_job is None:
            return pipeline.validate(dict(ctx["params"]), dag_id=dag_id, run_id=ctx["run_id"])
        # A retraining run: the job file's spec, validated like any conf; the DAG owns the name.
        return pipeline.validate(dict(fixed_job), dag_id=dag_id, run_id=ctx["run_id"], owner=dag_id)

    @task
    def prepare_dataset(job: dict) -> dict:
        from airtune import pipeline

        return pipeline.prepare_dataset(job)

    @task.branch
    def choose_launcher(job: dict) -> str:
        return f"train_{job['launcher']}"

    # a retry resumes from the newest checkpoint in the job folder
    @task(retries=2, pool=local_pool, pool_slots=local_slots)
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
        failed = not ctx["ti"].xcom_pull(task_ids="register")
        pipeline.cleanup(job, failed=failed)
        if failed:
            # The run's state is this task's to decide when register never ran: a DAG run marked
            # failed by a user keeps running until its teardown is done, and Airflow would then
            # judge it by register alone, which the mark skipped (the run would end "success").
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException("the job did not finish (register has no result): this DAG run is failed; "
                                       "what training left behind was cleaned up")

    job_ref = validate()
    prepared = prepare_dataset(job_ref)
    branch = choose_launcher(prepared)
    trained_local = train_local(prepared)
    branch >> trained_local
    # retries: a new pod (or Job) resumes from the newest checkpoint in the job folder
    trained_pod = TrainPodOperator(task_id="train_kubernetes_pod", airtune_job=prepared, retries=2, **kube_pool)
    with TaskGroup("train_kubernetes_job", tooltip="several machines: Service, indexed Job, teardown") as trained_job:
        started = start_kubernetes_job(prepared)
        trained = TrainJobOperator(task_id="train", airtune_job=prepared, retries=2, **kube_pool)
        started >> trained >> teardown_kubernetes_job(prepared).as_teardown(setups=started)
    branch >> [trained_pod, trained_job]
    registered = register(prepared)
    trained_local >> registered
    [trained_pod, trained_job] >> registered
    # A teardown: it runs however the run ends; it fails the run when the job did not finish.
    registered >> cleanup().as_teardown(setups=job_ref, on_failure_fail_dagrun=True)
