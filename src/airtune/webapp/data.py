"""What the jobs page shows, gathered from Airflow's metadata database (the api-server's own
session), MLflow (airtune.status) and the job folders (the resolved spec, metrics, checkpoints).

Runs inside the api-server: Airflow is configured already, so this module uses the server's ORM
session (`airflow.utils.session.create_session`) rather than airtune.jobs.airflow_session, which
configures an ORM of its own (right for the CLI, wrong inside a running server).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from airtune import paths

FINETUNE_DAG = "airtune_finetune"
ACTIVE = ("queued", "running")
LOG_LINES = 200
_plot_lock = threading.Lock()  # matplotlib's pyplot is not thread-safe; FastAPI serves from a thread pool


class NotFound(LookupError):
    pass


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def duration_seconds(start: str | None, end: str | None, state: str | None) -> float | None:
    """End minus start; for an active run, now minus start."""
    s = _parse_time(start)
    if s is None:
        return None
    e = _parse_time(end) or (datetime.now(timezone.utc) if state in ACTIVE else None)
    return max(0.0, (e - s).total_seconds()) if e else None


# --- Airflow -------------------------------------------------------------------------------------

def airflow_runs(names: set[str] | None = None) -> tuple[dict[str, list[dict]], dict[tuple, dict]]:
    """({job name: [DAG run, ...]} in airtune.status's shape, {(dag_id, run_id): conf})."""
    from airflow.utils.session import create_session

    from airtune import jobs, status

    runs: dict[str, list[dict]] = {}
    confs: dict[tuple, dict] = {}
    with create_session() as session:
        for name, dr in jobs.job_runs(session, names):  # only runs that passed validate (or are on their way)
            runs.setdefault(name, []).append(status.dag_run_row(dr))
            confs[(dr.dag_id, dr.run_id)] = dr.conf or {}
    return runs, confs


def task_instances(dag_id: str, run_id: str) -> list[dict]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    from airtune import status

    out = []
    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id).all()
        for ti in tis:
            state = str(getattr(ti.state, "value", ti.state)) if ti.state is not None else None
            out.append({
                "task_id": ti.task_id,
                "map_index": ti.map_index,
                "state": state,
                "try_number": ti.try_number,
                "start": _iso(ti.start_date),
                "end": _iso(ti.end_date),
                "duration_s": ti.duration,
                "pool": ti.pool,
                "url": f"{status.airflow_run_url(dag_id, run_id)}/tasks/{ti.task_id}",
            })
    # the order things happened; tasks that have not started last, in the graph's order of ids
    out.sort(key=lambda t: (t["start"] is None, t["start"] or "", t["task_id"]))
    return out


