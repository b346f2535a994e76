"""The environment every launcher gives the commands it runs (docs/architecture.md, "The trainer's
contract"): the one table, read by the local launcher (pipeline.train_env) and by the pods'
manifests (launch/kubernetes/manifests.env), which add only what differs by where they run.
"""

from __future__ import annotations

from pathlib import PurePath

# Every command, every role.
BASE_ENV = {
    "PYTHONUNBUFFERED": "1",  # its lines reach the task log as they are printed
    "TOKENIZERS_PARALLELISM": "false",  # no tokenizer thread pool fighting the DataLoader's processes
    "MLFLOW_DISABLE_TELEMETRY": "true",
}

# The roles that report to the job's MLflow run and append to its metrics.jsonl (prepare does neither).
REPORTING_ROLES = ("train", "evaluate")

METRICS_FILE = "metrics.jsonl"


def launch_env(*, role: str, job_dir: str | PurePath, tracking_uri: str | None, mlflow_run_id: str | None,
               where: dict[str, str] | None = None) -> dict[str, str]:
    """The variables for one role of one run: BASE_ENV, then `where` (what the place needs: the
    workspace and Hugging Face cache of a pod), then, for train and evaluate, the job's metrics file
    and its MLflow run (tracking URI and run id: both or neither)."""
    env = {**BASE_ENV, **(where or {})}
    if role in REPORTING_ROLES:
        env["AIRTUNE_METRICS_FILE"] = str(PurePath(job_dir) / METRICS_FILE)
        if tracking_uri and mlflow_run_id:
            env["MLFLOW_TRACKING_URI"] = tracking_uri
            env["MLFLOW_RUN_ID"] = mlflow_run_id
    return env
