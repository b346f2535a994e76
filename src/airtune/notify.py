"""Notifications (docs/notifications.md): a job's `notify` connections told when it succeeds, fails or
waits for approval, through Airflow's notifier providers (no sender of airtune's own).

`notify` names Airflow connections (the job's, else its location's `notify` in locations.yaml). Each
connection's type picks the provider's notifier:

    smtp     airflow.providers.smtp   SmtpNotifier     an e-mail; recipients from the connection's extra:
                                                       {"to": [...], "cc": [...], "bcc": [...], "from_email": ...}
    apprise  airflow.providers.apprise AppriseNotifier chat services (Slack, Teams, Telegram, ...): the
                                                       connection's Apprise config; extra "tag" optional
    http     airflow.providers.http   HttpNotifier     a webhook: a JSON POST to the connection's URL

The DAG-level `on_success_callback` / `on_failure_callback` are fixed when the DAG is parsed, while
`notify` is per run: `dag_callback()` is that one callback; it reads the run's resolved spec (the job
folder's spec.json, found from the run's conf and id) and calls the notifier of each connection. The
approval task (airtune.promotion_task) builds its `notifiers` with `notifiers()` when it runs.

A message: the job's name, its outcome (succeeded / failed, with the failed task / waits for approval),
its key numbers (final eval loss, the evaluate task's tuned vs base promote_metric, the registered version
and whether it became champion) and a link to the job's page. No secret: the connection's password is
never read here, and every text goes through airtune.redact.

Cheap to import (standard library and airtune.spec): the DAG files name `dag_callback` at parse time.
"""

from __future__ import annotations

import functools
import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

# connection type -> (provider package, what it sends)
PROVIDERS: dict[str, tuple[str, str]] = {
    "smtp": ("apache-airflow-providers-smtp", "e-mail (recipients in the connection's extra: {\"to\": [...]})"),
    "apprise": ("apache-airflow-providers-apprise", "Apprise (chat services)"),
    "http": ("apache-airflow-providers-http", "a webhook (JSON POST to the connection's URL)"),
}
SUCCEEDED, FAILED, WAITING = "succeeded", "failed", "waits for approval"
JOBS_PAGE = "/airtune/jobs/"


def accepted_types() -> str:
    return ", ".join(PROVIDERS)


# -- connections ----------------------------------------------------------------------------------


