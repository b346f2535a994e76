"""Fixtures for the MLflow tests: real `mlflow server` processes (SQLite; PostgreSQL), an Airflow
metadata database, prepared data for the tiny model. Servers always stop; databases are dropped."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .helpers import MlflowServer, make_prepared

PG = {"host": os.environ.get("AIRTUNE_TEST_PG_HOST", "127.0.0.1"), "port": int(os.environ.get("AIRTUNE_TEST_PG_PORT", "5432")),
      "user": os.environ.get("AIRTUNE_TEST_PG_USER", "postgres")}


@pytest.fixture(scope="session")
def prepared(tiny_model_dir, tmp_path_factory) -> Path:
    return make_prepared(tiny_model_dir, tmp_path_factory.mktemp("prepared") / "sft")


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    """The embedded default's tracking server: SQLite, artefacts in a local folder."""
    root = tmp_path_factory.mktemp("mlflow-sqlite")
    server = MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", root / "server.log")
    server.start()
    server.root = root
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_database():
    """A fresh PostgreSQL database, dropped afterwards (its connections closed first)."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {PG['host']}:{PG['port']}: {exc}")
    admin.autocommit = True
    name = f"airtune_test_{uuid.uuid4().hex[:12]}"
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def pg_server(pg_database, tmp_path_factory):
    """Production's shape: PostgreSQL backend, artefacts proxied by the server to an object store
    (a local folder stands in for the bucket: `--artifacts-destination s3://...` in production)."""
    root = tmp_path_factory.mktemp("mlflow-pg")
    server = MlflowServer(pg_database, root / "objectstore", root / "server.log")
    server.start(timeout=120)
    server.root = root
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    """AIRTUNE_HOME with a migrated Airflow metadata database (the embedded default's, on SQLite)."""
    home = tmp_path_factory.mktemp("airtune-home")
    subprocess.run([sys.executable, "-c", "from airtune import localstack; localstack.ensure_airflow_db()"],
                   env=cli_env(home), check=True, capture_output=True, timeout=300)
    return home


def cli_env(home: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "AIRTUNE"))}
    env.update({"AIRTUNE_HOME": str(home), "PYTHONUNBUFFERED": "1"}, **extra)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


AIRFLOW_PRELUDE = """
import json, sys, uuid
from airtune import localstack; localstack.apply()
from airflow import settings; settings.configure_orm()
from airflow.models.dagrun import DagRun
from airflow.utils import timezone
from sqlalchemy import text
s = settings.Session()
"""

ADD_RUN = AIRFLOW_PRELUDE + """
name, run_id, state, tasks = json.loads(sys.argv[1])
s.add(DagRun(dag_id="airtune_finetune", run_id=run_id, run_type="manual", state=state, conf={"name": name},
             run_after=timezone.utcnow(), start_date=timezone.utcnow()))
s.flush()
for task_id, ti_state in tasks:
    s.execute(text("INSERT INTO task_instance (id, task_id, dag_id, run_id, map_index, try_number, max_tries, pool, pool_slots, state)"
                   " VALUES (:id, :task, 'airtune_finetune', :run, -1, 1, 2, 'default_pool', 1, :state)"),
              {"id": uuid.uuid4().hex, "task": task_id, "run": run_id, "state": ti_state})
s.commit()
"""

LIST_RUNS = AIRFLOW_PRELUDE + """
runs = [{"run_id": dr.run_id, "state": str(dr.state), "name": (dr.conf or {}).get("name")} for dr in s.query(DagRun).all()]
tis = [dict(r._mapping) for r in s.execute(text("SELECT run_id, task_id, state FROM task_instance"))]
print(json.dumps({"runs": runs, "tis": tis}))
"""


def add_dag_run(home: Path, name: str, run_id: str, state: str, tasks: list[tuple[str, str]] = ()) -> None:
    import json

    subprocess.run([sys.executable, "-c", ADD_RUN, json.dumps([name, run_id, state, list(tasks)])],
                   env=cli_env(home), check=True, capture_output=True, timeout=120)


def airflow_state(home: Path) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", LIST_RUNS], env=cli_env(home), check=True, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def airtune(home: Path, *args: str, input: str | None = None, **env) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, against the given AIRTUNE_HOME and tracking server."""
    return subprocess.run([sys.executable, "-m", "airtune.cli", *args], env=cli_env(home, **env),
                          capture_output=True, text=True, input=input, timeout=300)