def log_tail(dag_id: str, run_id: str, task_id: str | None = None, lines: int = LOG_LINES) -> dict:
    """The last `lines` lines of a task's log (its newest try), read as Airflow's log API reads it.

    Without `task_id`: the running task, else the one that started last.
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.log.log_reader import TaskLogReader
    from airflow.utils.session import create_session
    from sqlalchemy.orm import joinedload

    with create_session() as session:
        q = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        tis = q.options(joinedload(TaskInstance.dag_run)).all()
        started = [ti for ti in tis if ti.start_date is not None and ti.try_number]
        if task_id:
            chosen = [ti for ti in tis if ti.task_id == task_id]
            if not chosen:
                raise NotFound(f"task {task_id!r} of run {run_id!r}: no such task; tasks: {', '.join(sorted(t.task_id for t in tis))}")
            ti = chosen[0]
        else:
            ti = _most_telling(started)
        if ti is None or not ti.try_number:
            return {"task_id": ti.task_id if ti else None, "try_number": 0, "lines": [], "truncated": False}
        reader = TaskLogReader()
        stream, _ = reader.read_log_chunks(ti, ti.try_number, {"download_logs": True})
        text = [_format_log(m) for m in (stream if not isinstance(stream, (str, bytes)) else [stream])]
    # Airflow's folding markers (::group::, ::endgroup::) are for its own log viewer
    flat = [line for chunk in text for line in chunk.splitlines() if "::group::" not in line and "::endgroup::" not in line]
    return {"task_id": ti.task_id, "try_number": ti.try_number, "lines": flat[-lines:], "truncated": len(flat) > lines}


def _most_telling(tis: list):
    """The log a reader wants first: a running task's, else a failed one's, else the training's,
    else the task that started last."""
    def state(ti):
        return str(getattr(ti.state, "value", ti.state))

    for pick in (
        [t for t in tis if state(t) == "running"],
        [t for t in tis if state(t) == "failed"],
        [t for t in tis if t.task_id.startswith("train") and state(t) == "success"],
        tis,
    ):
        if pick:
            return max(pick, key=lambda t: t.start_date)
    return None


def _format_log(m) -> str:
    if isinstance(m, (str, bytes)):
        return m.decode(errors="replace") if isinstance(m, bytes) else m
    if isinstance(m, dict):
        d = m
    else:
        d = {**(getattr(m, "model_extra", None) or {}), "timestamp": getattr(m, "timestamp", None), "event": getattr(m, "event", "")}
    ts = d.get("timestamp")
    ts = ts.strftime("%H:%M:%S") if hasattr(ts, "strftime") else (str(ts)[11:19] if ts else "")
    level = str(d.get("level") or "").upper()
    event = str(d.get("event", ""))
    line = " ".join(x for x in (ts, level, event) if x)
    for exc in d.get("error_detail") or []:  # a failed task's exception: the reason, e.g. validate's errors
        if isinstance(exc, dict):
            line += f"\n{exc.get('exc_type')}: {exc.get('exc_value')}"
    return line


# --- MLflow and the job folders ------------------------------------------------------------------

def _mlflow_names() -> set[str]:
    try:
        from airtune import tracking

        c = tracking.client()
        names = set()
        for exp in c.search_experiments(filter_string="name LIKE 'airtune/%'", max_results=1000):
            job = exp.name.removeprefix("airtune/")
            if "/" not in job and ".deleted-" not in job:
                names.add(job)
        return names
    except Exception:
        return set()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def job_folder(name: str, run_id: str | None) -> Path | None:
    if not run_id:
        return None
    folder = paths.job_dir(name, run_id)
    return folder if folder.is_dir() else None


def _summary_spec(name: str, run: dict, confs: dict) -> dict:
    """base model, method, stage of a run: its resolved spec, else the conf it was triggered with."""
    folder = job_folder(name, run.get("dag_run_id"))
    resolved = _read_json(folder / "spec.json") if folder else None
    spec = (resolved or {}).get("spec") or confs.get((run.get("dag_id"), run.get("dag_run_id"))) or {}
    return {
        "base_model": spec.get("base_model"),
        "finetuning_method": spec.get("finetuning_method") or ("lora" if spec else None),
        "stage": spec.get("stage") or ("sft" if spec else None),
    }


def _best_metric(info: dict, latest: dict) -> dict | None:
    """The registered best version's eval loss, else the newest run's eval loss, else its loss."""
    model = info.get("registered_model") or {}
    best = next((v for v in model.get("versions", []) if v["version"] == model.get("best_version")), None)
    if best and best.get("eval_loss") not in (None, ""):
        try:
            return {"name": "eval_loss", "value": float(best["eval_loss"]), "source": f"version {best['version']}"}
        except ValueError:
            pass
    metrics = latest.get("metrics") or {}
    for key in ("eval_loss", "loss"):
        if isinstance(metrics.get(key), (int, float)):
            return {"name": key, "value": float(metrics[key]), "source": "latest run"}
    return None


def _row(name: str, runs: dict, confs: dict) -> dict:
    from airtune import status

    info = status.status(name, _airflow=(runs, None))
    latest = info["runs"][0] if info["runs"] else {}
    return {
        "name": name,
        "state": latest.get("state") or "—",
        **_summary_spec(name, latest, confs),
        "start": latest.get("start"),
        "end": latest.get("end"),
        "duration_s": duration_seconds(latest.get("start"), latest.get("end"), latest.get("state")),
        "best_metric": _best_metric(info, latest),
        "runs": len(info["runs"]),
        "registered_versions": len((info.get("registered_model") or {}).get("versions", [])),
        "progress": latest.get("progress") or {},
        "airflow_url": latest.get("airflow_url"),
        "mlflow_url": latest.get("mlflow_url"),
        "errors": info["errors"],
    }


def job_rows() -> list[dict]:
    """One row per job that Airflow, MLflow or the workspace knows, newest start first."""
    runs, confs = airflow_runs()
    names = set(runs) | _mlflow_names()
    jobs_dir = paths.workspace() / "jobs"
    if jobs_dir.is_dir():
        names |= {p.name for p in jobs_dir.iterdir() if p.is_dir()}
    with ThreadPoolExecutor(max_workers=8) as pool:  # a few MLflow calls per job
        rows = list(pool.map(lambda n: _row(n, runs, confs), sorted(names)))
    rows.sort(key=lambda r: r["start"] or "", reverse=True)
    return rows


def _checkpoints(folder: Path | None, run: dict) -> list[dict]:
    """The run's checkpoints on disk (result.json's list once it is written), the best one marked."""
    if folder is None:
        return []
    result = _read_json(folder / "result.json") or {}
    best_name = (run.get("best_checkpoint") or {}).get("name") or Path(str(result.get("best_checkpoint") or "")).name
    names = [Path(str(c)).name for c in result.get("checkpoints") or []]
    out_dir = folder / "output"
    if out_dir.is_dir():
        names += [p.name for p in out_dir.glob("checkpoint-*") if p.is_dir()]
        if (out_dir / "final").is_dir():
            names.append("final")
    seen, out = set(), []
    for n in sorted(set(names), key=lambda n: (n == "final", int(n.split("-")[-1]) if n.split("-")[-1].isdigit() else 0)):
        if n in seen:
            continue
        seen.add(n)
        out.append({"name": n, "path": str(out_dir / n), "on_disk": (out_dir / n).is_dir(), "best": n == best_name})
    return out


def job_detail(name: str, run_id: str | None = None) -> dict:
    from airtune import status

    runs, confs = airflow_runs({name})
    info = status.status(name, _airflow=(runs, None))
    if not info["exists"]:
        raise NotFound(f"no job named {name!r}")
    run = next((r for r in info["runs"] if r.get("dag_run_id") == run_id), None) if run_id else None
    if run_id and run is None:
        raise NotFound(f"job {name!r} has no run {run_id!r}; runs: {', '.join(str(r.get('dag_run_id')) for r in info['runs'])}")
    run = run or (info["runs"][0] if info["runs"] else {})
    folder = job_folder(name, run.get("dag_run_id"))
    resolved = _read_json(folder / "spec.json") if folder else None
    result = _read_json(folder / "result.json") if folder else None
    tasks = task_instances(run["dag_id"], run["dag_run_id"]) if run.get("dag_id") and run.get("dag_run_id") else []
    conf = confs.get((run.get("dag_id"), run.get("dag_run_id"))) or {}
    return {
        "name": name,
        "run": {**run, "duration_s": duration_seconds(run.get("start"), run.get("end"), run.get("state"))},
        "runs": [{"dag_id": r.get("dag_id"), "dag_run_id": r.get("dag_run_id"), "state": r.get("state"), "start": r.get("start")}
                 for r in info["runs"]],
        "resolved": resolved,
        "spec": (resolved or {}).get("spec") or conf,
        "spec_is_resolved": bool(resolved),
        "tasks": tasks,
        "result": result,
        "checkpoints": _checkpoints(folder, run),
        "evaluation": evaluation_view(folder, info["registered_model"], run.get("model_version")),
        "has_metrics": bool(folder and (folder / "metrics.jsonl").is_file()),
        "registered_model": info["registered_model"],
        # the "Try it" box: shown on a finished run only (the live refresh reloads an active one's page)
        "try_it": try_target(name, resolved) if run.get("state") not in ACTIVE else None,
        "experiment": info["experiment"],
        "folder": str(folder) if folder else None,
        "errors": info["errors"],
    }


EVAL_PREDICTIONS_SHOWN = 20


def evaluation_view(folder: Path | None, model: dict, version: str | None) -> dict | None:
    """The evaluate task's results for the page: base / champion / tuned figures side by side, the
    first predictions, and the promotion decision recorded on this run's version."""
    ev = _read_json(folder / "evaluation" / "evaluation.json") if folder else None
    if not ev:
        return None
    sources = [s for s in ("base", "champion", "tuned") if ev.get(s)]
    keys = []
    for s in sources:
        keys += [k for k in ev[s] if k not in keys]
    predictions = []
    path = folder / "evaluation" / "predictions.jsonl"
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    predictions.append(json.loads(line))
                except ValueError:
                    continue
                if len(predictions) >= EVAL_PREDICTIONS_SHOWN:
                    break
    v = next((x for x in (model or {}).get("versions", []) if x["version"] == version), None)
    return {
        "sources": sources, "keys": keys, "figures": {s: ev.get(s) or {} for s in sources},
        "samples": ev.get("samples"), "seconds": ev.get("seconds") or {}, "base_model": ev.get("base_model"),
        "champion_version": ev.get("champion_version"), "predictions": predictions,
        "promotion": (v or {}).get("promotion") or {},
        "is_champion": bool(version and (model or {}).get("champion_version") == version),
    }


