"""`airtune run`: one job through the real airtune_finetune DAG on the embedded default.

It uses Airflow's own `dag.test()`: the DAG is synced into the metadata database, a DAG run is
created there with the job as its `conf`, and every task runs through the task runner, so the run
and its task logs are in the Airflow UI afterwards (`make up`). No scheduler needs to be running.

`dag.test()` runs in a child process (`python -m airtune.runner`) whose output — Airflow's
structured logs, a couple of hundred lines a job — goes to a log file. The parent (`supervise`)
reads that file as it grows and shows the stages and a progress line for training; `--verbose`
shows the file's lines instead. The parent also owns cancellation: Ctrl-C, SIGTERM or SIGHUP stop
the child, stop the training process group, mark the DAG run and its unfinished tasks failed and the
MLflow run FAILED (the cleanup task's own body, airtune.pipeline.cleanup), and exit non-zero with one
line; a second signal exits at once. (In-process, `dag.test()` cannot be stopped cleanly: Airflow's
task runner replaces SIGTERM's handler with the operator's on_kill, and a KeyboardInterrupt inside
a task is recorded as that task's failure and the run goes on.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from airtune import localstack, paths
from airtune.status import format_duration as _duration

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


def _load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(paths.repo_root() / "dags"))
    if dag_id not in bag.dags:
        errors = "\n".join(f"{k}: {v}" for k, v in bag.import_errors.items())
        raise RuntimeError(f"DAG {dag_id} not found in dags/:\n{errors}")
    return bag.dags[dag_id]


def run_job(conf: dict, dag_id: str = "airtune_finetune") -> dict:
    """The job through `dag.test()` in this process; the run's outcome as a dict."""
    localstack.ensure_airflow_db()
    from airflow import settings

    settings.configure_orm()
    from airtune import notify

    # dag.test() cannot run this DAG's callbacks (airtune.notify.RUNNER_NOTIFIES): notified here instead
    os.environ[notify.RUNNER_NOTIFIES] = "1"
    dag = _load_dag(dag_id)
    dr = dag.test(run_conf=conf)
    notify.after_test_run(dr, conf)
    state = str(getattr(dr.state, "value", dr.state))
    summary: dict = {"state": state, "dag_id": dag_id, "dag_run_id": dr.run_id}
    name = conf.get("name")
    job_dir = paths.job_dir(name, dr.run_id) if name else None
    if job_dir is not None:
        summary["job_dir"] = str(job_dir)
        for fname in ("promotion.json", "registered.json", "result.json"):
            f = job_dir / fname
            if f.exists():
                data = json.loads(f.read_text())
                for k in ("mlflow_run_id", "registered_model", "model_version", "output_dir", "train_loss_first", "train_loss_last",
                          "global_step", "eval_loss", "alias_best", "promotion", "champion_version"):
                    if k in data and k not in summary:
                        summary[k] = data[k]
        if (job_dir / "evaluation" / "evaluation.json").exists():
            from airtune.pipeline import evaluation_summary

            summary["evaluation"] = evaluation_summary(job_dir / "evaluation")
        spec = job_dir / "spec.json"
        if spec.exists() and "mlflow_run_id" not in summary:
            summary["mlflow_run_id"] = json.loads(spec.read_text()).get("tracking", {}).get("mlflow_run_id")
    for k in ("mlflow_run_id", "registered_model", "model_version", "output_dir", "train_loss_first", "train_loss_last"):
        summary.setdefault(k, None)
    return summary


def approval_unanswerable() -> str | None:
    """Why a job with promote: approve cannot wait for its answer under `airtune run`, or None.

    The approve task waits until an api-server on the same Airflow database records an answer (the
    UI's Required Actions, or the REST API): on the embedded default, the stack of `make up`."""
    import urllib.request

    env = localstack.environment()
    url = env["AIRFLOW__API__BASE_URL"].rstrip("/") + "/api/v2/monitor/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            if r.status == 200:
                return None
    except OSError:
        pass
    return (f"a person answers the approval in Airflow's UI or REST API, and no Airflow api-server answers at "
            f"{env['AIRFLOW__API__BASE_URL']}: start the stack with `make up` first, or use promote auto or never")


# --- the supervising parent ------------------------------------------------------------------------

