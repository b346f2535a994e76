"""The jobs page's create wizard (airtune.webapp.create, create_routes): its check, preview and submit
endpoints with FastAPI's TestClient, Airflow's permission check replaced by one that records what it
was asked, Airflow's REST API replaced by a recorder. The real thing in a browser against the real
stack is tests/ui/test_create_wizard.py."""

from __future__ import annotations

import importlib
import io
import json
import re
import urllib.request
from pathlib import Path

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient

from airtune.spec import FIELDS, field_info
from airtune.webapp import create, create_templates

webapp = importlib.import_module("airtune.webapp.app")


def tiny(name: str = "wiz-job", **overrides) -> dict:
    """tests/e2e/stack.py's tiny_job: the tiny model, 16 rows, cutoff 64."""
    job = {"name": name, "base_model": "tiny-llama-dev", "dataset": ["alpaca_en_demo"], "finetuning_method": "lora",
           "stage": "sft", "max_samples": 16, "cutoff_len": 64, "per_device_train_batch_size": 8,
           "num_train_epochs": 1.0, "logging_steps": 1, "save_steps": 1, "val_size": 0.0, "learning_rate": 5e-3}
    job.update(overrides)
    return job


TOO_BIG = {"location": "k8s-example", "gpu_type": "nvidia-t4", "base_model": "qwen2.5-7b-instruct",
           "finetuning_method": "full", "gpus_per_node": 1}


@pytest.fixture
def home(monkeypatch, tmp_path, tiny_model_dir) -> Path:
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny-llama-dev").symlink_to(tiny_model_dir)
    monkeypatch.setenv("AIRTUNE_HOME", str(home))
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    create._preview_cache.clear()
    return home


@pytest.fixture
def asked(monkeypatch, home):
    methods: list[str] = []

    def requires(method: str):
        def check():
            methods.append(method)
        return Depends(check)

    monkeypatch.setattr(webapp, "_requires", requires)
    return methods


@pytest.fixture
def client(asked) -> TestClient:
    return TestClient(webapp.create_app(), base_url="http://testserver")


@pytest.fixture
def airflow_api(monkeypatch):
    """Airflow's REST API: records each request, answers 200 with the run."""
    calls: list[urllib.request.Request] = []

    def urlopen(req, timeout=None):
        calls.append(req)
        body = json.loads(req.data)
        return io.BytesIO(json.dumps({"dag_run_id": body["dag_run_id"], "state": "queued"}).encode())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


def post(client, path, values, **more):
    return client.post(f"/api/create/{path}", json={"values": values, **more})


# -- check ------------------------------------------------------------------------------------------

def test_check_a_good_job_has_no_errors_and_shows_auto_values(client, asked):
    r = post(client, "check", tiny())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] and body["errors"] == []
    assert body["auto"]["template"] == "chatml" and body["auto"]["gpu_type"] == "cpu"
    assert body["auto"]["compute_type"] == "fp32" and body["auto"]["lora_rank"] == 8
    assert body["estimate"]["gpu_memory_gib_per_process"] is None  # CPU: nothing to check
    assert asked == ["GET"]  # the check needs read permission only


def test_check_puts_a_bad_value_and_a_cross_field_error_at_their_fields(client):
    body = post(client, "check", tiny(learning_rate=-1, finetuning_method="full", lora_rank=4), lang="zh").json()
    assert not body["ok"]
    errors = {e["field"]: e for e in body["errors"]}
    assert set(errors) == {"learning_rate", "lora_rank"}
    assert errors["learning_rate"]["message_en"] == "must be > 0 and <= 1"  # validate's own words
    assert errors["learning_rate"]["message"] == "须为 > 0 且 <= 1"  # shown on the Chinese page
    assert errors["learning_rate"]["label"] == field_info("learning_rate").label("zh") == "学习率"
    assert errors["learning_rate"]["accepted"] == field_info("learning_rate").accepted("zh")
    # the cross-field rule is shown at lora_rank and at the field it names
    assert "finetuning_method" in errors["lora_rank"]["message_en"]
    assert errors["lora_rank"]["message"] == "仅用于微调方法为 lora 时（本任务的微调方法为 'full'）；请留空"
    assert errors["lora_rank"]["also"] == ["finetuning_method"]
    i = body["errors"].index(errors["lora_rank"])
    assert body["by_field"]["lora_rank"] == [i] and body["by_field"]["finetuning_method"] == [i]


def test_check_is_what_validate_reports(client):
    from airtune.resolve import validate_mapping
    from airtune.spec import SpecError

    job = tiny(learning_rate="fast", stage="dpo", quantization_bit="4", finetuning_method="freeze")
    with pytest.raises(SpecError) as exc:
        validate_mapping(job)
    body = post(client, "check", job).json()
    assert [e["text"] for e in body["errors"]] == [str(e) for e in exc.value.errors]


