"""Names and labels of every Kubernetes object a job creates: always valid, unique per run and try.

Object names are DNS-1123 labels (63 characters at most) whatever the job's name: a name that
would be too long is cut and given a hash of the full name (`airtune.names.dns_label`), so two
long names never collide. The run is a short hash of (DAG id, run id): a retraining DAG reuses
its job's name on every run, so the name alone is not unique.

    pod (one machine)      <job>-train-<run>-t<try>
    prepare pod            <job>-prep-<run>-t<try>
    indexed Job            job-<job>-<run>-t<try>   its pods' host names add -<index>, so the
                                                    name leaves room for that: 63 in all
    headless Service       <job>-<run>-rdzv         DNS-1035: starts with a letter

Labels select a run's objects for clean-up (`airtune.io/job` + `airtune.io/run`) and name the
job, DAG and run for people (`kubectl get pods -l airtune.io/job=NAME`).
"""

from __future__ import annotations

import re

from airtune.names import dns_label, short_hash

LABEL_JOB = "airtune.io/job"
LABEL_RUN = "airtune.io/run"
LABEL_DAG_ID = "airtune.io/dag-id"
LABEL_RUN_ID = "airtune.io/run-id"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_DAG_ID = "airtune.io/dag-id"
ANNOTATION_RUN_ID = "airtune.io/run-id"
ANNOTATION_JOB_DIR = "airtune.io/job-dir"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# KubernetesJobOperator puts this in front of the name it is given (operators/job.py).
JOB_NAME_PREFIX = "job-"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def run_key(dag_id: str, run_id: str) -> str:
    """Six hex digits naming one DAG run: short enough for names, stable across tries."""
    return short_hash(dag_id, run_id, length=6)


def label_value(value: str) -> str:
    """A valid label value (63 characters, alphanumerics at both ends); a hash keeps it unique."""
    value = str(value)
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-_.")
    digest = short_hash(value, length=8)
    return f"{cleaned[: 63 - len(digest) - 1].rstrip('-_.')}-{digest}".lstrip("-_.")


def pod_name(job: str, dag_id: str, run_id: str, role: str, try_number: int) -> str:
    short_role = {"train": "train", "prepare": "prep", "evaluate": "eval"}[role]
    return dns_label(job, short_role, run_key(dag_id, run_id), f"t{try_number}")


def job_base_name(job: str, dag_id: str, run_id: str, try_number: int, nodes: int) -> str:
    """What KubernetesJobOperator is given as `name`: it adds `job-`, the pods' host names add
    `-<index>`, and the host name must stay a 63-character DNS label."""
    room = 63 - len(JOB_NAME_PREFIX) - len(f"-{max(nodes - 1, 0)}")
    return dns_label(job, run_key(dag_id, run_id), f"t{try_number}", max_len=room)


def job_name(job: str, dag_id: str, run_id: str, try_number: int, nodes: int) -> str:
    return JOB_NAME_PREFIX + job_base_name(job, dag_id, run_id, try_number, nodes)


def service_name(job: str, dag_id: str, run_id: str) -> str:
    """The headless Service every try's pods resolve each other through (a DNS-1035 label)."""
    name = dns_label(job, run_key(dag_id, run_id), "rdzv")
    return name if name[0].isalpha() else dns_label("r", job, run_key(dag_id, run_id), "rdzv")


def run_selector(job: str, dag_id: str, run_id: str) -> str:
    """Label selector of every object of one run of one job."""
    return f"{LABEL_JOB}={label_value(job)},{LABEL_RUN}={run_key(dag_id, run_id)}"


def job_selector(job: str) -> str:
    """Label selector of every object of a job, all runs."""
    return f"{LABEL_JOB}={label_value(job)},{LABEL_MANAGED_BY}=airtune"


def labels(job: str, dag_id: str, run_id: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "airtune",
        LABEL_MANAGED_BY: "airtune",
        LABEL_COMPONENT: component,
        LABEL_JOB: label_value(job),
        LABEL_RUN: run_key(dag_id, run_id),
        LABEL_DAG_ID: label_value(dag_id),
        LABEL_RUN_ID: label_value(run_id),
    }
