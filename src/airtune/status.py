"""`airtune status NAME` and `airtune list`: a job's runs as Airflow and MLflow know them.

`status(name)` joins the job's DAG runs (Airflow's metadata database) with their MLflow runs (by the
Airflow tags `tracking` puts on them) and the registered model's versions: state, step of total with
percent and time left (the trainer's callback keeps the `airtune.progress` tag current), the latest
metrics, the best checkpoint, and links to the Airflow run and the MLflow run. Each source that is
not reachable is reported as such; the others are still shown.
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import quote

from airtune import paths

METRICS_SHOWN = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch")


def airflow_url() -> str:
    from airtune import localstack

    return (os.environ.get("AIRFLOW__API__BASE_URL") or f"http://127.0.0.1:{localstack.AIRFLOW_PORT}").rstrip("/")


def airflow_run_url(dag_id: str, run_id: str) -> str:
    return f"{airflow_url()}/dags/{dag_id}/runs/{quote(run_id, safe='')}"


def _iso(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):  # MLflow: milliseconds
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(value / 1000))
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def job_name_of(dag_id: str, conf: dict) -> str | None:
    """The job a DAG run belongs to: its conf names it, or the retraining DAG owns the name."""
    from airtune import jobs

    if conf.get("name"):
        return str(conf["name"])
    if dag_id.startswith(jobs.RETRAIN_PREFIX):
        return dag_id.removeprefix(jobs.RETRAIN_PREFIX)
    return None


def dag_run_row(dr) -> dict:
    """One DAG run as `airtune status`, `airtune list` and the jobs page show it."""
    return {
        "dag_id": dr.dag_id,
        "dag_run_id": dr.run_id,
        "state": str(getattr(dr.state, "value", dr.state)),
        "start": _iso(dr.start_date or dr.queued_at),
        "end": _iso(dr.end_date),
    }


def _airflow_runs(names: set[str] | None = None) -> tuple[dict[str, list[dict]], str | None]:
    """{job name: [DAG run, ...]} from Airflow; (…, error) when Airflow's database is not reachable."""
    try:
        from airtune import jobs

        with jobs.airflow_session() as session:
            out: dict[str, list[dict]] = {}
            for name, dr in jobs.job_runs(session, names):
                out.setdefault(name, []).append(dag_run_row(dr))
            return out, None
    except Exception as exc:  # status must still show what MLflow knows
        return {}, f"{type(exc).__name__}: {exc}"


def _progress(run) -> dict:
    try:
        p = json.loads(run.data.tags.get("airtune.progress") or "{}")
    except json.JSONDecodeError:
        p = {}
    if run.info.status == "FINISHED" and p.get("max_steps"):
        p.update(step=p["max_steps"], percent=100.0, eta_seconds=0)
    elif p.get("eta_seconds") is not None and p.get("updated"):
        p["eta_seconds"] = max(0.0, p["eta_seconds"] - max(0.0, time.time() - p["updated"]))  # since the trainer said it
    return p


def _mlflow(name: str) -> tuple[dict, list[dict], dict, str | None]:
    """(experiment, runs, registered model, error) from MLflow."""
    try:
        from mlflow.exceptions import MlflowException

        from airtune import tracking

        c = tracking.client()
        exp = c.get_experiment_by_name(tracking.experiment_name(name))
        experiment, runs = {}, []
        if exp is not None and exp.lifecycle_stage == "active":
            experiment = {"id": exp.experiment_id, "name": exp.name, "url": tracking.experiment_url(exp.experiment_id)}
            for run in c.search_runs([exp.experiment_id], max_results=100, order_by=["attributes.start_time DESC"]):
                metrics = run.data.metrics
                runs.append({
                    "dag_id": run.data.tags.get(tracking.TAG_DAG_ID),
                    "dag_run_id": run.data.tags.get(tracking.TAG_RUN_ID),
                    "mlflow_run_id": run.info.run_id,
                    "mlflow_status": run.info.status,
                    "mlflow_url": tracking.run_url(exp.experiment_id, run.info.run_id),
                    "start": _iso(run.info.start_time),
                    "end": _iso(run.info.end_time),
                    "progress": _progress(run),
                    "metrics": {k: metrics[k] for k in METRICS_SHOWN if k in metrics},
                    "best_checkpoint": _best_checkpoint(c, exp.experiment_id, run),
                })
        model: dict = {}
        try:
            versions = c.search_model_versions(f"name = '{name}'")
        except MlflowException:
            versions = []
        if versions:
            try:
                best = c.get_model_version_by_alias(name, tracking.ALIAS_BEST).version
            except MlflowException:
                best = None
            from airtune import promotion

            champion = promotion.champion_of(c, name)
            model = {
                "name": name,
                "best_version": str(best) if best is not None else None,
                "uri": f"models:/{name}@{tracking.ALIAS_BEST}" if best is not None else None,
                "champion_version": str(champion.version) if champion is not None else None,
                "versions": [
                    {"version": str(v.version), "run_id": v.run_id, "eval_loss": v.tags.get("eval_loss"),
                     "checkpoint": v.tags.get("checkpoint"), "url": tracking.model_version_url(name, str(v.version)),
                     # the evaluate task's figures (tags eval.<source>.<metric>) and the promotion decision
                     "evaluation": {k.removeprefix("eval."): v.tags[k] for k in sorted(v.tags)
                                    if k.startswith(("eval.tuned.", "eval.base.", "eval.champion."))},
                     "promotion": {k.removeprefix(promotion.TAG_PREFIX + "."): v.tags[k] for k in sorted(v.tags)
                                   if k.startswith(promotion.TAG_PREFIX + ".")}}
                    for v in sorted(versions, key=lambda v: int(v.version))
                ],
            }
        return experiment, runs, model, None
    except Exception as exc:
        return {}, [], {}, f"{type(exc).__name__}: {exc}"