def test_check_refuses_a_name_in_use(client, home, tmp_path):
    (tmp_path / "workspace" / "jobs" / "taken").mkdir(parents=True)
    body = post(client, "check", tiny("taken")).json()
    assert [e["field"] for e in body["errors"]] == ["name"]


def test_a_job_that_does_not_fit_is_refused_before_submit(client, airflow_api):
    values = tiny("big-job", **TOO_BIG)
    body = post(client, "check", values).json()
    assert body["fits"] == "no"
    est = body["estimate"]
    assert est["gpu_memory_gib_available"] == 16 and est["gpu_memory_gib_certain"] > 16
    assert "GPU memory" in body["refusal"] and "nvidia-t4" in body["refusal"]
    # shown at gpu_type and at the fields its advice names
    assert body["by_field"]["gpu_type"] == body["by_field"]["quantization_bit"] == body["by_field"]["distributed"]
    client.cookies.set("_token", "jwt")
    r = post(client, "submit", values)
    assert r.status_code == 422
    assert r.json()["detail"]["fits"] == "no"
    assert airflow_api == []  # no run was asked for


# -- choices ----------------------------------------------------------------------------------------

def finished(workspace: Path, name: str, stage: str, base_model: str = "tiny-llama-dev", done: bool = True) -> None:
    run = workspace / "jobs" / name / "manual__1"
    (run / "output" / "final").mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"spec": {"name": name, "stage": stage, "base_model": base_model,
                                                        "finetuning_method": "lora", "template": "chatml"}}))
    if done:
        (run / "result.json").write_text(json.dumps({"final_dir": "output/final"}))


def test_choices_offer_finished_jobs_of_the_right_stage_and_each_locations_gpu_types(client, tmp_path):
    ws = tmp_path / "workspace"
    finished(ws, "rm-a", "rm")
    finished(ws, "sft-a", "sft")
    finished(ws, "sft-q", "sft", base_model="qwen2.5-0.5b-instruct")
    finished(ws, "sft-running", "sft", done=False)
    body = client.get("/api/create/choices").json()
    assert [o["value"] for o in body["reward_model"]] == ["rm-a"]
    assert {o["value"]: o["base_model"] for o in body["parent_job"]} == {"sft-a": "tiny-llama-dev",
                                                                        "sft-q": "qwen2.5-0.5b-instruct"}
    assert [g["value"] for g in body["gpu_type"]["local"]["types"]] == ["cpu", "auto"]
    assert "nvidia-t4" in [g["value"] for g in body["gpu_type"]["k8s-example"]["types"]]
    assert [o["value"] for o in body["base_model"]][:2] == ["smollm2-135m-instruct", "tiny-llama-dev"]


def test_the_page_has_every_field_with_the_tables_labels(client, monkeypatch):
    for lang in ("en", "zh"):
        monkeypatch.setenv("AIRTUNE_FORM_LANG", lang)
        html = client.get("/create").text
        for f in FIELDS:
            assert f'id="field-{f.name}"' in html, f.name
            assert create_templates._env.filters["e"](f.label(lang)) in html, f.name
        assert ("任务基本信息" in html) == (lang == "zh") and ("高级配置" in html) == (lang == "zh")


# -- preview ------------------------------------------------------------------------------------------

def test_preview_rows_and_counts_are_what_prepare_makes(client, asked, home, tmp_path):
    from airtune import data
    from airtune.data.encode import load_tokenizer
    from airtune.resolve import validate_mapping

    job = tiny()
    r = post(client, "preview", job, rows=3)
    assert r.status_code == 200, r.text
    p = r.json()
    assert asked == ["POST"]  # a preview spends compute: the permission to trigger runs

    resolved = validate_mapping(job)
    manifest = data.prepare(resolved, tmp_path / "prepared")  # what `airtune prepare` runs (no cache here)
    for key in ("rows", "tokens", "label_tokens", "truncated_rows", "dropped_rows", "skipped_rows", "content_hash"):
        assert p["manifest"][key] == manifest[key], key
    assert p["figures"] == data.training_figures(manifest, resolved["spec"])
    assert p["lengths"]["longer_than_cutoff"] == manifest["truncated_rows"] == 13
    assert p["lengths"]["rows"] == manifest["rows"]["train"] == 16

    train, _, _ = data.load_prepared(tmp_path / "prepared")
    tok = load_tokenizer(resolved["model"]["weights"])
    assert len(p["rows"]) == 3
    for i, row in enumerate(p["rows"]):
        ids, labels = train[i]["input_ids"], train[i]["labels"]
        assert "".join(s["text"] for s in row["parts"]) == tok.decode(ids, skip_special_tokens=False)
        trained = [s for s in row["parts"] if s["trained"]]
        assert row["parts"][0]["name"] == "prompt" and not row["parts"][0]["trained"]
        assert sum(s["tokens"] for s in trained) == sum(1 for lab in labels if lab != -100)
    assert p["time_estimate"]["kind"] == "measured" and "estimate" in p["time_estimate"]["how"]
    # cached: the second call does not start a process
    again = post(client, "preview", job, rows=3).json()
    assert again["cached"] is True and again["rows"] == p["rows"]