def log_path_for(name: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = paths.airtune_home() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"run-{name}-{stamp}.log"


_STARTING = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
_ENDED = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
_NEW_STATE = re.compile(r"Task instance state updated .* new_state=(\w+)")
_STEP = re.compile(r"\[airtune\] step (\d+)/(\d+)\s+epoch [\d.]+(.*?)(?: \[airtune\]|$)")
_SPEC = re.compile(r"resolved spec written to (\S+/spec\.json)")
_RUN_ID = re.compile(r"\[DAG TEST\] running task <TaskInstance: \S+ (\S+) \[")
_LEVEL = re.compile(r"^\S+ \[(error|critical)\s*\] (.*)$")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|InUse|Failed|Refused|Timeout)\w*): (.*)$")
_APPROVAL = re.compile(r"waiting for an answer \(Approve / Reject\) for at most (\S+); Required Actions: (\S+)")
_PROMOTION = re.compile(r"(promotion of \S+ version \d+: .*?)(?:\s+\[[\w.]+\].*)?$")
_STRUCT_TAIL = re.compile(r"\s+\[[\w.]+\](?: [\w.]+=\S+)*\s*$")


class Progress:
    """What the log file says so far, and how to show it on a terminal."""

    def __init__(self, out, *, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.task: str | None = None
        self.task_started = 0.0
        self.task_state: str | None = None
        self.failed: list[str] = []
        self.errors: list[str] = []
        self.exceptions: list[str] = []
        self.spec_path: str | None = None
        self.run_id: str | None = None  # the DAG run's id, once a task of it has started
        self.step = self.total = 0
        self.metrics = ""
        self.first_step_at: float | None = None
        self.first_step = 0
        self._line_shown = False
        self._last_plain = 0.0
        self._traceback = False
        self._exception: list[str] | None = None

    def _exception_lines(self, line: str) -> bool:
        """A traceback's closing `Type: message` (and the message's further lines): the task's error."""
        if line.startswith("Traceback (most recent call last):"):
            self._traceback, self._exception = True, None
            return True
        if self._exception is not None:
            if _TIMESTAMP.match(line) or not line.strip():
                self.exceptions.append("\n".join(self._exception))
                del self.exceptions[:-3]
                self._exception = None
                return False
            self._exception.append(line)
            return True
        if self._traceback:
            if line.startswith((" ", "\t")):
                return True
            if m := _EXCEPTION.match(line):
                self._traceback = False
                self._exception = [f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"]
                return True
            self._traceback = False
        return False

    def feed(self, line: str) -> None:
        if self._exception_lines(line):
            return
        if self.run_id is None and (m := _RUN_ID.search(line)):
            self.run_id = m.group(1)
        if m := _STARTING.search(line):
            self._finish_task()
            self.task, self.task_started, self.task_state = m.group(1), time.monotonic(), None
            self.step = self.total = 0
            self.first_step_at = None
            if self.tty:
                self.show()
        elif m := _ENDED.search(line):
            self._finish_task()
        elif m := _NEW_STATE.search(line):
            self.task_state = m.group(1)
        elif m := _STEP.search(line):
            step, total = int(m.group(1)), int(m.group(2))
            metrics = m.group(3)
            if "eval_loss" in metrics or "train_runtime" in metrics:
                return
            if self.first_step_at is None:
                self.first_step_at, self.first_step = time.monotonic(), step
            self.step, self.total = step, total
            loss = re.search(r"loss ([\d.]+)", metrics)
            self.metrics = f"loss {loss.group(1)}" if loss else ""
            self.show()
        elif m := _SPEC.search(line):
            self.spec_path = m.group(1)
        elif m := _APPROVAL.search(line):  # the approve task waits for a person: say where to answer
            self._emit(f"  {'approve':<18} waiting  for an answer (Approve / Reject) at most {m.group(1)}: {m.group(2)}")
        elif m := _PROMOTION.search(line):
            self._emit(f"  {'':<18} {m.group(1)}")
        if m := _LEVEL.match(line):
            self.errors.append(_STRUCT_TAIL.sub("", m.group(2)).strip())
            del self.errors[:-8]

    def _finish_task(self) -> None:
        if self.task is None:
            return
        state = self.task_state or "done"
        took = time.monotonic() - self.task_started
        mark = {"success": "ok", "failed": "FAILED", "skipped": "skipped", "up_for_retry": "failed, retrying",
                "upstream_failed": "not run"}.get(state, state)
        if state == "skipped":
            self._clear()
            self.task = None
            return
        detail = f"  {self.step}/{self.total} steps" if self.total else ""
        self._emit(f"  {self.task:<18} {mark:<8} {_duration(took)}{detail}")
        if state in ("failed", "up_for_retry"):
            self.failed.append(self.task)
        self.task = None

    def show(self) -> None:
        if self.task is None:
            return
        now = time.monotonic()
        text = f"  {self.task:<18} running  {_duration(now - self.task_started)}"
        if self.total:
            text += f"  step {self.step}/{self.total}"
            if self.metrics:
                text += f"  {self.metrics}"
            if self.first_step_at is not None and self.step > self.first_step:
                rate = (now - self.first_step_at) / (self.step - self.first_step)
                text += f"  ETA {_duration(rate * (self.total - self.step))}"
        if self.tty:
            self.out.write("\r\033[K" + text)
            self.out.flush()
            self._line_shown = True
        elif now - self._last_plain >= 15 or (self.total and self.step == self.total):
            self._last_plain = now
            self.out.write(text + "\n")
            self.out.flush()

    def tick(self) -> None:
        if self.tty and self.task is not None:
            self.show()

    def _clear(self) -> None:
        if self._line_shown:
            self.out.write("\r\033[K")
            self._line_shown = False

    def _emit(self, text: str) -> None:
        self._clear()
        self.out.write(text + "\n")
        self.out.flush()

    def close(self, *, cancelled: bool = False) -> None:
        if cancelled and self.task is not None:
            self.task_state = "cancelled"
        self._finish_task()
        self._clear()
        self.out.flush()


class _Cancel(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


class _Deleted(Exception):
    def __init__(self, tombstone: dict) -> None:
        self.tombstone = tombstone


EXIT_DELETED = 1


def supervise(conf: dict, *, dag_id: str = "airtune_finetune", verbose: bool = False, out=None) -> tuple[dict | None, int]:
    """Run the job in a child process, show its progress, stop everything on a signal.

    Returns (the run's summary or None, exit code)."""
    out = out or sys.stdout
    name = str(conf.get("name") or "job")
    log_path = log_path_for(name)
    tmp = Path(tempfile.mkdtemp(prefix="airtune-run-", dir=paths.airtune_home()))
    conf_file, summary_file = tmp / "conf.json", tmp / "summary.json"
    conf_file.write_text(json.dumps(conf, default=str))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    print(f"airtune run: job {name} on the embedded default", file=out)
    print(f"  Airflow's logs: {log_path}" + ("" if verbose else "  (--verbose shows them here)"), file=out, flush=True)
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "airtune.runner", "--conf", str(conf_file), "--summary", str(summary_file), "--dag-id", dag_id],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    import threading

    threading.Thread(target=_preload_for_cancel, name="airtune-preload", daemon=True).start()
    progress = Progress(out, tty=bool(getattr(out, "isatty", lambda: False)()) and not verbose)
    signals = {}

    def on_signal(signum, frame):
        if signals.get("cancelling"):
            os._exit(EXIT_SIGNAL.get(signum, 1))  # a second signal: at once
        signals["cancelling"] = True
        raise _Cancel(signum)

    previous = {s: signal.signal(s, on_signal) for s in EXIT_SIGNAL}
    from airtune import jobs

    started_at, next_check = time.time(), 0.0
    try:
        with open(log_path, "r", encoding="utf-8", errors="replace") as reader:
            try:
                pending = ""
                while True:
                    if time.monotonic() >= next_check:  # a forced delete of this job: stop before it is written back
                        next_check = time.monotonic() + 0.5
                        if (tombstone := jobs.deleted_run(name, dag_id, progress.run_id, since=started_at)) is not None:
                            raise _Deleted(tombstone)
                    chunk = reader.read()
                    if chunk:
                        pending += chunk
                        *lines, pending = pending.split("\n")
                        for line in lines:
                            if verbose:
                                out.write(line + "\n")
                            progress.feed(line)
                        if verbose:
                            out.flush()
                    elif child.poll() is not None:
                        break
                    else:
                        progress.tick()
                        time.sleep(0.5)
                if (tombstone := jobs.deleted_run(name, dag_id, progress.run_id, since=started_at)) is not None:
                    raise _Deleted(tombstone)  # deleted as the child ended: what it wrote back is not kept
            except _Deleted as deleted:
                signals["cancelling"] = True  # a signal from here on exits at once
                progress.close(cancelled=True)
                print(stop_deleted_run(child, deleted.tombstone, name, dag_id, progress, log_path), file=out, flush=True)
                _rmtree(tmp)
                return None, EXIT_DELETED
            except _Cancel as cancel:
                progress.close(cancelled=True)
                line = cancel_run(child, progress.spec_path, name, cancel.signum, log_path)
                print(line, file=out, flush=True)
                return None, EXIT_SIGNAL.get(cancel.signum, 1)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    progress.close()
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    _rmtree(tmp)
    if summary is None:
        print(f"airtune run: the run ended without an outcome (exit {child.returncode}); see {log_path}", file=out)
        for e in progress.exceptions[-1:] or progress.errors[-3:]:
            print(f"  {e}", file=out)
        return None, 1
    summary["log_file"] = str(log_path)
    if summary["state"] != "success":
        summary["failed_tasks"] = progress.failed
        summary["errors"] = progress.exceptions[-1:] or progress.errors[-3:]
    return summary, 0 if summary["state"] == "success" else 1


def _preload_for_cancel() -> None:
    """Import what a cancellation needs (Airflow's ORM, the MLflow client) while the job runs, so that
    a signal is answered in a second or two rather than after those imports on a busy machine."""
    try:
        localstack.apply()
        from airflow import settings  # noqa: F401
        from airflow.models.dagrun import DagRun  # noqa: F401
        from airflow.models.taskinstance import TaskInstance  # noqa: F401

        from airtune import pipeline, tracking  # noqa: F401
        from airtune.launch import launcher_kind  # noqa: F401

        tracking.client()
    except Exception:  # only a head start: cancel_run imports them again and reports what fails
        pass


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def cancel_run(child: subprocess.Popen, spec_path: str | None, name: str, signum: int, log_path: Path) -> str:
    """Stop the child and what it started; mark the run failed; one line saying what was done."""
    from airtune.launch import local

    done = []
    try:
        os.killpg(child.pid, signal.SIGKILL)  # its task runner ignores SIGTERM; the state is fixed below
    except ProcessLookupError:
        pass
    child.wait()
    resolved = None
    if spec_path and Path(spec_path).is_file():
        try:
            resolved = json.loads(Path(spec_path).read_text())
        except ValueError:
            resolved = None
    tracking = (resolved or {}).get("tracking") or {}
    job_dir = Path(spec_path).parent if spec_path else None
    if job_dir is not None and local.cleanup(job_dir):
        done.append("training stopped")
    if tracking.get("run_id"):
        try:
            if mark_dag_run_failed(tracking["dag_id"], tracking["run_id"]):
                done.append(f"DAG run {tracking['run_id']} marked failed")
        except Exception as exc:  # the one-line report still comes
            done.append(f"could not mark the DAG run failed ({type(exc).__name__}: {exc})")
    if job_dir is not None and tracking.get("mlflow_run_id"):
        from airtune import pipeline
        from airtune.launch import launcher_kind

        try:
            pipeline.cleanup({"job_dir": str(job_dir), "mlflow_run_id": tracking["mlflow_run_id"],
                              "launcher": launcher_kind(resolved)}, failed=True)
            done.append("MLflow run marked failed")
        except Exception as exc:
            done.append(f"cleanup: {type(exc).__name__}: {exc}")
    what = "; ".join(done) if done else "nothing had started yet"
    return f"airtune run: cancelled by {signal.Signals(signum).name}: job {name}: {what}. Logs: {log_path}"


def stop_deleted_run(child: subprocess.Popen, tombstone: dict, name: str, dag_id: str, progress: Progress,
                     log_path: Path) -> str:
    """The job was deleted (airtune delete --force) while it ran: stop the child before its dag.test()
    writes the DAG run back, let the delete finish, remove what was written back meanwhile."""
    from airtune import jobs
    from airtune.launch import local

    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()
    if progress.spec_path and Path(progress.spec_path).parent.is_dir():
        local.cleanup(Path(progress.spec_path).parent)  # the delete stops it too; whichever comes first
    finished = jobs.wait_for_delete(tombstone)
    run_id = progress.run_id or tombstone.get("run_id")
    try:
        swept = jobs.sweep_deleted_run(name, dag_id, run_id)
    except Exception as exc:  # the one line still comes, saying what is left
        swept = [f"could not remove what the run wrote back ({type(exc).__name__}: {exc})"]
    jobs.forget_tombstone(tombstone)
    detail = "; ".join(swept) if swept else "nothing of it was written back"
    late = "" if finished else f" (the delete had not finished after {jobs.TOMBSTONE_WAIT:.0f} s)"
    return (f"airtune run: job {name} was deleted while it ran (airtune delete --force){late}: its DAG run "
            f"{run_id or '?'} was stopped and not kept; {detail}. Logs: {log_path}")


def mark_dag_run_failed(dag_id: str, run_id: str) -> bool:
    """The DAG run cancelled as a forced delete cancels it (jobs.cancel_dag_run), so that nothing
    picks it up again. False when Airflow has no such run."""
    from airflow.models.dagrun import DagRun

    from airtune import jobs

    with jobs.airflow_session() as session:
        dr = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == run_id).one_or_none()
        if dr is None:
            return False
        jobs.cancel_dag_run(dr, session)
        session.commit()
        return True


def print_summary(s: dict) -> None:
    env = localstack.environment()
    lines = [
        "",
        "airtune job finished",
        f"  DAG run          {s['dag_id']} / {s['dag_run_id']}: {s['state']}",
    ]
    if s.get("failed_tasks"):
        lines.append(f"  failed task      {', '.join(s['failed_tasks'])}")
    for e in s.get("errors") or []:
        first, *rest = e[:2000].splitlines() or [""]
        lines.append(f"  error            {first}")
        lines.extend(f"                   {r}" for r in rest[:12])
    if s.get("train_loss_first") is not None:
        lines.append(f"  training loss    {_fmt(s.get('train_loss_first'))} at the first step -> {_fmt(s.get('train_loss_last'))} at the last")
    if s.get("eval_loss") is not None:
        lines.append(f"  validation loss  {_fmt(s['eval_loss'])} (the final weights on the held-out rows)")
    if s.get("output_dir"):
        lines.append(f"  weights          {s.get('output_dir')}")
    if s.get("mlflow_run_id"):
        lines.append(f"  MLflow run       {s.get('mlflow_run_id')}")
    if s.get("evaluation"):
        lines.append(f"  evaluation       {s['evaluation']} (base -> tuned)")
    if s.get("registered_model"):
        name = s.get("registered_model")
        lines.append(f"  registered model {name} version {s.get('model_version')}"
                     + (f" (models:/{name}@best)" if s.get("alias_best") else ""))
    if s.get("promotion"):
        champion = s.get("champion_version")
        where = f"version {champion} (models:/{s.get('registered_model')}@champion)" if champion else "none"
        lines.append(f"  champion         {where}: {s['promotion']}")
    if s.get("log_file"):
        lines.append(f"  Airflow's logs   {s['log_file']}")
    lines += [
        "",
        "See it in the UIs: `make up`, then",
        f"  Airflow  {env['AIRFLOW__API__BASE_URL']}/dags/{s['dag_id']}/runs  (login printed by make up)",
        f"  MLflow   {_mlflow_link(s, f'http://127.0.0.1:{localstack.MLFLOW_PORT}')}",
    ]
    print("\n".join(lines))


def _mlflow_link(s: dict, ui: str) -> str:
    """The run in `make up`'s MLflow UI, in its model-training view (tracking.WORKFLOW_QUERY)."""
    from airtune import tracking

    if s.get("mlflow_run_id"):
        try:
            eid = tracking.client().get_run(s["mlflow_run_id"]).info.experiment_id
            return f"{ui}/#/experiments/{eid}/runs/{s['mlflow_run_id']}{tracking.WORKFLOW_QUERY}"
        except Exception:  # the summary is printed all the same
            pass
    return f"{ui}/#/experiments{tracking.WORKFLOW_QUERY}"


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else str(v)


def _child_main(argv: list[str] | None = None) -> int:
    """`python -m airtune.runner --conf FILE --summary FILE`: the child `supervise` starts."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m airtune.runner")
    parser.add_argument("--conf", required=True, type=Path)
    parser.add_argument("--summary", required=True, type=Path)
    parser.add_argument("--dag-id", default="airtune_finetune")
    args = parser.parse_args(argv)
    summary = run_job(json.loads(args.conf.read_text()), dag_id=args.dag_id)
    tmp = args.summary.with_name(args.summary.name + ".tmp")
    tmp.write_text(json.dumps(summary, default=str))
    os.replace(tmp, args.summary)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