def get_connection(conn_id: str):
    """The Airflow connection (the SDK's lookup: in a task, through the API server; in the api-server, the
    metadata database; anywhere, AIRFLOW_CONN_<ID> and the secrets backends)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        import os

        if _in_task() or os.environ.get("_AIRFLOW_PROCESS_CONTEXT") == "server":  # the SDK looked everywhere
            raise
    # Outside a task and the api-server (`airtune validate`, `airtune run` before the run starts), the SDK
    # looks in no metadata database: a connection made in the UI is there (the embedded default's own
    # unless the environment names another).
    from airtune import localstack

    if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in os.environ:
        localstack.apply()
        from airflow import settings

        settings.configure_vars()  # Airflow read its settings before: the embedded default's database now
        settings.configure_orm()
        _embedded_fernet_key()
    from airflow.secrets.metastore import MetastoreBackend

    conn = MetastoreBackend().get_connection(conn_id)
    if conn is None:
        raise AirflowNotFoundException(f"The conn_id `{conn_id}` isn't defined")
    return conn


def _embedded_fernet_key() -> None:
    """The embedded default's Fernet key (Airflow wrote it to its airflow.cfg), which encrypts the extras
    of connections made in its UI."""
    import configparser
    import os

    from airtune import localstack

    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(localstack.airflow_home() / "airflow.cfg")
    key = cfg.get("core", "fernet_key", fallback="")
    if key and not os.environ.get("AIRFLOW__CORE__FERNET_KEY"):
        os.environ["AIRFLOW__CORE__FERNET_KEY"] = key
        from airflow.models import crypto

        crypto.get_fernet.cache_clear()


def _in_task() -> bool:
    try:
        from airflow.sdk.execution_time import task_runner

        return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None
    except ImportError:
        return False


def recipients(conn) -> dict[str, list[str]]:
    """An smtp connection's recipients: its extra's to / cc / bcc (a list, or addresses separated by commas)."""
    extra = conn.extra_dejson or {}
    out = {}
    for key in ("to", "cc", "bcc"):
        value = extra.get(key)
        if isinstance(value, str):
            value = [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
        out[key] = [str(v) for v in value or []]
    return out


def check_connections(conn_ids, lookup: Callable[[str], Any] | None = None) -> list[tuple[str, str]]:
    """(connection id, what is wrong) for each id that is not a connection of a supported type: what
    validate reports, naming the field notify. One look-up per id."""
    lookup = lookup or get_connection
    problems = []
    for conn_id in conn_ids:
        try:
            conn = lookup(conn_id)
        except Exception:  # AirflowNotFoundException, or no way to reach the connections at all
            problems.append((conn_id, "no Airflow connection has this id (Admin ▸ Connections, or an "
                                      f"AIRFLOW_CONN_{conn_id.upper().replace('.', '_').replace('-', '_')} "
                                      f"variable); accepted: the id of a connection of type {accepted_types()}"))
            continue
        kind = (conn.conn_type or "").lower()
        try:
            to = recipients(conn)["to"] if kind == "smtp" else None
        except Exception as exc:  # e.g. an encrypted extra this process has no Fernet key for
            from airtune import redact

            problems.append((conn_id, f"its extra cannot be read here ({redact.text(str(exc))})"))
            continue
        if kind not in PROVIDERS:
            problems.append((conn_id, f"its type is {conn.conn_type!r}, which no notifier airtune uses sends to; "
                                      f"accepted: a connection of type {accepted_types()}"))
        elif kind == "smtp" and not to:
            problems.append((conn_id, "an smtp connection names its recipients in its extra, e.g. "
                                      "{\"to\": [\"team@example.com\"]}; this one has none"))
    return problems


# -- the message ----------------------------------------------------------------------------------


@dataclass
class Message:
    name: str
    outcome: str  # SUCCEEDED, FAILED, WAITING
    link: str
    lines: list[str] = field(default_factory=list)  # "key: value", the key numbers
    extra_link: str | None = None  # the Required Actions page of an approval
    data: dict = field(default_factory=dict)  # the webhook's JSON

    @property
    def subject(self) -> str:
        from airtune import redact

        return redact.text(f"airtune: job {self.name} {self.outcome}")

    @property
    def text(self) -> str:
        from airtune import redact

        body = [f"Job {self.name} {self.outcome}.", "", *self.lines, "", f"Job page: {self.link}"]
        if self.extra_link:
            body.append(f"Answer in Required Actions: {self.extra_link}")
        return redact.text("\n".join(body))

    @property
    def html(self) -> str:
        from airtune import redact

        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                       for k, _, v in (line.partition(": ") for line in self.lines))
        links = f'<p><a href="{html.escape(self.link)}">Job page: {html.escape(self.link)}</a></p>'
        if self.extra_link:
            links += (f'<p><a href="{html.escape(self.extra_link)}">Answer in Required Actions: '
                      f'{html.escape(self.extra_link)}</a></p>')
        return redact.text(f"<p>Job <b>{html.escape(self.name)}</b> {html.escape(self.outcome)}.</p>"
                           f"<table>{rows}</table>{links}")

    @property
    def payload(self) -> dict:
        from airtune import redact

        return redact.value({"job": self.name, "outcome": self.outcome, "link": self.link,
                             "required_actions": self.extra_link, "text": self.text, **self.data})


def base_url() -> str:
    """Airflow's [api] base_url (where the jobs page is served), without a trailing slash."""
    try:
        from airflow.configuration import conf

        url = conf.get("api", "base_url", fallback=None)
    except Exception:
        url = None
    from airtune import redact

    return redact.url((url or "http://localhost:8080").rstrip("/"))


def job_link(name: str) -> str:
    return f"{base_url()}{JOBS_PAGE}{name}"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def key_numbers(job_dir: Path | None, spec: Mapping) -> tuple[list[str], dict]:
    """The job's key numbers as "key: value" lines, and the same as data (what exists so far)."""
    lines, data = [], {}
    if job_dir is None:
        return lines, data
    result = _read(job_dir / "result.json")
    if result.get("eval_loss") is not None:
        lines.append(f"Final eval loss: {_num(result['eval_loss'])}")
        data["eval_loss"] = result["eval_loss"]
    elif result.get("train_loss_last") is not None:
        lines.append(f"Final train loss: {_num(result['train_loss_last'])}")
        data["train_loss"] = result["train_loss_last"]
    ev = _read(job_dir / "evaluation" / "evaluation.json")
    metric = spec.get("promote_metric") or "eval_loss"
    tuned, base = (ev.get("tuned") or {}).get(metric), (ev.get("base") or {}).get(metric)
    if tuned is not None or base is not None:
        lines.append(f"Evaluation ({metric}): tuned {_num(tuned)} vs base {_num(base)}")
        data["evaluation"] = {"metric": metric, "tuned": tuned, "base": base}
    registered = _read(job_dir / "registered.json")
    if registered.get("model_version") is not None:
        version = registered["model_version"]
        promotion = _read(job_dir / "promotion.json")
        if promotion:
            champion = "yes" if promotion.get("promoted") else (
                f"no (version {promotion['champion_version']} stays)" if promotion.get("champion_version") else "no")
        else:
            champion = "not decided yet"
        lines.append(f"Registered: {registered.get('registered_model') or spec.get('name')} version {version}")
        lines.append(f"Champion: {champion}")
        data.update(model_version=str(version), champion=bool(promotion.get("promoted")))
    return lines, data


