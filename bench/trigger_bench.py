"""From Trigger to the first training step, on the embedded stack (`make up`), with its breakdown
(issue 16, item 4).

Starts `scripts/stack.sh up` under a temporary AIRTUNE_HOME (ports 8080 and 5000 must be free),
waits for the DAG, then for each repeat triggers through the REST API (the official client, as the
trigger form's Trigger button does):

- a small job (tiny-llama-dev, ~100 rows, logging every step, data not in prepare's cache): the
  seconds from the trigger to the train task's first logged step (its MLflow `loss` at step 1), and
  per task when it was queued and started (from the trigger) and how long it ran; inside each task,
  when (from its start) the task runner had parsed the DAG file, the task's own work began, and for
  training: the trainer's process started, its imports were done, the model was loaded, step 1;
- a job that validate refuses (a cross-field rule: dpo on SFT data): the seconds until its DAG run
  is failed.

    .venv/bin/python bench/trigger_bench.py --repeats 3 [--json-out FILE] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAG_ID = "airtune_finetune"
URL = "http://127.0.0.1:8080"
TASKS = ("validate", "prepare_dataset", "choose_launcher", "train_local")


def small_job(name: str, rows: int = 100) -> dict:
    # rows: a new number each repeat, so that prepare_dataset finds nothing in its cache (a new job's data)
    return {"name": name, "base_model": "tiny-llama-dev", "dataset": ["alpaca_en_demo"], "finetuning_method": "lora",
            "stage": "sft", "max_samples": rows, "cutoff_len": 128, "per_device_train_batch_size": 8,
            "num_train_epochs": 1.0, "logging_steps": 1, "save_steps": 100, "val_size": 0.0, "learning_rate": 5e-3}


def refused_job(name: str) -> dict:
    return {**small_job(name), "stage": "dpo"}  # alpaca_en_demo is SFT data: validate refuses it


def _env(home: Path) -> dict:
    return {**os.environ, "AIRTUNE_HOME": str(home), "AIRFLOW_HOME": str(home / "airflow")}


def _ts(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


class Stack:
    def __init__(self, home: Path):
        self.home = home

    def up(self) -> None:
        subprocess.run(["bash", "scripts/stack.sh", "up"], cwd=REPO, env=_env(self.home), check=True,
                       stdout=subprocess.DEVNULL)
        pw = json.loads((self.home / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        req = urllib.request.Request(f"{URL}/auth/token", data=json.dumps({"username": "admin", "password": pw}).encode(),
                                     headers={"Content-Type": "application/json"})
        token = json.loads(urllib.request.urlopen(req, timeout=30).read())["access_token"]
        import airflow_client.client as af

        self.af = af
        self.client = af.ApiClient(af.Configuration(host=URL, access_token=token))
        self.dags, self.runs, self.tis = af.DAGApi(self.client), af.DagRunApi(self.client), af.TaskInstanceApi(self.client)
        deadline = time.time() + 180
        while True:
            try:
                self.dags.patch_dag(DAG_ID, af.DAGPatchBody(is_paused=False))
                return
            except af.ApiException:
                if time.time() > deadline:
                    raise
                time.sleep(1)

    def down(self) -> None:
        subprocess.run(["bash", "scripts/stack.sh", "down"], cwd=REPO, env=_env(self.home), stdout=subprocess.DEVNULL)

    def trigger(self, conf: dict) -> tuple[str, float]:
        t = time.time()
        run = self.runs.trigger_dag_run(DAG_ID, self.af.TriggerDAGRunPostBody(conf=conf, logical_date=None))
        return run.dag_run_id, t

    def state(self, run_id: str) -> str:
        return str(self.runs.get_dag_run(DAG_ID, run_id).state.value)

    def task_instances(self, run_id: str) -> dict:
        return {t.task_id: t for t in self.tis.get_task_instances(DAG_ID, run_id).task_instances}

    def log(self, run_id: str, task_id: str) -> str:
        """The task's log file as the task runner wrote it (one JSON record a line)."""
        folder = self.home / "airflow" / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
        files = sorted(folder.glob("attempt=*.log"))
        return files[0].read_text() if files else ""


def first_step_time(home: Path, run_id: str) -> float | None:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(experiments, filter_string=f"tags.`airflow.run_id` = '{run_id}'") if experiments else []
    if not runs:
        return None
    history = c.get_metric_history(runs[0].info.run_id, "loss")
    return min((m.timestamp / 1000 for m in history), default=None)


# Where a task's time goes, from the timestamps of its own log lines (Airflow's task runner and airtune's)
MARKS = {
    "parse": r"Worker startup parse complete",
    "work": r"::endgroup::",
    "train process": r"^\$ .*-m airtune\.train",
    "imports done": r"^(?!\$ )\S",
    "model ready": r"parameters train",
    "step 1": r"\[airtune\] step 1/",
    "done": r"^Done\. Returned value",
}


