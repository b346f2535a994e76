"""A running Airflow stack in production's shape, shared by the REST, load and browser tests.

    PostgreSQL   Airflow's metadata database and MLflow's backend store (two fresh databases,
                 dropped afterwards)
    Airflow      api-server (simple auth manager, a generated password), scheduler with the
                 LocalExecutor (parallelism 4), dag-processor; the repo's dags/ and plugins/
    MLflow       `mlflow server` on the PostgreSQL database, artefacts proxied to a local folder
    pool         airtune_local with 2 slots (the load test's "local pool of 2")

Everything listens on 127.0.0.1 on free ports, runs in its own process group and is stopped at the
end of the session. The fixture is `airflow_stack` (session scope): test modules import it from
here, and every importer gets the same stack (one per session, started by the first test that
asks for it).

While working on these tests, `python tests/e2e/stack.py` starts a stack and keeps it running
(it writes its details to $AIRTUNE_TEST_STACK, default /tmp/airtune-stack.json); with that
variable set, the fixture uses the running stack instead of starting one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG = {"host": os.environ.get("AIRTUNE_TEST_PG_HOST", "127.0.0.1"), "port": int(os.environ.get("AIRTUNE_TEST_PG_PORT", "5432")),
      "user": os.environ.get("AIRTUNE_TEST_PG_USER", "postgres")}
DAG_ID = "airtune_finetune"
USER = "admin"
LOCAL_POOL_SLOTS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(name: str) -> str:
    """A job name of its own (a name identifies one job; a stack reused across sessions keeps them)."""
    return f"{name}-{uuid.uuid4().hex[:5]}"


def tiny_job(name: str, **overrides) -> dict:
    """A job of a few seconds' training: the tiny model, 16 rows, 2 steps (conf for the REST API)."""
    job = {
        "name": name, "base_model": "tiny-llama-dev", "dataset": ["alpaca_en_demo"], "finetuning_method": "lora",
        "stage": "sft", "max_samples": 16, "cutoff_len": 64, "per_device_train_batch_size": 8, "num_train_epochs": 1.0,
        "logging_steps": 1, "save_steps": 1, "val_size": 0.0, "learning_rate": 5e-3,
    }
    job.update(overrides)
    return job


