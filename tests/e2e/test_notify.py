"""notify end to end: a real SMTP server on 127.0.0.1 (aiosmtpd) and real DAG runs (`airtune run` of a
tiny job on the embedded default). The job names an smtp connection (an AIRFLOW_CONN_<ID> variable);
the DAG's one callback reads the run's resolved spec and sends through Airflow's SmtpNotifier: exactly
one message per job end (a success, then a failure), with the job's name and its page's link, and
not the connection's password."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import subprocess
import sys
import time

import pytest
import yaml

from .conftest import REPO, airtune_env

pytestmark = pytest.mark.slow

SECRET = "sk-notifyE2Esecret0123456789abcdef"


class _Inbox:
    def __init__(self, folder=None):
        self.messages: list[email.message.EmailMessage] = []
        self.folder = folder  # each message as received, for a person to read

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler hook
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.messages.append(msg)
        if self.folder is not None:
            (self.folder / f"message-{len(self.messages)}.eml").write_bytes(envelope.content)
        return "250 OK"


def _text(msg) -> str:
    parts = [str(msg)]  # the raw message, headers included
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            parts.append(part.get_content())
    return "\n".join(parts)


@pytest.fixture
def smtp_server(tmp_path):
    from aiosmtpd.controller import Controller

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = _Inbox(tmp_path)
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def _job(tmp_path, name: str, **overrides):
    job = yaml.safe_load((REPO / "examples" / "tiny.yaml").read_text())
    job.update({"name": name, "max_samples": 48, "cutoff_len": 128, "save_steps": 10, "logging_steps": 2,
                "eval_max_samples": 2, "notify": ["team_mail"]}, **overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _run(job_file, env, tmp_path):
    return subprocess.run([sys.executable, "-m", "airtune.cli", "run", str(job_file), "--json"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)


def _wait_for(inbox, n: int, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while len(inbox.messages) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # and no second one
    return inbox.messages


def test_one_email_per_job_end_with_the_link_and_no_secret(tmp_path, airtune_home, smtp_server):
    inbox, port = smtp_server
    conn = {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "password": SECRET,
            "extra": {"to": ["team@example.com"], "from_email": "airtune@example.com",
                      "disable_ssl": True, "disable_tls": True, "timeout": 10, "retry_limit": 1}}
    env = airtune_env(airtune_home, AIRFLOW_CONN_TEAM_MAIL=json.dumps(conn))

    out = _run(_job(tmp_path, "notify-ok"), env, tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["state"] == "success"
    (ok,) = _wait_for(inbox, 1)
    assert ok["Subject"] == "airtune: job notify-ok succeeded"
    assert ok["X-Envelope-To"] == "team@example.com" and "airtune@example.com" in ok["From"]
    text = _text(ok)
    assert "/airtune/jobs/notify-ok" in text and "http://127.0.0.1:" in text
    # the key numbers (an HTML table: key, value)
    assert "Final eval loss</td><td>" in text and "Evaluation (eval_loss)</td><td>tuned " in text
    assert f"notify-ok version {summary['model_version']}" in text and "Champion</td><td>no" in text
    assert SECRET not in text and "sk-" not in text

    # prepare_dataset fails at once (one row, half of it held out): the run fails, one more message
    out = _run(_job(tmp_path, "notify-fail", max_samples=1, val_size=0.5), env, tmp_path)
    assert out.returncode != 0
    messages = _wait_for(inbox, 2)
    assert len(messages) == 2, [m["Subject"] for m in messages]
    failed = messages[1]
    assert failed["Subject"] == "airtune: job notify-fail failed"
    text = _text(failed)
    assert "Failed task</td><td>prepare_dataset" in text and "/airtune/jobs/notify-fail" in text
    assert SECRET not in text and "sk-" not in text
