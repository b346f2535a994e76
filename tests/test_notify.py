"""airtune.notify: `notify` checked by validate, the notifier picked by the connection's type, a
location's default, the message (no secret), the DAG callback and the approval task's notifiers.

Connections are given as AIRFLOW_CONN_<ID> variables (JSON), which Airflow's SDK looks up first."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from airtune import notify
from airtune.catalog import Catalog, LocationError, location_entry
from airtune.resolve import validate_mapping
from airtune.spec import SpecError, parse

BASE = {"name": "demo-job", "base_model": "tiny-llama-dev", "dataset": "identity"}
NO_GPU = {"cuda_devices": 0, "bf16": False, "flash_attn": False, "eetq": False, "gpu_memory_gib": None}
SECRET = "hunter2-sk-abcdefghijklmnopqrstuv"


def _conn(monkeypatch, conn_id: str, **fields):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


@pytest.fixture(autouse=True)
def in_a_task(monkeypatch):
    """As in the validate task: the SDK's look-up only (the CLI's fallback to the embedded default's
    metadata database would change this process's environment)."""
    monkeypatch.setattr(notify, "_in_task", lambda: True)


@pytest.fixture
def conns(monkeypatch):
    _conn(monkeypatch, "team_mail", conn_type="smtp", host="127.0.0.1", port=2525, password=SECRET,
          extra={"to": ["team@example.com"], "from_email": "airtune@example.com", "disable_ssl": True})
    _conn(monkeypatch, "hook", conn_type="http", host="127.0.0.1", port=9, schema="http", password=SECRET)
    _conn(monkeypatch, "chat", conn_type="apprise", extra={"config": {"path": "json://127.0.0.1:9/"}})
    _conn(monkeypatch, "db", conn_type="postgres", host="127.0.0.1")
    _conn(monkeypatch, "mail_nobody", conn_type="smtp", host="127.0.0.1")


def _errors(job, catalog=None) -> list:
    with pytest.raises(SpecError) as info:
        validate_mapping(job, catalog, hardware=NO_GPU)
    return info.value.errors


# -- the field and validate -----------------------------------------------------------------------


def test_notify_parses_as_a_list_of_connection_ids():
    assert parse({**BASE, "notify": "team_mail, hook"}).notify == ["team_mail", "hook"]
    assert parse({**BASE, "notify": ["a.b-c_1"]}).notify == ["a.b-c_1"]
    assert parse(BASE).notify is None
    with pytest.raises(SpecError, match="notify: .* Airflow connection ids"):
        parse({**BASE, "notify": ["team mail"]})
    with pytest.raises(SpecError, match="given twice"):
        parse({**BASE, "notify": "a, a"})


def test_validate_accepts_known_connections_of_supported_types(conns):
    resolved = validate_mapping({**BASE, "notify": ["team_mail", "hook", "chat"]}, hardware=NO_GPU)
    assert resolved["spec"]["notify"] == ["team_mail", "hook", "chat"]
    assert validate_mapping(BASE, hardware=NO_GPU)["spec"]["notify"] is None


def test_validate_refuses_an_unknown_connection_naming_the_field(conns):
    errors = _errors({**BASE, "notify": ["team_mail", "nowhere"]})
    assert [(e.field, e.value) for e in errors] == [("notify", "nowhere")]
    text = str(errors[0])
    assert text.startswith("notify: 'nowhere' is not accepted: no Airflow connection has this id")
    assert "smtp, apprise, http" in text


def test_validate_refuses_an_unsupported_type_and_an_smtp_without_recipients(conns):
    errors = _errors({**BASE, "notify": ["db", "mail_nobody"]})
    assert [(e.field, e.value) for e in errors] == [("notify", "db"), ("notify", "mail_nobody")]
    assert "its type is 'postgres'" in str(errors[0]) and "smtp, apprise, http" in str(errors[0])
    assert '{"to": ["team@example.com"]}' in str(errors[1])