class Stack:
    def __init__(self, root: Path, tiny_model_dir: Path):
        self.root = root
        self.home = root / "home"
        self.logs = root / "logs"
        self.procs: dict[str, subprocess.Popen] = {}
        self.databases: list[str] = []
        self.api_port, self.mlflow_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.mlflow_url = f"http://127.0.0.1:{self.mlflow_port}"
        self.password = secrets.token_urlsafe(12)
        self.tiny_model_dir = tiny_model_dir
        self._token: str | None = None
        self.timings: dict[str, float] = {}

    # --- PostgreSQL ------------------------------------------------------------------------------
    def _admin(self, *statements: str) -> None:
        import psycopg2

        conn = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        try:
            for sql in statements:
                conn.cursor().execute(sql)
        finally:
            conn.close()

    def _create_database(self, kind: str) -> str:
        name = f"airtune_test_{kind}_{uuid.uuid4().hex[:8]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"

    # --- environment -----------------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        af = self.home / "airflow"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "AIRTUNE"))}
        env.update({
            "AIRTUNE_HOME": str(self.home),
            "AIRFLOW_HOME": str(af),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",  # > the pool's 2: the pool, not the executor, must hold the line
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.airflow_db,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.root / "passwords.json"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__SECRET_KEY": self.secret,
            "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(af / "logs"),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "AIRTUNE_MLFLOW_BACKEND_STORE_URI": self.mlflow_db,  # the jobs page's delete purges the runs
            # MLflow 3's telemetry thread sets and unsets a variable in os.environ while requests
            # iterates os.environ for proxies: under load a run's `validate` failed with
            # KeyError '_MLFLOW_TELEMETRY_SESSION_ID' in runs/create (and nothing here may phone home)
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        })
        return env

    # --- processes -------------------------------------------------------------------------------
    def _spawn(self, name: str, *cmd: str) -> None:
        out = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            cwd=self.root, start_new_session=True)

    def _wait_http(self, url: str, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}):\n{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(url, timeout=3) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{what} did not answer at {url} in {timeout:.0f} s:\n" + "\n".join(self.log_tail(n) for n in self.procs))

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return f"--- {name} ---\n" + (path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)")

    def start(self) -> Stack:
        t0 = time.monotonic()
        self.logs.mkdir(parents=True)
        (self.home / "models").mkdir(parents=True)
        (self.home / "models" / "tiny-llama-dev").symlink_to(self.tiny_model_dir)
        (self.root / "passwords.json").write_text(json.dumps({USER: self.password}))
        self.secret, self.jwt_secret = secrets.token_hex(16), secrets.token_hex(32)
        self.airflow_db = self._create_database("rest")
        self.mlflow_db = self._create_database("rest_mlflow")
        self.env = self.environment()
        # MLflow migrates its database while Airflow migrates its own: both take tens of seconds.
        self._spawn("mlflow", str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port),
                    "--workers", "1", "--backend-store-uri", self.mlflow_db,
                    "--artifacts-destination", (self.root / "objectstore").as_uri())
        migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=self.env, cwd=self.root,
                                 capture_output=True, text=True, timeout=600)
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrate.stdout[-2000:]}\n{migrate.stderr[-3000:]}")
        self.timings["migrate_s"] = time.monotonic() - t0
        self._spawn("api-server", str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(self.api_port))
        self._spawn("scheduler", str(BIN / "airflow"), "scheduler")
        self._spawn("dag-processor", str(BIN / "airflow"), "dag-processor")
        self._wait_http(f"{self.url}/api/v2/monitor/health", 180, "the api-server")
        self._wait_http(f"{self.mlflow_url}/health", 120, "the MLflow server")
        self._wait_for_dag(180)
        self.set_pool("airtune_local", LOCAL_POOL_SLOTS)
        self.timings["start_s"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        self.procs.clear()
        if self.databases:
            self._admin(*(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in self.databases))
            self.databases.clear()

    # --- the REST API ------------------------------------------------------------------------------
    def token(self) -> str:
        """A JWT from POST /auth/token (the simple auth manager's login endpoint)."""
        if self._token is None:
            req = urllib.request.Request(f"{self.url}/auth/token", method="POST",
                                         data=json.dumps({"username": USER, "password": self.password}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                self._token = json.loads(r.read())["access_token"]
        return self._token

    def api_client(self):
        """apache-airflow-client's ApiClient for this stack, with a token."""
        import airflow_client.client as af

        return af.ApiClient(af.Configuration(host=self.url, access_token=self.token()))

    def request(self, method: str, path: str, body=None, *, token: bool = True) -> tuple[int, object]:
        """A plain HTTP call (for what the client does not model, e.g. the jobs page's JSON)."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", method=method, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw, status = r.read(), r.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def _wait_for_dag(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.request("GET", f"/api/v2/dags/{DAG_ID}")
            if status == 200:
                return
            errors = self.request("GET", "/api/v2/importErrors")[1]
            if isinstance(errors, dict) and errors.get("import_errors"):
                raise RuntimeError(f"DAG import errors: {json.dumps(errors['import_errors'])[:3000]}")
            time.sleep(1)
        raise RuntimeError(f"{DAG_ID} was not parsed in {timeout:.0f} s:\n{self.log_tail('dag-processor')}")

    def set_pool(self, name: str, slots: int) -> None:
        status, _ = self.request("PATCH", f"/api/v2/pools/{name}", {"name": name, "slots": slots, "include_deferred": True})
        if status == 404:
            status, body = self.request("POST", "/api/v2/pools", {"name": name, "slots": slots, "include_deferred": True})
            assert status == 201, body

    def trigger(self, conf: dict, run_id: str | None = None) -> tuple[int, object]:
        body = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", body)

    def wait_run(self, run_id: str, timeout: float = 240, dag_id: str = DAG_ID) -> dict:
        """Poll the run until it ends; returns GET /dagRuns/{run_id}."""
        deadline = time.monotonic() + timeout
        while True:
            status, run = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            assert status == 200, run
            if run["state"] in ("success", "failed"):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {run['state']} after {timeout:.0f} s: "
                                     f"{self.task_states(run_id)}\n{self.log_tail('scheduler')}")
            time.sleep(2)

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> list[dict]:
        status, body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        assert status == 200, body
        return body["task_instances"]

    def task_states(self, run_id: str) -> dict[str, str | None]:
        return {ti["task_id"]: ti["state"] for ti in self.task_instances(run_id)}

    def task_log(self, run_id: str, task_id: str, try_number: int = 1) -> str:
        status, body = self.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}?full_content=true")
        assert status == 200, body
        content = body.get("content") if isinstance(body, dict) else body
        if isinstance(content, list):
            return "\n".join(c.get("event", "") if isinstance(c, dict) else str(c) for c in content)
        return str(content)


_STACK: Stack | None = None


class RunningStack(Stack):
    """A stack started by `python tests/e2e/stack.py` (AIRTUNE_TEST_STACK): used, never stopped."""

    def __init__(self, info: dict):
        self.__dict__.update({k: v for k, v in info.items() if k != "procs"})
        self.root, self.home, self.logs = Path(info["root"]), Path(info["home"]), Path(info["logs"])
        self.procs, self.databases, self._token = {}, [], None

    def stop(self) -> None:
        pass


def _info(stack: Stack) -> dict:
    keys = ("url", "mlflow_url", "password", "env", "airflow_db", "mlflow_db", "api_port", "mlflow_port", "timings")
    return {"root": str(stack.root), "home": str(stack.home), "logs": str(stack.logs), **{k: getattr(stack, k) for k in keys}}


@pytest.fixture(scope="session")
def airflow_stack(tmp_path_factory, tiny_model_dir):
    """The running stack (one per session, whichever module asks first)."""
    global _STACK
    if shutil.which("pg_isready") and subprocess.run(["pg_isready", "-h", PG["host"], "-p", str(PG["port"]), "-q"]).returncode != 0:
        pytest.skip(f"no PostgreSQL at {PG['host']}:{PG['port']}")
    if _STACK is None and os.environ.get("AIRTUNE_TEST_STACK") and Path(os.environ["AIRTUNE_TEST_STACK"]).exists():
        _STACK = RunningStack(json.loads(Path(os.environ["AIRTUNE_TEST_STACK"]).read_text()))
    if _STACK is None:
        stack = Stack(tmp_path_factory.mktemp("stack"), tiny_model_dir)
        try:
            stack.start()
        except BaseException:
            print("\n".join(stack.log_tail(n) for n in stack.procs))
            stack.stop()
            raise
        _STACK = stack
    yield _STACK
    if _STACK is not None:
        _STACK.stop()
        _STACK = None


if __name__ == "__main__":  # a stack to develop the tests against (see the module's docstring)
    import tempfile

    sys.path.insert(0, str(REPO / "src"))
    from airtune.tinymodel import make_tiny_model

    root = Path(tempfile.mkdtemp(prefix="airtune-stack-"))
    model = Path(os.environ.get("AIRTUNE_TEST_TINY_MODEL") or REPO / ".airtune" / "models" / "tiny-llama-dev")
    if not (model / "airtune-tiny.json").exists():
        model = make_tiny_model(root / "tiny-llama-dev")
    stack = Stack(root, model)
    try:
        stack.start()
        out = Path(os.environ.get("AIRTUNE_TEST_STACK") or "/tmp/airtune-stack.json")
        out.write_text(json.dumps(_info(stack)))
        print(f"stack running: {stack.url} (admin / {stack.password}), MLflow {stack.mlflow_url}; details in {out}; Ctrl-C stops it", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        stack.stop()
