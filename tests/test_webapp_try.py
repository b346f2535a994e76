"""The jobs page's "Try it" box (POST /airtune/api/jobs/{name}/try, airtune.webapp): its checks and
answers, fast: FastAPI's TestClient on the app, Airflow's permission check replaced by one that
records what it was asked, MLflow's version lookup (inference.find_version) replaced, and the model
process (`airtune generate --json`) replaced by small Python scripts. The real thing, in a browser on
a trained job, is in tests/ui/test_form_and_jobs_page.py."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient

from airtune import cli, inference
from airtune.webapp import data, templates

webapp = importlib.import_module("airtune.webapp.app")  # the module: airtune.webapp's `app` is the lazy ASGI app

JOB = "try-job"
REAL_COMMAND = data.generate_command
URL = f"/api/jobs/{JOB}/try"


def version(*aliases: str, **tags: str) -> inference.Version:
    return inference.Version(name=JOB, version="3", tags={"job": JOB, "airflow_run_id": "manual__1", **tags},
                             source="models:/m-1", aliases=list(aliases))


def script(code: str) -> list[str]:
    return [sys.executable, "-c", code]


ANSWER = script("import json, sys; print('a note on stdout'); "
                "print(json.dumps({'job': sys.argv[1], 'version': sys.argv[2], 'prompt': sys.argv[3], "
                "'answer': 'I am ' + sys.argv[3][::-1], 'tokens': 7, 'stopped': True}))")


@pytest.fixture
def asked(monkeypatch, tmp_path):
    """The permissions the endpoints asked Airflow for, request by request (always granted here)."""
    monkeypatch.setenv("AIRTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(tmp_path / "workspace"))
    methods: list[str] = []

    def requires(method: str):
        def check():
            methods.append(method)
        return Depends(check)

    monkeypatch.setattr(webapp, "_requires", requires)
    monkeypatch.setattr(inference, "find_version", lambda name, v=None: version("best"))
    return methods


@pytest.fixture
def client(asked) -> TestClient:
    return TestClient(webapp.create_app())


def fake_model(monkeypatch, command: list[str] | None) -> list[list[str]]:
    """The model process: `command` with the real command's name, version and prompt as its arguments."""
    started: list[list[str]] = []

    def make(name, ver, prompt, max_new_tokens):
        real = REAL_COMMAND(name, ver, prompt, max_new_tokens)
        started.append(real)
        if command is None:
            raise AssertionError("no model process may start for this request")
        return command + [name, ver, prompt]

    monkeypatch.setattr(data, "generate_command", make)
    return started


def test_an_answer_from_the_pinned_version(client, asked, monkeypatch):
    started = fake_model(monkeypatch, ANSWER)
    r = client.post(URL, json={"prompt": "-who are you?"}, headers={"Origin": "http://testserver"})  # the page's own
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == "I am ?uoy era ohw-" and body["version"] == "3" and body["tokens"] == 7 and body["stopped"] is True
    assert isinstance(body["seconds"], float)
    assert asked == ["POST"]  # triggering's permission on airtune_finetune's runs, not reading's
    # what runs: `python -m airtune.cli generate` with the version the page names, greedy (no
    # temperature), the prompt as one argument even when it starts with '-'
    [cmd] = started
    assert cmd[:3] == [sys.executable, "-m", "airtune.cli"]
    args = cli.make_parser().parse_args(cmd[3:])
    assert (args.name, args.version, args.prompt, args.json, args.max_new_tokens) == (JOB, 3, "-who are you?", True,
                                                                                       data.TRY_MAX_NEW_TOKENS)
    assert args.temperature is None and args.top_p is None and not args.base and not args.compare
    assert client.post(URL, json={"prompt": "x", "max_new_tokens": 16}).status_code == 200
    assert "--max-new-tokens" in started[-1] and started[-1][started[-1].index("--max-new-tokens") + 1] == "16"