def curves_png(name: str, run_id: str) -> bytes:
    """The loss and learning-rate curves of one run, drawn from its metrics.jsonl as it stands now."""
    import tempfile

    from airtune import tracking_report

    folder = job_folder(name, run_id)
    metrics = folder / "metrics.jsonl" if folder else None
    if metrics is None or not metrics.is_file():
        raise NotFound(f"job {name!r} run {run_id!r}: no metrics yet")
    records = []
    for line in metrics.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # the trainer is writing that line right now
    with _plot_lock, tempfile.TemporaryDirectory() as tmp:
        out = tracking_report.curves_png(records, Path(tmp) / "curves.png", title=f"{name} · {run_id}")
        if out is None:
            raise NotFound(f"job {name!r} run {run_id!r}: no loss logged yet")
        return out.read_bytes()


# --- delete ----------------------------------------------------------------------------------------

def delete(name: str, *, force: bool) -> tuple[int, str, str]:
    """`airtune delete NAME --yes [--force]` in a process of its own (it opens its own connections to
    Airflow's database and MLflow), pointed at this server's database and log folder."""
    from airflow.configuration import conf

    env = dict(os.environ)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = conf.get("database", "sql_alchemy_conn")
    env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = conf.get("logging", "base_log_folder")
    cmd = [sys.executable, "-m", "airtune.cli", "delete", name, "--yes"] + (["--force"] if force else [])
    started = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr + ("" if p.returncode == 0 else f"\n(exit {p.returncode} after {time.monotonic() - started:.0f} s)")


