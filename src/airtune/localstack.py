"""Settings of the embedded default: Airflow on SQLite and MLflow on SQLite, all under $AIRTUNE_HOME.

`make up`, `make demo`, `airtune run` and the tests all read them from here, so they agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from airtune import paths

AIRFLOW_PORT = 8080
MLFLOW_PORT = 5000


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or (paths.airtune_home() / "airflow"))


def environment() -> dict[str, str]:
    """Environment variables of the embedded default (values already set in the environment win)."""
    home = paths.airtune_home()
    af = airflow_home()
    defaults = {
        "AIRTUNE_HOME": str(home),
        "AIRFLOW_HOME": str(af),
        "AIRFLOW__CORE__DAGS_FOLDER": str(paths.repo_root() / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(paths.repo_root() / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{af / 'airflow.db'}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(AIRFLOW_PORT),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{AIRFLOW_PORT}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{AIRFLOW_PORT}/execution/",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(af / "logs"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        "TOKENIZERS_PARALLELISM": "false",
        # MLflow's telemetry thread edits os.environ while clients read it (KeyError
        # _MLFLOW_TELEMETRY_SESSION_ID under concurrent jobs), and nothing here phones home
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    }
    return {k: os.environ.get(k, v) for k, v in defaults.items()}


def apply() -> dict[str, str]:
    """Put the embedded default's settings into this process's environment (before importing Airflow)."""
    env = environment()
    os.environ.update(env)
    for d in (airflow_home(), paths.airtune_home() / "mlflow"):
        d.mkdir(parents=True, exist_ok=True)
    return env


def ensure_airflow_db() -> None:
    """Create or upgrade Airflow's metadata database (idempotent; quick when up to date)."""
    env = apply()
    marker = airflow_home() / ".migrated"
    conn = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    if marker.exists() and marker.read_text() == conn:
        return
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    marker.write_text(conn)