def test_prompt_checks(client, monkeypatch):
    started = fake_model(monkeypatch, ANSWER)
    r = client.post(URL, json={"prompt": "x" * (data.TRY_MAX_PROMPT + 1)})
    assert r.status_code == 400
    assert r.json() == {"detail": "the prompt is 2,001 characters long; at most 2,000 are answered here: shorten it"}
    assert started == []
    for body, detail in (({"prompt": "  "}, "type a prompt first"), ({}, "type a prompt first"),
                         ({"prompt": 5}, "type a prompt first"),
                         ({"prompt": "a\x00b"}, "the prompt contains a NUL character"),
                         ({"prompt": "hi", "max_new_tokens": 10_000}, "max_new_tokens: a whole number from 1 to 256; got 10000")):
        r = client.post(URL, json=body)
        assert (r.status_code, r.json()) == (400, {"detail": detail}), body
    r = client.post(URL, content=b"prompt=hi", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (r.status_code, r.json()["detail"]) == (400, 'try it: send a JSON object: {"prompt": "..."}')
    assert started == []
    assert client.post(URL, json={"prompt": "y" * data.TRY_MAX_PROMPT}).status_code == 200  # the limit itself is fine


def test_from_another_site_refused(client, monkeypatch):
    fake_model(monkeypatch, None)
    r = client.post(URL, json={"prompt": "hi"}, headers={"Origin": "https://elsewhere.example"})
    assert (r.status_code, r.json()["detail"]) == (403, "try it: refused from origin https://elsewhere.example")


def test_one_prompt_at_a_time(client, monkeypatch, tmp_path):
    go = tmp_path / "go"
    fake_model(monkeypatch, script(
        "import json, pathlib, sys, time\n"
        f"deadline = time.time() + 60\n"
        f"while not pathlib.Path({str(go)!r}).exists() and time.time() < deadline: time.sleep(0.05)\n"
        "print(json.dumps({'version': sys.argv[2], 'answer': 'first', 'tokens': 1, 'stopped': True}))"))
    first: list = []
    t = threading.Thread(target=lambda: first.append(client.post(URL, json={"prompt": "one"})))
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not data._try_lock.locked() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert data._try_lock.locked()
        r = client.post(URL, json={"prompt": "two"})
        assert r.status_code == 429
        assert r.json()["detail"].startswith(f"busy: the model process is answering a prompt to {JOB}, for ")
        assert r.json()["detail"].endswith("s; one prompt at a time; try again when it is done")
        assert r.headers["Retry-After"] == "10"
        r = client.post(URL, json={"prompt": "x" * 5000})  # a bad prompt is told so, busy or not
        assert r.status_code == 400
    finally:
        go.touch()
        t.join(60)
    assert first[0].status_code == 200 and first[0].json()["answer"] == "first"
    assert not data._try_lock.locked()


def test_busy_in_another_api_server_worker(client, monkeypatch):
    """The api-server's other worker processes share the file lock ($AIRTUNE_HOME/run/try-it.lock)."""
    import fcntl

    fake_model(monkeypatch, None)
    path = data._try_lock_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as held:
        held.write(json.dumps({"name": "other-job", "since": time.time() - 5}))
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        r = client.post(URL, json={"prompt": "hi"})
    assert r.status_code == 429
    assert r.json()["detail"].startswith("busy: the model process is answering a prompt to other-job, for 5 s")
    fake_model(monkeypatch, ANSWER)
    assert client.post(URL, json={"prompt": "hi"}).status_code == 200  # free again


def test_a_job_with_no_version(client, monkeypatch):
    fake_model(monkeypatch, None)
    message = f"job {JOB!r} has no registered model version yet (its register task has not run, or the job failed before it)"

    def no_version(name, v=None):
        raise inference.InferenceError(message)

    monkeypatch.setattr(inference, "find_version", no_version)
    r = client.post(URL, json={"prompt": "hi"})
    assert (r.status_code, r.json()) == (409, {"detail": f"nothing to try: {message}"})
    target = data.try_target(JOB)
    assert not target["available"] and target["version"] is None
    page = render(target)
    assert 'id="try-note"' in page and "nothing to try: job" in page and 'id="try-form"' not in page


def test_a_kubernetes_job_needs_a_serving_deployment(client, monkeypatch):
    fake_model(monkeypatch, None)
    folder = Path(data.paths.job_dir(JOB, "manual__1"))
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"location": {"name": "gpu-cluster", "kind": "kubernetes"}}))
    r = client.post(URL, json={"prompt": "hi"})
    assert r.status_code == 409
    assert r.json()["detail"] == ("trying this model needs a serving deployment on gpu-cluster (location kind kubernetes); "
                                  "airtune does not build one yet")
    page = render(data.try_target(JOB))
    assert "needs a serving deployment on gpu-cluster" in page and 'id="try-form"' not in page
    # a local job's folder: the box, and which version answers
    (folder / "spec.json").write_text(json.dumps({"location": {"name": "local", "kind": "local"}}))
    target = data.try_target(JOB)
    assert target["available"] and target["location"] == "local"
    page = render(target)
    assert 'id="try-form"' in page and f"{JOB} version 3</b> (alias best, the register task" in page
    assert "greedy decoding" in page and "at most 256 new tokens" in page and "up to 2,000 characters" in page