def _best_checkpoint(c, experiment_id: str, run) -> dict | None:
    """The run's checkpoint with the lowest eval loss so far (its logged models), else its newest."""
    from airtune import tracking

    chosen = run.data.tags.get("airtune.best_checkpoint")
    models = c.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'", max_results=100)
    best = None
    for m in models:
        eval_loss = next((x.value for x in m.metrics or [] if x.key == "eval_loss"), None)
        entry = {"name": m.name, "step": int(m.tags.get(tracking.TAG_STEP, 0) or 0), "eval_loss": eval_loss, "model_id": m.model_id}
        if chosen and m.tags.get("airtune.checkpoint.path") == chosen:
            return entry
        if best is None or (eval_loss is not None and (best["eval_loss"] is None or eval_loss < best["eval_loss"])) or (
            eval_loss is None and best["eval_loss"] is None and entry["step"] > best["step"]
        ):
            best = entry
    return best


def _state(run: dict) -> str:
    if run.get("state"):
        return run["state"]
    return {"RUNNING": "running", "FINISHED": "success", "FAILED": "failed", "KILLED": "failed"}.get(run.get("mlflow_status", ""), "unknown")


def status(name: str, *, _airflow: tuple | None = None) -> dict:
    """Everything known about one job: its runs (newest first), registered model, links, folder."""
    airflow_runs, airflow_error = _airflow if _airflow is not None else _airflow_runs({name})
    experiment, mlflow_runs, model, mlflow_error = _mlflow(name)
    by_key: dict[tuple, dict] = {}
    for r in airflow_runs.get(name, []):
        by_key[(r["dag_id"], r["dag_run_id"])] = {**r, "airflow_url": airflow_run_url(r["dag_id"], r["dag_run_id"])}
    for r in mlflow_runs:
        key = (r["dag_id"], r["dag_run_id"])
        entry = by_key.setdefault(key, {"airflow_url": airflow_run_url(*key) if all(key) else None})
        for k, v in r.items():
            if k in ("start", "end") and entry.get(k):
                continue  # Airflow's times are the DAG run's own
            entry[k] = v
    versions_by_run = {v["run_id"]: v["version"] for v in model.get("versions", [])}
    runs = []
    for entry in by_key.values():
        entry["state"] = _state(entry)
        entry["model_version"] = versions_by_run.get(entry.get("mlflow_run_id"))
        entry.setdefault("progress", {})
        entry.setdefault("metrics", {})
        runs.append(entry)
    runs.sort(key=lambda r: r.get("start") or "", reverse=True)
    folder = paths.workspace() / "jobs" / name
    return {
        "name": name,
        "exists": bool(runs or experiment or model or folder.exists()),
        "runs": runs,
        "experiment": experiment,
        "registered_model": model,
        "workspace": str(folder) if folder.exists() else None,
        "errors": {k: v for k, v in {"airflow": airflow_error, "mlflow": mlflow_error}.items() if v},
    }


def list_jobs() -> list[dict]:
    """One line's worth per job: every name Airflow, MLflow or the workspace knows."""
    airflow = _airflow_runs(None)
    names = set(airflow[0])
    try:
        from airtune import tracking

        c = tracking.client()
        for exp in c.search_experiments(filter_string="name LIKE 'airtune/%'", max_results=1000):
            job = exp.name.removeprefix("airtune/")
            if "/" not in job and ".deleted-" not in job:
                names.add(job)
    except Exception:
        pass
    jobs_dir = paths.workspace() / "jobs"
    if jobs_dir.is_dir():
        names |= {p.name for p in jobs_dir.iterdir() if p.is_dir()}
    out = []
    for name in sorted(names):
        s = status(name, _airflow=airflow)
        latest = s["runs"][0] if s["runs"] else {}
        best = [v for v in s["registered_model"].get("versions", []) if v["version"] == s["registered_model"].get("best_version")]
        out.append({
            "name": name,
            "runs": len(s["runs"]),
            "state": latest.get("state", "—"),
            "progress": latest.get("progress", {}),
            "started": latest.get("start"),
            "eval_loss": latest.get("metrics", {}).get("eval_loss"),
            "versions": len(s["registered_model"].get("versions", [])),
            "best_version": s["registered_model"].get("best_version"),
            "best_eval_loss": best[0]["eval_loss"] if best else None,
            "airflow_url": latest.get("airflow_url"),
            "mlflow_url": latest.get("mlflow_url"),
            "errors": s["errors"],
        })
    return out


