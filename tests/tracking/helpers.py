"""Helpers for the MLflow tests: a real `mlflow server` process, a job folder the real trainer can
train from (resolved spec + prepared rows), and the trainer run as the local launcher runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1 in its own process group; stop() takes the whole group down.

    `artifacts` is the server's --artifacts-destination: clients send files through the server
    (proxied), the production set-up of docs/mlflow.md, with a local folder standing in for the
    object store.
    """

    def __init__(self, backend_uri: str, artifacts: Path, log: Path, port: int | None = None):
        self.backend_uri, self.artifacts, self.log = backend_uri, artifacts, log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> MlflowServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # background jobs (GenAI evaluation): not used, one process less
        cmd = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", self.backend_uri, "--artifacts-destination", self.artifacts.as_uri()]
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def conversations(n: int) -> list[list[dict]]:
    rows = json.loads((REPO / "data" / "llamafactory-demo" / "identity.json").read_text())[:n]
    return [
        [{"role": "user", "content": r["instruction"]},
         {"role": "assistant", "content": r["output"].replace("{{name}}", "Tiny").replace("{{author}}", "airtune")}]
        for r in rows
    ]


def make_prepared(model_dir: Path, out: Path, *, n_train: int = 16, repeat: int = 2, n_val: int = 6, cutoff: int = 96) -> Path:
    """The prepared folder of docs/architecture.md: input_ids, labels (-100 on the prompt), manifest."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)

    def row(conv):
        prompt = tok.apply_chat_template(conv[:-1], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(conv, tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"]
        return {"input_ids": ids[:cutoff], "labels": ([-100] * len(p_ids) + ids[len(p_ids):])[:cutoff]}

    convs = conversations(n_train + n_val)
    train = [row(c) for c in convs[:n_train]] * repeat
    val = [row(c) for c in convs[n_train:]]
    out.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(train).save_to_disk(str(out / "train"))
    Dataset.from_list(val).save_to_disk(str(out / "validation"))
    manifest = {"stage": "sft", "template": "chatml", "cutoff_len": cutoff, "packing": False,
                "rows": {"train": len(train), "validation": len(val)}, "content_hash": "c0ffee" * 6,
                "tokens": {"train": sum(len(r["input_ids"]) for r in train)}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def make_resolved(model_dir: Path, name: str, **overrides) -> dict:
    """A resolved spec as `validate` writes it for tiny-llama-dev on the CPU (docs/architecture.md): a small job
    validated (train.helpers.validated), `overrides` then set as resolved values."""
    from train.helpers import validated

    job = {"name": name, "base_model": "tiny-llama-dev", "dataset": "identity", "learning_rate": 5e-3,
           "num_train_epochs": 2.0, "cutoff_len": 96, "per_device_train_batch_size": 4, "val_size": 0.2,
           "logging_steps": 1, "save_steps": 5}
    return validated(job, model_dir, **overrides)


def make_job(workspace: Path, resolved: dict, dag_run_id: str, mlflow_run_id: str, dag_id: str = "airtune_finetune") -> Path:
    """`<workspace>/jobs/<name>/<run>/spec.json` as validate leaves it (with the MLflow run's id)."""
    from airtune.names import safe_path_component

    job_dir = workspace / "jobs" / resolved["spec"]["name"] / safe_path_component(dag_run_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    resolved = {**resolved, "tracking": {"mlflow_run_id": mlflow_run_id, "dag_id": dag_id, "run_id": dag_run_id}}
    (job_dir / "spec.json").write_text(json.dumps(resolved, indent=2))
    return job_dir


def start_training(job_dir: Path, data_dir: Path, tracking_uri: str, mlflow_run_id: str, *, pace: float = 0.0, **env) -> subprocess.Popen:
    """The trainer as the local launcher starts it (own process group, output to train.log)."""
    cmd = [sys.executable, str(HERE / "paced_train.py"), str(pace), "--",
           "--spec", str(job_dir / "spec.json"), "--data", str(data_dir), "--output", str(job_dir / "output")]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIRTUNE_"))}
    full_env.update({
        "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_RUN_ID": mlflow_run_id,
        "AIRTUNE_METRICS_FILE": str(job_dir / "metrics.jsonl"), "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "AIRTUNE_SYSTEM_METRICS_INTERVAL": "1",
        **env,
    })
    log = (job_dir / "train.log").open("a")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=job_dir, start_new_session=True)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def records(job_dir: Path) -> list[dict]:
    path = job_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out