def test_no_connection_is_looked_up_without_notify(monkeypatch):
    def boom(conn_id):
        raise AssertionError("looked up " + conn_id)
    monkeypatch.setattr(notify, "get_connection", boom)
    validate_mapping(BASE, hardware=NO_GPU)


# -- a location's default -------------------------------------------------------------------------


def _catalog_with_local_notify(ids) -> Catalog:
    catalog = Catalog.load()
    local = dataclasses.replace(catalog.locations["local"], notify=tuple(ids))
    return dataclasses.replace(catalog, locations={**catalog.locations, "local": local})


def test_a_locations_default_notify_applies_when_the_job_gives_none(conns):
    catalog = _catalog_with_local_notify(["team_mail"])
    assert validate_mapping(BASE, catalog, hardware=NO_GPU)["spec"]["notify"] == ["team_mail"]
    # the job's own list replaces the location's
    assert validate_mapping({**BASE, "notify": ["hook"]}, catalog, hardware=NO_GPU)["spec"]["notify"] == ["hook"]
    errors = _errors(BASE, _catalog_with_local_notify(["gone"]))
    assert errors[0].field == "notify" and "the default notify of location local" in str(errors[0])


def test_locations_yaml_takes_notify_on_either_kind():
    gpu = {"cpu": {"gpus_per_node": 0, "memory_gib": 0, "bf16": False}}
    assert location_entry("here", {"kind": "local", "gpu_types": gpu, "notify": ["a", "b.c"]}).notify == ("a", "b.c")
    assert location_entry("here", {"kind": "local", "gpu_types": gpu}).notify == ()
    with pytest.raises(LocationError, match="here: notify"):
        location_entry("here", {"kind": "local", "gpu_types": gpu, "notify": ["not an id"]})


# -- the notifiers and the message ----------------------------------------------------------------


def _message(tmp_path: Path | None = None, outcome=notify.SUCCEEDED) -> notify.Message:
    return notify.message("demo-job", outcome, job_dir=tmp_path, spec={"name": "demo-job"})


def test_the_notifier_is_picked_by_the_connections_type(conns):
    from airflow.providers.apprise.notifications.apprise import AppriseNotifier
    from airflow.providers.http.notifications.http import HttpNotifier
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    got = notify.notifiers(["team_mail", "hook", "chat", "db"], _message())
    assert [type(n) for n in got] == [SmtpNotifier, HttpNotifier, AppriseNotifier]  # postgres: none
    mail, hook, _ = got
    assert mail.to == ["team@example.com"] and mail.smtp_conn_id == "team_mail"
    assert mail.from_email == "airtune@example.com"
    assert hook.http_conn_id == "hook" and hook.json["job"] == "demo-job" and hook.json["outcome"] == "succeeded"


def test_the_message_carries_the_key_numbers_and_the_link_and_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://admin:pw@airflow.example.com/")
    (tmp_path / "result.json").write_text(json.dumps({"eval_loss": 1.23456}))
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "evaluation.json").write_text(
        json.dumps({"tuned": {"rouge-l": 0.5}, "base": {"rouge-l": 0.25}}))
    (tmp_path / "registered.json").write_text(json.dumps({"model_version": "3", "registered_model": "demo-job",
                                                          "hub_token": "hf_abcdefghijklmnopqrstuvwx"}))
    (tmp_path / "promotion.json").write_text(json.dumps({"promoted": True, "champion_version": "3"}))
    msg = notify.message("demo-job", notify.SUCCEEDED, job_dir=tmp_path,
                         spec={"name": "demo-job", "promote_metric": "rouge-l"}, run_id="manual__x")
    assert msg.subject == "airtune: job demo-job succeeded"
    for text in (msg.text, msg.html, json.dumps(msg.payload)):
        assert "https://airflow.example.com/airtune/jobs/demo-job" in text
        assert "1.235" in text and "tuned 0.5 vs base 0.25" in text and "version 3" in text
        assert "pw@" not in text and "hf_" not in text
    assert "Champion: yes" in msg.text