def test_which_version_the_page_names(asked, monkeypatch):
    for aliases, said in ((["champion", "best"], "alias champion, a person's choice"),
                          (["best"], "alias best, the register task's choice"),
                          ([], "the newest version; no version has alias champion or best")):
        monkeypatch.setattr(inference, "find_version", lambda name, v=None, a=aliases: version(*a))
        assert data.try_target(JOB)["chosen_by"].startswith(said)
    monkeypatch.setattr(inference, "find_version", lambda name, v=None: version(stage="rm"))
    assert "reward model" in data.try_target(JOB)["note"]


def test_errors_are_one_line(client, monkeypatch):
    fake_model(monkeypatch, script("import sys; print('airtune generate: the base weights /m of job x are not on this "
                                   "machine', file=sys.stderr); sys.exit(1)"))
    r = client.post(URL, json={"prompt": "hi"})
    assert (r.status_code, r.json()["detail"]) == (409, "the base weights /m of job x are not on this machine")
    fake_model(monkeypatch, script("import warnings\ndef load():\n    raise RuntimeError('CUDA out of memory')\nload()"))
    r = client.post(URL, json={"prompt": "hi"})
    assert (r.status_code, r.json()["detail"]) == (500, "the model process failed (exit 1): RuntimeError: CUDA out of memory")
    fake_model(monkeypatch, script("print('no JSON here')"))
    r = client.post(URL, json={"prompt": "hi"})
    assert (r.status_code, r.json()["detail"]) == (500, "the model process printed no answer")


def test_a_slow_answer_is_stopped(client, monkeypatch):
    monkeypatch.setattr(data, "TRY_TIMEOUT_S", 1)
    fake_model(monkeypatch, script("import time; time.sleep(60)"))
    started = time.monotonic()
    r = client.post(URL, json={"prompt": "hi"})
    assert time.monotonic() - started < 20
    assert r.status_code == 504
    assert r.json()["detail"].startswith("no answer in 1 s: the model process was stopped")
    assert not data._try_lock.locked()


def test_the_box_is_on_finished_runs_only(asked, monkeypatch):
    """job_detail asks for the version only when the run has finished; an active run's page reloads itself."""
    from airtune import status

    calls: list[str] = []
    monkeypatch.setattr(inference, "find_version", lambda name, v=None: calls.append(name) or version("best"))
    for state, shown in (("running", False), ("queued", False), ("success", True), ("failed", True)):
        run = {"dag_id": "airtune_finetune", "dag_run_id": "manual__1", "state": state}
        monkeypatch.setattr(data, "airflow_runs", lambda names=None, r=run: ({JOB: [r]}, {}))
        monkeypatch.setattr(data, "task_instances", lambda dag_id, run_id: [])
        monkeypatch.setattr(status, "status", lambda name, _airflow=None, r=run: {
            "exists": True, "runs": [r], "registered_model": {}, "experiment": {}, "errors": {}})
        detail = data.job_detail(JOB)
        assert (detail["try_it"] is not None) == shown, state
        page = templates.render("job.html", base="/airtune", job=detail)
        assert ('id="try-form"' in page) == shown, state
    assert calls == [JOB, JOB]


def test_the_api_server_does_not_import_torch():
    """What the endpoint runs in the api-server (the app, the version lookup's module) imports no torch."""
    code = ("import sys; import airtune.webapp.app as a, airtune.webapp.data, airtune.inference; a.create_app(); "
            "bad = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules); print(bad); sys.exit(bool(bad))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def render(target: dict) -> str:
    job = {"name": JOB, "run": {"state": "success", "dag_run_id": "manual__1", "dag_id": "airtune_finetune", "duration_s": 12.0},
           "runs": [], "spec": {}, "tasks": [], "checkpoints": [], "registered_model": {}, "errors": {}, "try_it": target}
    return templates.render("job.html", base="/airtune", job=job)