# --- "Try it": one prompt to the job's registered model ------------------------------------------

TRY_MAX_PROMPT = 2000  # characters
TRY_MAX_NEW_TOKENS = 256  # the default of `airtune generate` (inference.DEFAULT_MAX_NEW_TOKENS) and the most allowed
TRY_TIMEOUT_S = 120
_try_lock = threading.Lock()  # one prompt at a time in this api-server process ...
_try_current: dict = {}  # ... and what it is answering, for the "busy" answer


class TryError(Exception):
    """Why a prompt was not answered: one line for the page, and the HTTP status to send it with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _chosen_by(aliases: list[str]) -> str:
    """Why inference.find_version chose this version, for people."""
    from airtune import inference, tracking

    if inference.ALIAS_CHAMPION in aliases:
        return f"alias {inference.ALIAS_CHAMPION}, a person's choice"
    if tracking.ALIAS_BEST in aliases:
        return (f"alias {tracking.ALIAS_BEST}, the register task's choice; an alias {inference.ALIAS_CHAMPION} "
                "set in MLflow would answer instead")
    return f"the newest version; no version has alias {inference.ALIAS_CHAMPION} or {tracking.ALIAS_BEST}"


def try_target(name: str, resolved: dict | None = None) -> dict:
    """Which model version would answer a prompt on the page, and whether one can here.

    The version is the one `airtune generate` loads (inference.find_version: alias champion, else
    best, else the newest). It answers only when its job trained on location kind `local`: its files
    and base weights are on this machine. A Kubernetes job's model needs a serving deployment there.
    `resolved` is the page's run's resolved spec, used when the version's own job folder has none.

    Returns {available, version, chosen_by, location, note (why not, one line), max_new_tokens, max_prompt}.
    """
    from airtune import inference

    out = {"available": False, "version": None, "chosen_by": None, "location": None, "note": None,
           "max_new_tokens": TRY_MAX_NEW_TOKENS, "max_prompt": TRY_MAX_PROMPT, "timeout_s": TRY_TIMEOUT_S}
    try:
        v = inference.find_version(name)  # MLflow only: no torch in the api-server
    except inference.InferenceError as exc:
        return {**out, "note": f"nothing to try: {exc}"}
    except Exception as exc:  # the page shows the rest of the job all the same
        return {**out, "note": f"nothing to try: MLflow: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}"}
    out.update(version=v.version, chosen_by=_chosen_by(v.aliases),
               chosen_key=("champion" if inference.ALIAS_CHAMPION in v.aliases else "best" if "best" in v.aliases else "newest"))
    folder = inference.job_folder(v)
    spec = (_read_json(folder / "spec.json") if folder is not None else None) or resolved or {}
    location = spec.get("location")
    kind = location.get("kind") if isinstance(location, dict) else None
    out["location"] = (location.get("name") if isinstance(location, dict) else location) or None
    if kind is None and v.tags.get("image"):  # no resolved spec to read; a training image means a cluster
        kind = "kubernetes"
    if v.tags.get("stage") == "rm":
        return {**out, "note": f"version {v.version} is a reward model (stage rm): it scores answers, it does not write them"}
    if kind not in (None, "local"):
        return {**out, "note": f"trying this model needs a serving deployment on {out['location'] or kind} "
                               f"(location kind {kind}); airtune does not build one yet"}
    return {**out, "available": True}


def check_prompt(prompt, max_new_tokens) -> tuple[str, int]:
    """The prompt and token limit of a request, or TryError(400) with what is wrong."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise TryError(400, "type a prompt first")
    if len(prompt) > TRY_MAX_PROMPT:
        raise TryError(400, f"the prompt is {len(prompt):,} characters long; at most {TRY_MAX_PROMPT:,} are answered here: "
                            "shorten it")
    if "\x00" in prompt:
        raise TryError(400, "the prompt contains a NUL character")
    if max_new_tokens is None:
        max_new_tokens = TRY_MAX_NEW_TOKENS
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= TRY_MAX_NEW_TOKENS:
        raise TryError(400, f"max_new_tokens: a whole number from 1 to {TRY_MAX_NEW_TOKENS}; got {max_new_tokens!r}")
    return prompt, max_new_tokens