def test_a_failing_notifier_does_not_raise(conns, monkeypatch):
    (mail,) = notify.notifiers(["team_mail"], _message())
    mail(dict())  # nothing listens on 127.0.0.1:2525: logged, not raised


# -- the DAG callback -----------------------------------------------------------------------------


class _Run:
    def __init__(self, conf, state):
        self.conf, self.state, self.run_id = conf, state, "manual__1"


class _TI:
    task_id = "cleanup"


def _job_folder(monkeypatch, tmp_path, notify_ids) -> Path:
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(tmp_path))
    folder = tmp_path / "jobs" / "demo-job" / "manual__1"
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"spec": {"name": "demo-job", "notify": notify_ids}}))
    return folder


def test_the_callback_reads_the_runs_resolved_spec_and_tells_each_connection(conns, monkeypatch, tmp_path):
    _job_folder(monkeypatch, tmp_path, ["team_mail", "hook"])
    told = []
    monkeypatch.setattr(notify, "notifier_for",
                        lambda conn_id, msg, conn=None: (lambda ctx: told.append((conn_id, msg))))
    callback = notify.dag_callback()
    # the run failed in cleanup (the teardown): the message names the stage that stopped it
    callback({"dag_run": _Run({"name": "demo-job"}, "failed"), "run_id": "manual__1", "reason": "task_failure",
              "ti": _TI()})
    assert [c for c, _ in told] == ["team_mail", "hook"]
    msg = told[0][1]
    assert msg.outcome == "failed" and "Failed task: prepare_dataset (the job did not finish)" in msg.text
    told.clear()
    callback({"dag_run": _Run({"name": "demo-job"}, "success"), "run_id": "manual__1", "reason": "success"})
    assert [m.outcome for _, m in told] == ["succeeded", "succeeded"]


def test_the_callback_does_nothing_without_notify(monkeypatch, tmp_path):
    _job_folder(monkeypatch, tmp_path, None)
    monkeypatch.setattr(notify, "notifier_for", lambda *a, **k: pytest.fail("no notify: no notifier"))
    assert notify.on_run_end({"dag_run": _Run({"name": "demo-job"}, "success"), "run_id": "manual__1",
                              "reason": "success"}) == 0


# -- the approval task ----------------------------------------------------------------------------


def test_the_approval_task_builds_its_notifiers_from_the_jobs_notify(conns, monkeypatch, tmp_path):
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier
    from airflow.providers.standard.operators.hitl import HITLOperator

    from airtune import pipeline
    from airtune.promotion_task import PromotionApproval

    folder = _job_folder(monkeypatch, tmp_path, ["team_mail"])
    monkeypatch.setattr(pipeline, "comparison_markdown", lambda job: "| metric |")
    monkeypatch.setattr(HITLOperator, "execute", lambda self, context: "waiting")
    op = PromotionApproval(task_id="approve", airtune_job={})
    op.airtune_job = {"job_dir": str(folder), "model_version": "2"}
    assert op.execute({"task_instance": None}) == "waiting"
    assert [type(n) for n in op.notifiers] == [SmtpNotifier]
    (mail,) = op.notifiers
    assert mail.to == ["team@example.com"] and mail.subject == "airtune: job demo-job waits for approval"
    assert "/airtune/jobs/demo-job" in mail.html_content and SECRET not in mail.html_content


def test_the_dags_declare_the_one_callback_except_under_airtune_run(monkeypatch):
    monkeypatch.delenv(notify.RUNNER_NOTIFIES, raising=False)
    callbacks = notify.dag_callbacks()
    assert set(callbacks) == {"on_success_callback", "on_failure_callback"}
    assert callbacks["on_success_callback"] is callbacks["on_failure_callback"]
    # dag.test() cannot build a callback's context for a DAG with a required param: the runner notifies
    monkeypatch.setenv(notify.RUNNER_NOTIFIES, "1")
    assert notify.dag_callbacks() == {}
