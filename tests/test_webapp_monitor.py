"""The jobs page's monitoring (GET /airtune/api/jobs/{name}/monitor, airtune.webapp.data.monitor) and
its words in two languages (airtune.webapp.i18n), fast: FastAPI's TestClient on the app with
Airflow's permission check replaced, MLflow on a SQLite file of the test's own. The pages in a
browser on the real stack: tests/ui/test_console.py."""

from __future__ import annotations

import importlib
import re
import string

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient

from airtune.webapp import data, i18n, templates

webapp = importlib.import_module("airtune.webapp.app")

JOB, RUN = "mon-job", "manual__2026-01-02T03:04:05+00:00"


@pytest.fixture
def asked(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("AIRTUNE_FORM_LANG", raising=False)
    methods: list[str] = []

    def requires(method: str):
        def check():
            methods.append(method)
        return Depends(check)

    monkeypatch.setattr(webapp, "_requires", requires)
    return methods


@pytest.fixture
def client(asked) -> TestClient:
    return TestClient(webapp.create_app())


@pytest.fixture
def mlflow_run(asked):
    """An MLflow run as the trainer leaves one: training metrics by step, system metrics of two nodes
    (node1 with two GPUs), logged seconds apart."""
    from mlflow.entities import Metric

    from airtune import tracking

    c = tracking.client()
    exp_id = tracking._experiment_id(c, tracking.experiment_name(JOB))
    run = c.create_run(exp_id, start_time=1_000_000, tags={tracking.TAG_RUN_ID: RUN, tracking.TAG_DAG_ID: data.FINETUNE_DAG})
    rid = run.info.run_id
    ms = []
    for i, step in enumerate((1, 2, 3, 4)):
        t = 1_000_000 + 10_000 * (i + 1)
        ms += [Metric("loss", 5.0 - step, t, step), Metric("learning_rate", 1e-4 * step, t, step),
               Metric("tokens_per_second", 100.0 + step, t, step),
               Metric("system/node0/cpu_utilization_percentage", 50.0 + i, t, step),
               Metric("system/node0/system_memory_usage_megabytes", 2048.0 + i, t, step),
               Metric("system/node1/cpu_utilization_percentage", 20.0, t, step),
               Metric("system/node1/system_memory_usage_megabytes", 1024.0, t, step),
               Metric("system/node1/gpu_0_utilization_percentage", 90.0, t, step),
               Metric("system/node1/gpu_1_utilization_percentage", 80.0, t, step),
               Metric("system/node1/gpu_0_memory_usage_megabytes", 7000.0 + i, t, step),
               Metric("system/node1/gpu_1_memory_usage_megabytes", 6000.0, t, step),
               Metric("system/node1/disk_usage_megabytes", 1.0, t, step)]  # not charted
    ms.append(Metric("eval_loss", 2.5, 1_000_000 + 40_000, 4))
    c.log_batch(rid, metrics=ms)
    return rid


def test_monitor_charts_from_the_runs_histories(client, asked, mlflow_run):
    r = client.get(f"/api/jobs/{JOB}/monitor", params={"run": RUN})
    assert r.status_code == 200, r.text
    body = r.json()
    assert asked == ["GET"] and body["mlflow_run_id"] == mlflow_run
    charts = {c["id"]: c for c in body["charts"]}
    assert list(charts) == ["loss", "learning_rate", "tokens_per_second", "node0-cpu", "node0-memory",
                            "node1-cpu", "node1-memory", "node1-gpu_util", "node1-gpu_memory"]
    loss = charts["loss"]
    assert loss["x"] == "step" and [s["name"] for s in loss["series"]] == ["loss", "eval_loss"]
    assert loss["series"][0]["points"] == [[1, 4.0], [2, 3.0], [3, 2.0], [4, 1.0]] and loss["series"][1]["points"] == [[4, 2.5]]
    cpu = charts["node0-cpu"]
    # over the run's time, in seconds from its start; percentages on a 0-100 scale
    assert cpu["x"] == "time" and cpu["unit"] == "%" and cpu["ymax"] == 100
    assert cpu["series"][0]["points"] == [[10.0, 50.0], [20.0, 51.0], [30.0, 52.0], [40.0, 53.0]]
    assert charts["node0-memory"]["unit"] == "MB" and charts["node0-memory"]["series"][0]["points"][-1] == [40.0, 2051.0]
    gpu = charts["node1-gpu_memory"]
    assert [s["label"] for s in gpu["series"]] == ["GPU 0", "GPU 1"] and gpu["series"][0]["points"][-1] == [40.0, 7003.0]
    assert charts["node1-gpu_util"]["title"] == "GPU utilisation · node1"
    assert body["notes"] == ["node0: no GPU metrics (no GPU seen on that node)"]


def test_monitor_in_chinese_and_for_runs_mlflow_does_not_know(client, mlflow_run):
    r = client.get(f"/api/jobs/{JOB}/monitor", params={"run": RUN}, headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
    titles = [c["title"] for c in r.json()["charts"]]
    assert titles[:3] == ["损失", "学习率", "每秒词元数"] and "GPU 显存使用 · node1" in titles
    r = client.get(f"/api/jobs/{JOB}/monitor", params={"run": "manual__other"})
    assert r.status_code == 200 and r.json()["charts"] == [] and r.json()["mlflow_run_id"] is None
    assert client.get("/api/jobs/no-such-job/monitor", params={"run": RUN}).status_code == 404
    assert client.get(f"/api/jobs/{JOB}/monitor", params={"run": "a'b"}).status_code == 404


def test_monitor_thins_long_histories():
    points = [[i, float(i)] for i in range(1000)]
    thin = data._thin(points, 300)
    assert len(thin) == 300 and thin[0] == [0, 0.0] and thin[-1] == [999, 999.0]
    assert data._thin(points[:5], 300) == points[:5]


# --- the message table ---------------------------------------------------------------------------

def _fields(s: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(s) if f}


def test_every_message_in_both_languages_with_the_same_placeholders():
    for key, (en, zh) in i18n.MESSAGES.items():
        assert en.strip() and zh.strip(), key
        assert _fields(en) == _fields(zh), key
    cjk = re.compile(r"[\u4e00-\u9fff]")
    untranslated = [k for k, (en, zh) in i18n.MESSAGES.items() if en == zh and not k.startswith(("kv.airflow", "kv.mlflow", "series.gpu"))]
    assert untranslated == [], untranslated
    assert all(cjk.search(zh) for k, (en, zh) in i18n.MESSAGES.items() if k.startswith(("col.", "state.", "chart.")))


def test_the_seeds_terms():
    zh = {k: zh for k, (_, zh) in i18n.MESSAGES.items()}
    assert zh["log.title"] == "查看日志" and zh["monitor.title"] == "查看监控" and zh["col.name"] == "任务名称"
    assert zh["delete.summary"].startswith("删除") and zh["delete.button"].startswith("删除")
    # the form's own labels for the same things (airtune.spec)
    from airtune.spec import FIELDS

    labels = {f.name: f.label_zh for f in FIELDS}
    assert zh["col.base_model"] == labels["base_model"] and zh["col.method"] == labels["finetuning_method"]
    assert zh["col.stage"] == labels["stage"] and zh["kv.datasets"] == labels["dataset"]


@pytest.mark.parametrize("setting, header, lang", [
    (None, None, "en"), (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh"), (None, "en-US,en;q=0.9,zh-CN;q=0.8", "en"),
    (None, "fr-FR,zh;q=0.5", "zh"), (None, "zh;q=0.4, en;q=0.6", "en"), (None, "de", "en"),
    ("zh", "en-US", "zh"), ("en", "zh-CN", "en"), ("zh-CN", None, "zh"),
])
def test_page_language(monkeypatch, setting, header, lang):
    monkeypatch.delenv("AIRTUNE_FORM_LANG", raising=False)
    if setting:
        monkeypatch.setenv("AIRTUNE_FORM_LANG", setting)
    assert i18n.page_lang(header) == lang


def test_the_pages_in_chinese(client, monkeypatch):
    monkeypatch.setattr(data, "job_rows", lambda: [{"name": "a-job", "state": "success", "base_model": "m", "finetuning_method": "lora",
                                                    "stage": "sft", "start": None, "duration_s": None, "runs": 1, "progress": {},
                                                    "best_metric": {"name": "loss", "value": 1.5, "source": "latest run"}}])
    html = client.get("/jobs", headers={"Accept-Language": "zh-CN"}).text
    assert '<html lang="zh-CN">' in html and "<h1>微调任务</h1>" in html and "<th>任务名称</th>" in html
    assert ">成功</span>" in html and 'data-state="success"' in html and "（最近一次运行）" in html.replace("(", "（").replace(")", "）")
    html = client.get("/jobs", headers={"Accept-Language": "en-US"}).text
    assert "<h1>Fine-tuning jobs</h1>" in html and ">success</span>" in html

    detail = {"name": "a-job", "run": {"dag_id": data.FINETUNE_DAG, "dag_run_id": RUN, "state": "running", "start": None, "duration_s": None},
              "runs": [{"dag_id": data.FINETUNE_DAG, "dag_run_id": RUN, "state": "running", "start": None}],
              "resolved": None, "spec": {"base_model": "m"}, "spec_is_resolved": False, "tasks": [], "result": None, "checkpoints": [],
              "evaluation": {"sources": ["base", "tuned"], "keys": ["rouge-l"], "figures": {"base": {"rouge-l": 1.0}, "tuned": {"rouge-l": 2.0}},
                             "samples": 3, "base_model": "m", "champion_version": None, "promotion": {}, "seconds": {},
                             "predictions": [{"prompt": "p", "reference": "r", "base": "b", "tuned": "t"}], "is_champion": False},
              "has_metrics": False, "registered_model": {}, "try_it": None, "experiment": {}, "folder": None, "errors": {}}
    monkeypatch.setattr(data, "job_detail", lambda name, run=None: detail)
    html = client.get("/jobs/a-job", headers={"Accept-Language": "zh-CN"}).text
    for words in ("查看日志", "查看监控", "删除任务…", "删除 a-job", "输入任务名称以确认：", "先取消正在进行的运行", "任务步骤",
                  "<th>指标</th>", "基础模型</th>", "微调后</th>", "模型评估", "运行中", "<th>提示词</th>", "<th>参考答案</th>"):
        assert words in html, words
    # the script's messages, for what it writes itself
    import json

    script = json.loads(re.search(r"const T = (\{.*?\});\n", html).group(1))
    assert script["monitor.none"] == "MLflow 中暂无指标" and script["state.failed"] == "失败"


def test_a_wrong_confirmation_says_so_in_the_pages_language(client):
    r = client.post("/jobs/a-job/delete", data={"confirm": "b-job"}, headers={"Accept-Language": "zh-CN", "Accept": "text/html"})
    assert r.status_code == 400 and "请输入任务名称（a-job）以确认" in r.text and "未删除任何内容" in r.text