def _try_lock_file() -> Path:
    return paths.airtune_home() / "run" / "try-it.lock"


def _busy(holder: dict) -> TryError:
    what = f"a prompt to {holder['name']}" if holder.get("name") else "another prompt"
    since = f", for {time.time() - holder['since']:.0f} s" if isinstance(holder.get("since"), (int, float)) else ""
    return TryError(429, f"busy: the model process is answering {what}{since}; one prompt at a time; "
                         "try again when it is done")


def generate_command(name: str, version: str, prompt: str, max_new_tokens: int) -> list[str]:
    """`airtune generate` for one prompt, the version pinned (the one the page names). --prompt=TEXT:
    a prompt that starts with '-' stays a prompt."""
    return [sys.executable, "-m", "airtune.cli", "generate", name, "--version", str(version), f"--prompt={prompt}",
            "--json", "--max-new-tokens", str(max_new_tokens)]


def _error_line(stderr: str, code: int) -> str:
    """The one line that says why `airtune generate` failed: its own message, else an exception's last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith("airtune generate:")]
    if own:
        return own[-1].removeprefix("airtune generate:").strip()
    exc = [line for line in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", line)]
    last = (exc or lines or [""])[-1]
    return f"the model process failed (exit {code}){': ' + last if last else ''}"


def try_prompt(name: str, prompt: str, max_new_tokens: int = TRY_MAX_NEW_TOKENS, resolved: dict | None = None) -> dict:
    """One answer from the job's registered model, by `airtune generate --json` in a process of its own
    (torch is never imported into the api-server), at most TRY_TIMEOUT_S seconds, one at a time on this
    machine: a lock in this process, and a file lock for the api-server's other worker processes.

    Returns {answer, version, tokens, stopped, seconds}; raises TryError (busy: 429)."""
    import fcntl

    prompt, max_new_tokens = check_prompt(prompt, max_new_tokens)
    target = try_target(name, resolved)
    if not target["available"]:
        raise TryError(409, target["note"])
    if not _try_lock.acquire(blocking=False):
        raise _busy(_try_current)
    try:
        lock_path = _try_lock_file()
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+", encoding="utf-8") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                try:
                    holder = json.loads(lock.read() or "{}")
                except ValueError:
                    holder = {}
                raise _busy(holder if isinstance(holder, dict) else {}) from None
            _try_current.update(name=name, since=time.time())
            lock.seek(0)
            lock.truncate()
            lock.write(json.dumps(_try_current))
            lock.flush()
            try:
                return _run_generate(name, target["version"], prompt, max_new_tokens)
            finally:
                lock.seek(0)
                lock.truncate()
                fcntl.flock(lock, fcntl.LOCK_UN)
    finally:
        _try_current.clear()
        _try_lock.release()


def _run_generate(name: str, version: str, prompt: str, max_new_tokens: int) -> dict:
    import signal

    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "TOKENIZERS_PARALLELISM": "false"}
    started = time.monotonic()
    p = subprocess.Popen(generate_command(name, version, prompt, max_new_tokens), env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=TRY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the whole group: whatever the model process started too
        except ProcessLookupError:
            pass
        p.communicate()
        raise TryError(504, f"no answer in {TRY_TIMEOUT_S} s: the model process was stopped; try a shorter prompt") from None
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    seconds = round(time.monotonic() - started, 1)
    if p.returncode != 0:
        raise TryError(409 if p.returncode == 1 and "airtune generate:" in err else 500, _error_line(err, p.returncode))
    rows = []
    for line in out.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    row = next((r for r in reversed(rows) if isinstance(r, dict) and "answer" in r), None)
    if row is None:
        raise TryError(500, "the model process printed no answer" + (f": {_error_line(err, 0)}" if err.strip() else ""))
    return {"answer": str(row["answer"]), "version": str(row.get("version") or version), "tokens": row.get("tokens"),
            "stopped": row.get("stopped"), "seconds": seconds}


# --- monitoring (查看监控): the run's metric histories in MLflow ------------------------------------

MONITOR_POINTS = 300  # at most this many points a series (evenly thinned, the newest kept)
TRAINING_CHARTS = (("loss", ("loss", "eval_loss")), ("learning_rate", ("learning_rate",)),
                   ("tokens_per_second", ("tokens_per_second",)))
# MLflow's system-metrics monitor, with airtune's node names (tracking_callback.SystemMonitor):
# system/<node>/cpu_utilization_percentage, system_memory_usage_megabytes, gpu_<i>_utilization_percentage,
# gpu_<i>_memory_usage_megabytes
SYSTEM_KEY = re.compile(r"^system/(?P<node>[^/]+)/(?P<metric>cpu_utilization_percentage|system_memory_usage_megabytes|"
                        r"gpu_(?P<gpu>\d+)_(?:utilization_percentage|memory_usage_megabytes))$")


def _thin(points: list, most: int = MONITOR_POINTS) -> list:
    if len(points) <= most:
        return points
    step = len(points) / most
    out = [points[int(i * step)] for i in range(most - 1)]
    return out + [points[-1]]


def _find_mlflow_run(c, name: str, run_id: str):
    from airtune import tracking

    exp = c.get_experiment_by_name(tracking.experiment_name(name))
    if exp is None or exp.lifecycle_stage != "active":
        raise NotFound(f"job {name!r} has no experiment in MLflow")
    if "'" in run_id or "\\" in run_id:
        raise NotFound(f"job {name!r} has no run {run_id!r}")
    found = c.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.TAG_RUN_ID}` = '{run_id}'",
                          max_results=1, order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def monitor(name: str, run_id: str, lang: str = "en") -> dict:
    """The monitoring charts of one run: loss (and eval loss), learning rate and tokens/s by step, and
    per node CPU, memory, GPU utilisation and GPU memory over the run's time, from MLflow's histories.

    Returns {mlflow_run_id, status, charts: [{id, kind, node, title, unit, x, ymax, series: [{name,
    label, points: [[x, y], ...]}]}], notes: [...]}; a run MLflow has not heard of yet: no charts.
    """
    from airtune import tracking
    from airtune.webapp import i18n

    c = tracking.client()
    run = _find_mlflow_run(c, name, run_id)
    if run is None:
        return {"mlflow_run_id": None, "status": None, "charts": [], "notes": [i18n.text(lang, "monitor.no_run")]}
    keys = set(run.data.metrics)
    start_ms = run.info.start_time or 0

    wanted = [k for _, ks in TRAINING_CHARTS for k in ks if k in keys] + sorted(k for k in keys if SYSTEM_KEY.match(k))
    with ThreadPoolExecutor(max_workers=8) as pool:
        histories = dict(zip(wanted, pool.map(lambda k: c.get_metric_history(run.info.run_id, k), wanted)))

    def by_step(key):
        pts = {}
        for m in histories.get(key, []):
            pts[m.step] = m.value  # a retry logs a step again: its newest value
        return _thin([[s, pts[s]] for s in sorted(pts)])

    def by_time(key):
        ms = sorted(histories.get(key, []), key=lambda m: m.timestamp)
        return _thin([[round((m.timestamp - start_ms) / 1000, 1), m.value] for m in ms])

    charts = []
    for kind, ks in TRAINING_CHARTS:
        series = [{"name": k, "label": i18n.text(lang, f"series.{k}") if f"series.{k}" in i18n.MESSAGES else k,
                   "points": by_step(k)} for k in ks if k in histories]
        if series:
            charts.append({"id": kind, "kind": kind, "node": None, "title": i18n.text(lang, f"chart.{kind}"),
                           "unit": "tok/s" if kind == "tokens_per_second" else "", "x": "step", "ymax": None, "series": series})

    nodes: dict[str, dict[str, list]] = {}
    for k in sorted(histories):
        m = SYSTEM_KEY.match(k)
        if not m:
            continue
        metric, gpu = m["metric"], m["gpu"]
        kind = ("cpu" if metric.startswith("cpu") else "memory" if metric.startswith("system_memory")
                else "gpu_util" if metric.endswith("utilization_percentage") else "gpu_memory")
        label = i18n.text(lang, "series.gpu", i=gpu) if gpu is not None else m["node"]
        nodes.setdefault(m["node"], {}).setdefault(kind, []).append({"name": k, "label": label, "points": by_time(k)})
    notes = []
    units = {"cpu": "%", "memory": "MB", "gpu_util": "%", "gpu_memory": "MB"}
    for node in sorted(nodes):
        for kind in ("cpu", "memory", "gpu_util", "gpu_memory"):
            series = sorted(nodes[node].get(kind, []), key=lambda s: s["name"])
            if series:
                charts.append({"id": f"{node}-{kind}", "kind": kind, "node": node, "title": i18n.text(lang, f"chart.{kind}", node=node),
                               "unit": units[kind], "x": "time", "ymax": 100 if units[kind] == "%" else None, "series": series})
        if "gpu_util" not in nodes[node] and "gpu_memory" not in nodes[node]:
            notes.append(i18n.text(lang, "monitor.no_gpu", node=node))
    return {"mlflow_run_id": run.info.run_id, "status": run.info.status, "charts": charts, "notes": notes}