# --- printing ----------------------------------------------------------------------------------

def format_duration(seconds, *, missing: str = "?", sep: str = "") -> str:
    """1h05m, 3m07s, 42s (`sep` between the parts; `missing` for None): the CLI's and the jobs page's."""
    if seconds is None:
        return missing
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{sep}{m:02d}m" if h else (f"{m}m{sep}{s:02d}s" if m else f"{s}s")



def _num(v) -> str:
    if not isinstance(v, (int, float)):
        return str(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.3g}"
    return f"{v:,.4g}"


def progress_text(p: dict) -> str:
    if not p.get("max_steps"):
        return "—"
    text = f"step {p.get('step', 0)} of {p['max_steps']} ({p.get('percent') or 0:.0f}%)"
    if p.get("eta_seconds") and (p.get("percent") or 0) < 100:
        text += f", about {format_duration(p['eta_seconds'])} left"
    return text


def format_status(info: dict) -> str:
    name = info["name"]
    if not info["exists"]:
        return f"no job named {name!r}" + "".join(f"\n  ({src} not reachable: {err})" for src, err in info["errors"].items())
    lines = [f"job {name}"]
    if info["experiment"]:
        lines.append(f"  MLflow experiment  {info['experiment']['url']}")
    model = info["registered_model"]
    if model:
        best = next((v for v in model["versions"] if v["version"] == model.get("best_version")), None)
        text = f"  registered model   {name}: {len(model['versions'])} version(s)"
        if best:
            text += f", best = version {best['version']} (eval loss {best['eval_loss'] or '—'}, {model['uri']})"
        lines.append(text)
        champion = next((v for v in model["versions"] if v["version"] == model.get("champion_version")), None)
        if champion:
            figures = ", ".join(f"{k.removeprefix('tuned.')} {v}" for k, v in champion.get("evaluation", {}).items()
                                if k.startswith("tuned.") and "/" not in k)
            lines.append(f"  champion           version {champion['version']} (models:/{name}@champion)"
                         + (f": {figures}" if figures else ""))
        else:
            lines.append("  champion           none (no version promoted yet)")
        latest = model["versions"][-1] if model["versions"] else None
        if latest and latest.get("promotion"):
            lines.append(f"  newest version {latest['version']}: {latest['promotion'].get('outcome', '?')}: "
                         f"{latest['promotion'].get('reason', '')}")
    if info["workspace"]:
        lines.append(f"  files              {info['workspace']}")
    for src, err in info["errors"].items():
        lines.append(f"  ({src} not reachable: {err})")
    if not info["runs"]:
        lines.append("  no runs")
    for r in info["runs"]:
        lines.append("")
        lines.append(f"run {r.get('dag_run_id') or r.get('mlflow_run_id')}  [{r['state']}]  started {r.get('start') or '?'}")
        lines.append(f"  progress   {progress_text(r['progress'])}")
        if r["metrics"]:
            lines.append("  metrics    " + "  ".join(f"{k} {_num(v)}" for k, v in r["metrics"].items()))
        b = r.get("best_checkpoint")
        if b:
            loss = f"eval loss {_num(b['eval_loss'])}" if b.get("eval_loss") is not None else "no eval loss"
            lines.append(f"  best       {b['name']} (step {b['step']}, {loss})")
        if r.get("model_version"):
            lines.append(f"  version    {name} version {r['model_version']}")
        if r.get("airflow_url"):
            lines.append(f"  Airflow    {r['airflow_url']}")
        if r.get("mlflow_url"):
            lines.append(f"  MLflow     {r['mlflow_url']}")
    return "\n".join(lines)


def format_list(jobs: list[dict]) -> str:
    if not jobs:
        return "no jobs"
    rows = [("NAME", "STATE", "PROGRESS", "EVAL LOSS", "VERSIONS", "STARTED")]
    for j in jobs:
        versions = str(j["versions"]) + (f" (best v{j['best_version']})" if j.get("best_version") else "")
        rows.append((
            j["name"], j["state"], progress_text(j["progress"]),
            _num(j["eval_loss"]) if j.get("eval_loss") is not None else "—",
            versions, (j.get("started") or "—")[:19],
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