def message(name: str, outcome: str, *, job_dir: Path | None, spec: Mapping | None = None,
            failed_task: str | None = None, run_id: str | None = None, extra_link: str | None = None) -> Message:
    lines, data = key_numbers(job_dir, spec or {})
    if failed_task:
        lines.insert(0, f"Failed task: {failed_task}")
        data["failed_task"] = failed_task
    if run_id:
        lines.append(f"DAG run: {run_id}")
        data["run_id"] = run_id
    return Message(name=name, outcome=outcome, link=job_link(name), lines=lines, extra_link=extra_link, data=data)


# -- notifiers ------------------------------------------------------------------------------------


def _safe(conn_id: str, send):
    """A notifier's send that logs a failure instead of raising: one connection that cannot be reached
    never fails the task (the approval) or keeps the others from being told."""
    @functools.wraps(send)
    def notify(context):
        try:
            return send(context)
        except Exception as exc:
            from airtune import redact

            log.warning("notify: connection %s: sending failed: %s", conn_id, redact.text(str(exc)))
    return notify


def notifier_for(conn_id: str, msg: Message, conn=None):
    """The provider's notifier for one connection, by its type (None: a type no provider here sends to)."""
    conn = conn if conn is not None else get_connection(conn_id)
    kind = (conn.conn_type or "").lower()
    extra = conn.extra_dejson or {}
    if kind == "smtp":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        r = recipients(conn)
        notifier = SmtpNotifier(to=r["to"], cc=r["cc"] or None, bcc=r["bcc"] or None,
                                from_email=extra.get("from_email") or None, subject=msg.subject,
                                html_content=msg.html, smtp_conn_id=conn_id)
    elif kind == "apprise":
        from apprise import NotifyType

        from airflow.providers.apprise.notifications.apprise import AppriseNotifier

        kinds = {SUCCEEDED: NotifyType.SUCCESS, FAILED: NotifyType.FAILURE, WAITING: NotifyType.INFO}
        notifier = AppriseNotifier(body=msg.text, title=msg.subject, notify_type=kinds[msg.outcome],
                                   tag=extra.get("tag") or "all", apprise_conn_id=conn_id)
    elif kind == "http":
        from airflow.providers.http.notifications.http import HttpNotifier

        notifier = HttpNotifier(http_conn_id=conn_id, json=msg.payload,
                                headers={"Content-Type": "application/json"})
    else:
        log.warning("notify: connection %s has type %r; accepted: %s", conn_id, conn.conn_type, accepted_types())
        return None
    notifier.notify = _safe(conn_id, notifier.notify)
    return notifier


def notifiers(conn_ids, msg: Message) -> list:
    out = []
    for conn_id in conn_ids or ():
        try:
            n = notifier_for(conn_id, msg)
        except Exception as exc:  # the connection went away since validate
            log.warning("notify: connection %s: %s", conn_id, exc)
            continue
        if n is not None:
            out.append(n)
    return out


def send(conn_ids, msg: Message, context: Mapping | None = None) -> int:
    """Tell every connection; how many notifiers were called."""
    sent = 0
    for n in notifiers(conn_ids, msg):
        n(dict(context or {}))
        sent += 1
    log.info("notify: %s %s: told %d connection(s): %s", msg.name, msg.outcome, sent, ", ".join(conn_ids))
    return sent


# -- the DAG callback -----------------------------------------------------------------------------

# when the run failed in cleanup (the teardown that fails a run whose job did not finish), the task
# that stopped it, from what the job folder holds
_STAGES = (("spec.json", "validate"), ("data", "prepare_dataset"), ("result.json", "train"),
           ("registered.json", "register"))


def _failed_stage(job_dir: Path | None) -> str | None:
    if job_dir is None:
        return "validate"
    for name, stage in _STAGES:
        if not (job_dir / name).exists():
            return stage
    return None


def _conf(context: Mapping) -> dict:
    dag_run = context.get("dag_run")
    conf = getattr(dag_run, "conf", None) if dag_run is not None else None
    return dict(conf or {})