def test_preview_reports_rejected_rows(client, home, tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "hi", "output": "ok"}, {"instruction": "", "output": ""},
                               {"instruction": "x"}]))
    cfg = tmp_path / "configs"
    import shutil

    from airtune import paths

    shutil.copytree(paths.config_dir(), cfg)
    with open(cfg / "datasets.yaml", "a") as f:
        f.write(f"\n  bad_rows:\n    format: alpaca\n    kind: sft\n    files: [{bad}]\n")
    monkeypatch.setenv("AIRTUNE_CONFIG_DIR", str(cfg))
    from airtune.catalog import Catalog

    if "bad_rows" not in Catalog.load().datasets:
        pytest.skip("the catalog's datasets.yaml layout differs")
    r = post(client, "preview", tiny(dataset=["bad_rows"]))
    assert r.status_code == 422
    assert r.json()["detail"]["rejected_rows"] >= 1


def test_preview_is_stopped_after_its_timeout(home, monkeypatch):
    import sys
    import time

    monkeypatch.setattr(create, "worker_command", lambda: [sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.monotonic()
    with pytest.raises(create.PreviewError) as exc:
        create.preview(tiny(), timeout=1)
    assert exc.value.status == 504 and "longer than 1 s" in str(exc.value)
    assert time.monotonic() - t0 < 30


# -- submit -------------------------------------------------------------------------------------------

def test_submit_triggers_the_run_through_airflows_api_with_the_callers_token(client, asked, airflow_api):
    client.cookies.set("_token", "the-users-jwt")
    r = post(client, "submit", tiny("wiz-ok"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "wiz-ok" and body["run_id"].startswith("wiz-ok__")
    assert asked == ["POST"]
    (req,) = airflow_api
    assert req.full_url.endswith("/api/v2/dags/airtune_finetune/dagRuns") and req.get_method() == "POST"
    assert req.get_header("Authorization") == "Bearer the-users-jwt"
    sent = json.loads(req.data)
    assert sent["conf"] == tiny("wiz-ok") and sent["dag_run_id"] == body["run_id"]


def test_submit_refuses_errors_without_a_run(client, airflow_api):
    client.cookies.set("_token", "jwt")
    r = post(client, "submit", tiny(learning_rate=-1))
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["detail"]["errors"]] == ["learning_rate"]
    assert airflow_api == []


# -- the wizard's routes leave every job name to its job -------------------------------------------

def _job_routes(app) -> list[tuple[set, re.Pattern]]:
    """(methods, what the path matches) of each route of one job: /jobs/{name}, /api/jobs/{name}/..."""
    from airtune.spec import _END, DNS_LABEL_PATTERN

    name = DNS_LABEL_PATTERN.removeprefix("^").removesuffix(_END)
    return [(set(r.methods), re.compile(re.escape(r.path).replace(re.escape("{name}"), f"(?:{name})")))
            for r in app.routes if "{name}" in getattr(r, "path", "")]


def test_no_route_of_the_page_shadows_a_jobs_own(client):
    """A path such as /jobs/new (the wizard once) would hide the job named new: none may match a job's route."""
    app = client.app
    job_routes = _job_routes(app)
    assert len(job_routes) >= 5
    fixed = [r for r in app.routes if "{" not in getattr(r, "path", "{")]
    assert {"/create", "/api/create/choices", "/api/create/check", "/api/create/submit"} <= {r.path for r in fixed}
    for route in fixed:
        for methods, pattern in job_routes:
            if methods & set(getattr(route, "methods", None) or ()) and pattern.fullmatch(route.path):
                pytest.fail(f"{sorted(methods)} {route.path} is a job's route: it hides the job of that name")
    for path in ("/jobs/new", "/api/jobs/choices"):  # where the wizard was: a job's again
        assert any(p.fullmatch(path) for _, p in job_routes), path


def test_a_job_named_new_has_its_page_and_the_button_opens_the_wizard(client, monkeypatch):
    from airtune.webapp import data

    asked_for = []

    def job_detail(name, run=None):
        asked_for.append(name)
        raise data.NotFound(f"no job named {name}")

    monkeypatch.setattr(data, "job_detail", job_detail)
    monkeypatch.setattr(data, "job_rows", lambda: [])
    assert client.get("/jobs/new").status_code == 404
    assert client.get("/api/jobs/choices").status_code == 404
    assert asked_for == ["new", "choices"]  # the job's own look-ups, not the wizard
    html = client.get("/jobs").text
    assert re.search(r'id="new-job" href="[^"]*/create"', html), html
    assert 'id="field-name"' in client.get("/create").text
