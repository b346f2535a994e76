"""Airflow cluster policy for airtune: each train task takes its location's pool and one slot per GPU.

Install: put this file where every Airflow component imports it, i.e. on the PYTHONPATH of the
api-server, the scheduler, the dag-processor and the workers. `scripts/stack.sh` (make up) adds
deploy/ to PYTHONPATH; a container deployment mounts or copies it to
$AIRFLOW_HOME/config/airflow_local_settings.py, a folder Airflow puts on sys.path itself. Airflow
loads `airflow_local_settings` at start-up and logs "Loaded airflow_local_settings from ...".

Why a hook: Airflow fixes a task's pool and pool_slots when the DAG is parsed, but airtune_finetune
learns its location and GPU count only from each run's conf. `task_instance_mutation_hook` runs
where Airflow creates a DAG run's task instances (the api-server for a REST or UI trigger, the
scheduler for scheduled runs, and again when a task is cleared), with the DAG run at hand, before
anything is queued. It sets, from the run's conf:

    pool       = airtune_<location>                          (airtune.pools)
    pool_slots = nodes x gpus_per_node, at least 1, at most the pool's size

What it cannot do (docs/capacity.md): the conf is what the user sent, before `validate` resolves
`auto`s; an empty gpus_per_node counts as 1 GPU on Kubernetes. Airflow re-applies the hook only when
a task instance is created or cleared, never from a task's result. Retraining DAGs need no hook:
their job file gives the location and GPUs at parse time. Kueue, where the cluster runs it, is the
real GPU quota; the pools keep Airflow from starting more work than the quota admits.

The hook must never raise (it runs inside the scheduler's transaction): anything unexpected is
logged and the task keeps its parse-time pool.
"""

from __future__ import annotations

import logging

log = logging.getLogger("airtune.policy")

FINETUNE_DAG_ID = "airtune_finetune"
KUBERNETES_TRAIN_TASKS = ("train_kubernetes_pod", "train_kubernetes_job.train")


def task_instance_mutation_hook(task_instance, dag_run=None) -> None:
    if dag_run is None or task_instance.dag_id != FINETUNE_DAG_ID:
        return
    if task_instance.task_id not in KUBERNETES_TRAIN_TASKS:
        return  # train_local: the local pool, one slot (fixed at parse time); other tasks: no GPU
    try:
        conf = getattr(dag_run, "conf", None) or {}
        if not isinstance(conf, dict):
            return
        from airtune import pools

        placed = pools.train_slots(conf)
        if placed is None:  # an unknown location: validate fails the run before this task is reached
            return
        task_instance.pool, task_instance.pool_slots = placed
    except Exception:  # never break the scheduler or the api-server over a pool
        log.exception("airtune: could not set the pool of %s", task_instance)