def run_job(context: Mapping, job: Mapping | None = None) -> tuple[str | None, Path | None, dict, list[str]]:
    """(name, job folder, resolved spec's spec, notify) of the run a callback is for. The resolved spec
    when validate wrote it; else the job as given (its notify, or its location's default)."""
    from airtune import paths

    given = dict(job) if job is not None else {**dict(context.get("params") or {}), **_conf(context)}
    name = given.get("name")
    run_id = context.get("run_id") or getattr(context.get("dag_run"), "run_id", None)
    if not name or not run_id:
        return None, None, {}, []
    job_dir = paths.job_dir(str(name), str(run_id))
    resolved = _read(job_dir / "spec.json")
    if resolved.get("spec"):
        spec = resolved["spec"]
        return spec["name"], job_dir, spec, list(spec.get("notify") or [])
    # validate refused the job: its notify as given, if it reads as one, else its location's
    from airtune import form, spec as job_spec

    parsed, _, bad = job_spec.parse_partial(form.conf_to_mapping(given))
    ids = list(parsed.notify or []) if "notify" not in bad else []
    if not ids:
        try:
            from airtune.catalog import Catalog

            location = Catalog.load().locations.get(parsed.location)
            ids = list(location.notify) if location else []
        except Exception:
            ids = []
    return str(name), (job_dir if job_dir.is_dir() else None), {"name": name}, ids


def on_run_end(context: Mapping, job: Mapping | None = None) -> int:
    """The DAG's on_success_callback and on_failure_callback: notify the run's connections."""
    name, job_dir, spec, ids = run_job(context, job)
    if not ids:
        return 0
    dag_run = context.get("dag_run")
    state = str(getattr(dag_run, "state", "") or "")
    reason = str(context.get("reason") or "")
    # dag.test() and the DAG processor give the reason ("success", "task_failure", "timed_out", ...)
    failed = reason != "success" if reason else "fail" in state
    failed_task = None
    if failed:
        ti = context.get("ti") or context.get("task_instance")
        failed_task = getattr(ti, "task_id", None)
        if failed_task in (None, "cleanup"):
            stage = _failed_stage(job_dir if (job_dir and (job_dir / "spec.json").exists()) else None)
            failed_task = f"{stage} (the job did not finish)" if stage else failed_task
    msg = message(name, FAILED if failed else SUCCEEDED, job_dir=job_dir, spec=spec, failed_task=failed_task,
                  run_id=context.get("run_id"))
    return send(ids, msg, context)


# Set by `airtune run` (airtune.runner) in its own process: Airflow 3.3.2's dag.test() cannot build a DAG
# callback's context for a DAG with a required param (it validates the serialized task's params without
# the run's conf, and the run crashes), so under it the DAG files declare no callback and the runner
# calls on_run_end itself when dag.test() returns.
RUNNER_NOTIFIES = "AIRTUNE_RUNNER_NOTIFIES"


def dag_callbacks(job: Mapping | None = None) -> dict:
    """The @dag keyword arguments: the one callback as on_success_callback and on_failure_callback
    (none under `airtune run`, whose runner notifies)."""
    import os

    if os.environ.get(RUNNER_NOTIFIES):
        return {}
    callback = dag_callback(job)
    return {"on_success_callback": callback, "on_failure_callback": callback}


def after_test_run(dag_run, conf: Mapping) -> int:
    """`airtune run`: what the DAG callback does, once dag.test() has returned the finished run."""
    state = str(getattr(dag_run.state, "value", dag_run.state))
    failed = [ti for ti in dag_run.get_task_instances() if str(getattr(ti.state, "value", ti.state)) == "failed"]
    last = max(failed, key=lambda ti: (ti.end_date is not None, ti.end_date), default=None)
    context = {"dag_run": dag_run, "run_id": dag_run.run_id, "params": dict(conf),
               "reason": "success" if state == "success" else "task_failure", "ti": last}
    try:
        return on_run_end(context)
    except Exception:  # a notification never changes a run's outcome
        log.exception("notify: the run's notifications failed")
        return 0


def dag_callback(job: Mapping | None = None) -> Callable[[Mapping], None]:
    """The one callback a DAG gives as on_success_callback and on_failure_callback (job: a retraining
    DAG's fixed job; None: the run's params)."""
    def airtune_notify(context):
        try:
            on_run_end(context, job)
        except Exception:  # a notification never changes a run's outcome
            log.exception("notify: the run's notifications failed")
    return airtune_notify


def approval_notifiers(job: Mapping, spec: Mapping, required_actions: str | None) -> list:
    """The approve task's notifiers: the job waits for a person (linking to the Required Actions page)."""
    ids = list(spec.get("notify") or [])
    if not ids:
        return []
    msg = message(spec["name"], WAITING, job_dir=Path(job["job_dir"]) if job.get("job_dir") else None, spec=spec,
                  extra_link=required_actions)
    return notifiers(ids, msg)
