"""The task graph of one fine-tuning job, shared by airtune_finetune and the retraining DAGs.

    validate ─► prepare_dataset ─► choose_launcher ─► train_local ─► evaluate_local ─► register
                                                   (one train and evaluate task per launcher kind)
    register ─► choose_promotion ─► approve (a person, with promote: approve) ─► promote
    cleanup runs last, always: it stops anything training left behind.

The evaluate task runs where training ran (a local process, or a pod on the Kubernetes location),
so the tuned model never has to fit on an Airflow worker. `approve` is a human-in-the-loop task
(Airflow's HITLOperator): it waits in the `awaiting_input` state, holding no worker or pool slot,
until someone answers in the UI's Required Actions or through the REST API; `promote` runs after it
whatever the answer (and directly when the job's promote is auto or never) and records the decision.

`build_job_graph()` is called inside a `@dag` function (dags/airtune_finetune.py,
dags/airtune_retrain.py). The two DAGs differ only in where the job comes from:

- airtune_finetune: the run's params (the trigger form, a REST `conf`, `airtune run`); each run
  claims its name for good (docs/form.md#job-names: a name identifies one job).
- a retraining DAG: its job file, read at parse time (`job=`); the DAG owns the name, so every run
  registers a new version of the same model.

The train tasks take their location's pool (airtune.pools). Heavy work is imported inside the task
bodies (airtune.pipeline), the Kubernetes operators inside their tasks (launch/kubernetes/deferred.py):
building the graph imports Airflow's SDK and airtune's light modules only.
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

    from airtune.launch.kubernetes.deferred import EVALUATE_POD, TRAIN_JOB, TRAIN_POD, KubernetesTask
    from airtune.promotion_task import PromotionApproval

    fixed_job = dict(job) if job is not None else None  # (retrain.load_file sets its promote default)
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
    def choose_launcher(job: dict) -> list[str]:
        if job["launcher"] == "local":
            return ["train_local"]
        # the Kubernetes evaluate pod follows either Kubernetes branch (skipped with the local one)
        return [f"train_{job['launcher']}", "evaluate_kubernetes"]

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

    @task(retries=1, pool=local_pool, pool_slots=local_slots)
    def evaluate_local(job: dict) -> dict:
        from airtune import pipeline

        return pipeline.evaluate_local(job)

    @task.branch
    def choose_promotion(job: dict) -> str:
        from airtune import pipeline

        return "approve" if pipeline.promotion_mode(job) == "approve" else "promote"

    # runs after the approval whatever its answer, and without it for promote auto / never
    @task(trigger_rule="none_failed_min_one_success", retries=2)
    def promote(job: dict) -> dict:
        from airtune import pipeline

        approval = get_current_context()["ti"].xcom_pull(task_ids="approve")
        return pipeline.promote(job, approval)

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
    # (the Kubernetes operators are built when their task runs: launch/kubernetes/deferred.py)
    trained_pod = KubernetesTask(task_id="train_kubernetes_pod", operator=TRAIN_POD, airtune_job=prepared, retries=2,
                                 **kube_pool)
    with TaskGroup("train_kubernetes_job", tooltip="several machines: Service, indexed Job, teardown") as trained_job:
        started = start_kubernetes_job(prepared)
        trained = KubernetesTask(task_id="train", operator=TRAIN_JOB, airtune_job=prepared, retries=2, **kube_pool)
        started >> trained >> teardown_kubernetes_job(prepared).as_teardown(setups=started)
    branch >> [trained_pod, trained_job]
    evaluated_local = evaluate_local(trained_local)
    # one pod on the location, whichever of the two Kubernetes branches trained
    evaluated_pod = KubernetesTask(task_id="evaluate_kubernetes", operator=EVALUATE_POD, airtune_job=prepared, retries=1,
                                   trigger_rule="none_failed_min_one_success", **kube_pool)
    [trained_pod, trained_job] >> evaluated_pod
    branch >> evaluated_pod
    registered = register(prepared)
    [evaluated_local, evaluated_pod] >> registered
    how = choose_promotion(registered)
    approval = PromotionApproval(task_id="approve", airtune_job=registered)
    promoted = promote(registered)
    how >> [approval, promoted]
    approval >> promoted
    # A teardown: it runs however the run ends; it fails the run when the job did not finish.
    promoted >> cleanup().as_teardown(setups=job_ref, on_failure_fail_dagrun=True)
