"""Scheduled retraining end to end, on a real Airflow stack: an asset event posted through the REST API
starts the retraining DAG, and its run registers a new version of the job's model in MLflow.

The stack: Airflow's api-server, scheduler (LocalExecutor) and dag-processor as separate processes,
on a PostgreSQL metadata database of its own (`airtune_test_retrain` at 127.0.0.1:5432, dropped and
created by the test), the pools made by airtune.pools and the policy of deploy/ on PYTHONPATH, as
`make up` starts them. The DAG comes from a job file in a jobs folder of the test's own
(AIRTUNE_JOBS_DIR); the event is posted through the REST API (`POST /api/v2/assets/events`, with a
token from `/auth/token`). Training is the local launcher on the tiny model; MLflow is its SQLite
store under the test's AIRTUNE_HOME (read back with MlflowClient). Nothing is mocked.

One run, not two: a run takes 1-3 minutes here (2 shared cores). That a second run of the same DAG
is not refused as "name in use" and adds version 2 is tests/test_pipeline.py's name-claim test and
the tracking tests' version numbering.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, airtune_env

pytestmark = pytest.mark.slow

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/"
DB = "airtune_test_retrain"
JOB = "e2e-retrain"
DAG_ID = f"airtune_retrain__{JOB}"
ASSET = "airtune/e2e-retrain-data"

JOB_FILE = f"""\
# The e2e test's retraining job: the tiny model, 48 rows, 5 steps.
schedule: {{assets: [{ASSET}]}}
name: {JOB}
base_model: tiny-llama-dev
dataset: [alpaca_en_demo]
learning_rate: 5.0e-3
max_samples: 48            # 48 rows, 20% held out -> 38 for training; 8 a step -> 5 steps
val_size: 0.2
cutoff_len: 96
per_device_train_batch_size: 8
logging_steps: 1
save_steps: 3              # checkpoints at steps 3 and 5
"""


def _postgres_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recreate_database() -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (DB,))
        cur.execute(f'DROP DATABASE IF EXISTS "{DB}"')
        cur.execute(f'CREATE DATABASE "{DB}"')
    conn.close()


class Api:
    def __init__(self, base: str):
        self.base = base
        self.token = None

    def call(self, method: str, path: str, body: dict | None = None, *, auth: bool = True):
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.base + path, method=method, data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Content-Type", "application/json")
        if auth and self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            return None, str(e)


@pytest.fixture
def stack(tmp_path, airtune_home):
    if not _postgres_up():
        pytest.skip("needs PostgreSQL at 127.0.0.1:5432 (user postgres)")
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / f"{JOB}.yaml").write_text(JOB_FILE)
    af_home = tmp_path / "airflow"
    port = _free_port()
    base_env = airtune_env(
        airtune_home,
        AIRFLOW_HOME=str(af_home),
        AIRTUNE_JOBS_DIR=str(jobs),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=PG + DB,
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(16),
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
        AIRFLOW__CORE__PARALLELISM="4",
        PYTHONPATH=str(REPO / "deploy"),  # the policy (deploy/airflow_local_settings.py), as scripts/stack.sh
    )
    # The embedded default's other settings (localstack), with the ones above winning.
    env = json.loads(subprocess.run(
        [sys.executable, "-c", "import json; from airtune import localstack; print(json.dumps(localstack.environment()))"],
        env=base_env, capture_output=True, text=True, check=True).stdout)
    env = {**base_env, **env}
    _recreate_database()
    airflow = str(Path(sys.executable).with_name("airflow"))
    af_home.mkdir()
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "airtune.pools"], env=env, check=True, capture_output=True, timeout=120)

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = []
    for name in ("api-server", "scheduler", "dag-processor"):
        args = [airflow, name] + (["--host", "127.0.0.1", "--port", str(port)] if name == "api-server" else [])
        out = open(logs / f"{name}.log", "wb")
        procs.append((name, subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)))
    api = Api(f"http://127.0.0.1:{port}")
    try:
        yield api, env, logs, af_home
    finally:
        for _, p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for _, p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        # A training process group runs in a session of its own: stop any a failed test left behind.
        from airtune.launch import local

        for job_dir in (airtune_home / "workspace" / "jobs" / JOB).glob("*/"):
            local.cleanup(job_dir)


def _wait(what: str, fn, timeout: float, logs: Path, step: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(step)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(logs.glob("*.log")))
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


def _task_logs(af_home: Path) -> str:
    out = []
    for p in sorted((af_home / "logs").rglob("*.log")):
        if DAG_ID in str(p):
            out.append(f"--- {p.relative_to(af_home)}\n{p.read_text(errors='replace')[-2500:]}")
    return "\n".join(out)[-12000:]


def test_asset_event_starts_the_retraining_dag_and_registers_a_new_version(stack):
    api, env, logs, af_home = stack
    t0 = time.monotonic()

    _wait("the api-server", lambda: api.call("GET", "/api/v2/monitor/health", auth=False)[0] == 200, 180, logs)
    pw_file = af_home / "simple_auth_manager_passwords.json.generated"
    _wait("the generated admin password", pw_file.exists, 60, logs, 1)
    status, token = api.call("POST", "/auth/token", {"username": "admin", "password": json.loads(pw_file.read_text())["admin"]}, auth=False)
    assert status in (200, 201), token
    api.token = token["access_token"]

    # The dag-processor parses dags/ with the test's jobs folder: the retraining DAG appears, paused.
    dag = _wait("the retraining DAG", lambda: (lambda r: r[0] == 200 and r[1])(api.call("GET", f"/api/v2/dags/{DAG_ID}")), 180, logs)
    assert dag["is_paused"] is True  # new DAGs start paused: retraining begins when someone unpauses it
    status, body = api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    assert status == 200, body

    status, body = api.call("GET", f"/api/v2/assets?name_pattern={ASSET}")
    assert status == 200 and body["total_entries"] == 1, body
    asset_id = body["assets"][0]["id"]
    assert DAG_ID in json.dumps(body["assets"][0]), body  # the asset lists the DAG scheduled on it

    s, runs = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")
    assert s == 200 and runs["total_entries"] == 0, runs  # nothing ran before the event
    status, ev = api.call("POST", "/api/v2/assets/events", {"asset_id": asset_id, "extra": {"why": "new data"}})
    assert status in (200, 201), ev

    def finished():
        s, runs = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")
        if s != 200 or not runs["dag_runs"]:
            return None
        run = runs["dag_runs"][0]
        return run if run["state"] in ("success", "failed") else None

    run = _wait("the retraining run to finish", finished, 480, logs, 3)
    assert run["state"] == "success", _task_logs(af_home)
    assert run["run_type"] == "asset_triggered"
    t_run = time.monotonic() - t0

    # The train task ran in the local pool.
    s, ti = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/train_local")
    assert s == 200 and ti["state"] == "success" and ti["pool"] == "airtune_local" and ti["pool_slots"] == 1, ti

    # MLflow: the registered model named after the job, its version from this DAG run.
    check = f"""
import json
from airtune import localstack, tracking; localstack.apply()
c = tracking.client()
versions = sorted(c.search_model_versions("name = '{JOB}'"), key=lambda v: int(v.version))
print(json.dumps([{{"version": int(v.version), "dag_run": c.get_run(v.run_id).data.tags.get("airflow.run_id"),
                    "dag": c.get_run(v.run_id).data.tags.get("airflow.dag_id"),
                    "promotion": v.tags.get("airtune.promotion.outcome"), "aliases": sorted(c.get_model_version(v.name, v.version).aliases)}} for v in versions]))
"""
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    versions = json.loads(out.stdout.strip().splitlines()[-1])
    # a retraining job file promotes by default (promote auto): the first version becomes champion
    assert versions == [{"version": 1, "dag_run": run["dag_run_id"], "dag": DAG_ID, "promotion": "promoted",
                         "aliases": ["best", "champion"]}]
    print(f"stack up, event posted and version 1 registered after {t_run:.0f} s")
