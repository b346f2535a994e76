"""The Role in docs/kubernetes.md allows every API call the launcher makes, and nothing cluster-wide
or secret: the operators (pod and Job, success and failure, the prepare pod, the teardown) run
against the API emulator (not a cluster: it does not enforce RBAC itself), which records each call
as (API group, resource, verb); the test compares those with the documented Role.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

DOCS = Path(__file__).resolve().parents[3] / "docs" / "kubernetes.md"


def documented_role() -> dict:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    for block in blocks:
        for doc in yaml.safe_load_all(block):
            if isinstance(doc, dict) and doc.get("kind") == "Role":
                return doc
    raise AssertionError("docs/kubernetes.md has no Role")


def allowed(role: dict) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_every_yaml_block_of_the_docs_parses():
    for block in re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S):
        assert all(isinstance(doc, dict) and doc.get("kind") for doc in yaml.safe_load_all(block))


def test_the_role_is_namespaced_and_never_touches_secrets():
    role = documented_role()
    rules = allowed(role)
    assert role["metadata"]["namespace"] and not any("*" in part for rule in rules for part in rule)
    assert not {r for _, r, _ in rules} & {"secrets", "pods/exec", "pods/attach", "roles", "rolebindings"}


def test_every_call_the_launcher_makes_is_allowed(cluster):
    from airflow.sdk.exceptions import AirflowException

    from airtune.launch import kubernetes
    from airtune.launch.kubernetes.operators import TASK_JOB, TASK_POD, TrainJobOperator, TrainPodOperator

    job = cluster.job("rbac-pod", fake={"steps": 2})
    kubernetes.prepare_in_cluster(job, json.loads((Path(job["job_dir"]) / "spec.json").read_text()))
    cluster.run_task(lambda: TrainPodOperator(task_id=TASK_POD, airtune_job=job))
    bad = cluster.job("rbac-fail", fake={"exit_code": 3})
    with pytest.raises(AirflowException):
        cluster.run_task(lambda: TrainPodOperator(task_id=TASK_POD, airtune_job=bad))
    multi = cluster.job("rbac-job", nodes=2, fake={"steps": 2})
    kubernetes.create_service(multi, json.loads((Path(multi["job_dir"]) / "spec.json").read_text()))
    cluster.run_task(lambda: TrainJobOperator(task_id=TASK_JOB, airtune_job=multi))
    kubernetes.cleanup_run_objects(multi)
    cluster.wait_no_pods()

    used = cluster.emu.api_verbs()
    print("API calls:", sorted(used))
    assert {("", "pods", "create"), ("", "pods/log", "get"), ("", "pods", "delete"), ("", "services", "create"),
            ("batch", "jobs", "create"), ("batch", "jobs", "delete")} <= used  # the calls were recorded
    missing = used - allowed(documented_role())
    assert not missing, f"docs/kubernetes.md's Role lacks {sorted(missing)}"