def phases(log: str, started: float) -> dict:
    """Seconds from the task's start to each mark, in log order (the first line matching each)."""
    seen: dict[str, float] = {}
    order = list(MARKS)
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        event, at = str(record.get("event") or ""), _ts(record.get("timestamp"))
        if at is None:
            continue
        for mark in order:
            if mark in seen or (mark == "imports done" and "train process" not in seen):
                continue
            if re.search(MARKS[mark], event) and (mark != "work" or "parse" in seen):
                seen[mark] = round(at - started, 2)
                break
    return seen


def one_small(stack: Stack, home: Path, name: str, rows: int = 100) -> dict:
    run_id, t0 = stack.trigger(small_job(name, rows))
    first = None
    deadline = t0 + 600
    while first is None and time.time() < deadline:
        time.sleep(0.5)
        first = first_step_time(home, run_id)
        if stack.state(run_id) == "failed":
            raise SystemExit(f"the small job failed: {stack.log(run_id, 'validate')[-2000:]}")
    while stack.state(run_id) not in ("success", "failed") and time.time() < deadline:
        time.sleep(2)
    tis = stack.task_instances(run_id)
    tasks = {}
    for tid in TASKS:
        ti = tis[tid]
        queued, start, end = _ts(ti.queued_when), _ts(ti.start_date), _ts(ti.end_date)
        timings = phases(stack.log(run_id, tid), start)
        tasks[tid] = {"queued_at": round(queued - t0, 2) if queued else None, "started_at": round(start - t0, 2),
                      "ended_at": round(end - t0, 2) if end else None, "run_s": round((end or time.time()) - start, 2),
                      "timing": timings}
    return {"run_id": run_id, "first_step_s": round(first - t0, 2) if first else None, "tasks": tasks,
            "state": stack.state(run_id)}


def one_refused(stack: Stack, name: str) -> dict:
    run_id, t0 = stack.trigger(refused_job(name))
    while stack.state(run_id) != "failed":
        if time.time() - t0 > 300:
            raise SystemExit("the refused job did not fail within 300 s")
        time.sleep(0.25)
    failed_at = time.time()
    ti = stack.task_instances(run_id)["validate"]
    log = stack.log(run_id, "validate")
    return {"run_id": run_id, "failed_s": round(failed_at - t0, 2),
            "validate_started_at": round(_ts(ti.start_date) - t0, 2), "validate_run_s": round(_ts(ti.end_date) - _ts(ti.start_date), 2),
            "says": "stage" in log and "dpo" in log}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--keep", action="store_true", help="leave the stack and its home for a look")
    args = ap.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="airtune-trigger-bench-"))
    subprocess.run([str(BIN / "airtune"), "make-tiny-model"], env=_env(home), check=True, stdout=subprocess.DEVNULL)
    stack = Stack(home)
    started = time.time()
    stack.up()
    print(f"stack up in {time.time() - started:.0f} s (home {home}); load {os.getloadavg()[0]:.2f}")
    results = {"small": [], "refused": [], "load_before": os.getloadavg()}
    try:
        # the first run after `make up` (what a first click gets): the workers' first imports, the MLflow database
        results["first"] = one_small(stack, home, "first")
        print(f"first run after make up: trigger -> first step {results['first']['first_step_s']} s")
        for i in range(args.repeats):
            results["small"].append(one_small(stack, home, f"bench-{i}", rows=101 + i))
            results["refused"].append(one_refused(stack, f"refused-{i}"))
            r, f = results["small"][-1], results["refused"][-1]
            print(f"repeat {i + 1}: trigger -> first step {r['first_step_s']} s; refused job failed after {f['failed_s']} s")
    finally:
        results["load_after"] = os.getloadavg()
        if not args.keep:
            stack.down()
    print(f"\nmedians of {args.repeats} (load {results['load_before'][0]:.2f} before, {results['load_after'][0]:.2f} after):")
    print(f"  trigger -> first training step: {statistics.median(r['first_step_s'] for r in results['small']):.1f} s")
    print(f"  refused job reported failed:    {statistics.median(r['failed_s'] for r in results['refused']):.1f} s")
    print(f"  {'task':<16} {'queued at':>9} {'started at':>10} {'ran':>6}   airtune's own phases (last repeat)")
    for tid in TASKS:
        rows = [r["tasks"][tid] for r in results["small"]]
        med = lambda k: statistics.median(x[k] for x in rows if x[k] is not None)  # noqa: E731
        print(f"  {tid:<16} {med('queued_at'):>8.1f}s {med('started_at'):>9.1f}s {med('run_s'):>5.1f}s   "
              + ", ".join(f"{k} {v}" for k, v in rows[-1]["timing"].items()))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=1, default=str))
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
