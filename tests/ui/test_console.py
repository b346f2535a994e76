"""The jobs console in a real browser (headless chromium, Playwright) on the real stack
(tests/e2e/stack.py): monitoring (查看监控) charts updating while a job runs and present once it
has finished; the pages in Chinese for a zh-CN browser; a forced delete of a running job showing
its report although the run turns failed meanwhile; the MLflow link opening MLflow's Runs
(model-training) view, not its GenAI view; and quiet task logs. Screenshots go to the artefacts
folder (console-*.png)."""

from __future__ import annotations

import re
import time

import pytest

pytestmark = pytest.mark.slow


def login(page, stack) -> None:
    page.goto(f"{stack.url}/")
    page.wait_for_selector("input[name=username]")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", stack.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/" not in url)


def trigger(stack, name: str, **overrides) -> str:
    from e2e.stack import tiny_job

    status, body = stack.trigger(tiny_job(name, **overrides))
    assert status == 200, body
    return body["dag_run_id"]


def wait_task_running(stack, run_id: str, task: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while stack.task_states(run_id).get(task) != "running":
        assert time.monotonic() < deadline, stack.task_states(run_id)
        time.sleep(1)


def points(page, chart: str) -> int:
    loc = page.locator(f"#monitor figure[data-chart='{chart}']")
    return int(loc.get_attribute("data-points")) if loc.count() else 0


@pytest.fixture(scope="module")
def finished(airflow_stack):
    """One job (the monitoring test watches it run) that has finished by the time later tests use it."""
    from e2e.stack import unique

    name = unique("console")
    # 360 steps of the tiny model (120 an epoch), a loss every step: on a quiet machine it trains ~12 steps a
    # second, so ~30 s: long enough that the page, which reloads its charts every 6 s, sees them grow
    run_id = trigger(airflow_stack, name, max_samples=960, num_train_epochs=3.0, logging_steps=1, save_steps=1000)
    return {"name": name, "run_id": run_id}


def test_monitoring_updates_while_running_and_stays_when_finished(page, airflow_stack, finished, artifacts):
    stack, name, run_id = airflow_stack, finished["name"], finished["run_id"]
    login(page, stack)
    wait_task_running(stack, run_id, "train_local")
    page.goto(f"{stack.url}/airtune/jobs/{name}")
    assert page.locator("#monitor-title").inner_text() == "Monitoring"
    # the loss chart appears and grows without the page being reloaded
    page.wait_for_function("() => { const f = document.querySelector(\"#monitor figure[data-chart='loss']\"); "
                           "return f && +f.dataset.points >= 2; }", timeout=180_000)
    page.evaluate("window.__same_page = true")
    first = points(page, "loss")
    page.wait_for_function(f"() => {{ const f = document.querySelector(\"#monitor figure[data-chart='loss']\"); "
                           f"return f && +f.dataset.points > {first}; }}", timeout=120_000)
    if page.evaluate("window.__same_page === true"):  # still running: the page was not reloaded in between
        assert points(page, "loss") > first
    page.locator("#monitor-title").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "console-01-monitor-running.png"), full_page=True)

    final = stack.wait_run(run_id, timeout=900)
    assert final["state"] == "success", stack.task_states(run_id)
    page.goto("about:blank")  # the page reloads itself when the run ends: away from it first
    page.goto(f"{stack.url}/airtune/jobs/{name}")
    page.wait_for_selector("#monitor figure[data-chart='node0-cpu']", timeout=60_000)
    charts = page.locator("#monitor figure").evaluate_all("fs => fs.map(f => [f.dataset.chart, +f.dataset.points])")
    charts = dict(charts)
    for chart in ("loss", "learning_rate", "tokens_per_second", "node0-cpu", "node0-memory"):
        assert charts.get(chart, 0) >= 1, charts
    assert charts["loss"] >= 100, charts  # one a step
    assert page.locator("#monitor figure[data-chart='loss'] svg polyline").count() >= 1
    # no GPU here: said so, instead of empty GPU charts
    assert "no GPU metrics" in page.locator("#monitor").inner_text()
    page.locator("#monitor-title").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "console-02-monitor-finished.png"), full_page=True)

    # quiet logs: what every successful run printed before
    prepare = stack.task_log(run_id, "prepare_dataset")
    train = stack.task_log(run_id, "train_local")
    assert "Saving the dataset" not in prepare, prepare[-2000:]
    for noise in ("gemm_4bit_forward", "pip install kernels", "FutureWarning", "Setting accelerator to CPU"):
        assert noise not in train, noise


def test_the_pages_in_chinese(browser, airflow_stack, finished, artifacts):
    stack, name = airflow_stack, finished["name"]
    stack.wait_run(finished["run_id"], timeout=900)
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        login(page, stack)
        page.goto(f"{stack.url}/airtune/jobs")
        assert page.locator("h1").inner_text() == "微调任务"
        heads = page.locator("#jobs thead th").all_inner_texts()
        assert heads[:5] == ["任务名称", "状态", "基础模型", "微调方法", "训练阶段"], heads
        row = page.locator(f"#jobs tr[data-job='{name}']")
        assert row.locator("td").nth(1).inner_text().strip() == "成功"
        page.screenshot(path=str(artifacts / "console-03-jobs-zh.png"), full_page=True)

        page.goto(f"{stack.url}/airtune/jobs/{name}")
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        assert page.locator("#run-state").inner_text() == "成功"
        assert page.locator("#log-title").inner_text().startswith("查看日志")
        assert page.locator("#monitor-title").inner_text() == "查看监控"
        assert page.locator("#delete summary").inner_text() == "删除任务…"
        assert page.locator("#delete-button").text_content().strip() == f"删除 {name}"  # inside the closed <details>
        tasks = page.locator("#tasks thead th").all_inner_texts()
        assert tasks[:3] == ["步骤", "状态", "尝试次数"], tasks
        page.wait_for_selector("#monitor figure[data-chart='loss']")
        captions = page.locator("#monitor figcaption").all_inner_texts()
        assert "损失" in captions and "CPU 使用率 · node0" in captions, captions
        if page.locator("#try-about").count():  # "Try it" (试用模型), its words too
            assert "别名 best" in page.locator("#try-about").inner_text() and page.locator("#try-button").inner_text() == "回答"
        if page.locator("#evaluation").count():
            assert page.locator("#evaluation thead th").first.inner_text() == "指标"
        page.wait_for_function("document.getElementById('log').textContent.length > 20")
        page.screenshot(path=str(artifacts / "console-04-job-zh.png"), full_page=True)
    finally:
        context.close()


def test_the_mlflow_link_opens_the_runs_view(page, airflow_stack, finished, artifacts):
    stack, name = airflow_stack, finished["name"]
    stack.wait_run(finished["run_id"], timeout=900)
    login(page, stack)
    page.goto(f"{stack.url}/airtune/jobs/{name}")
    run_link = page.locator("#mlflow-link").get_attribute("href")
    experiment_link = page.locator("#experiment-link").get_attribute("href")
    assert re.fullmatch(rf"{re.escape(stack.mlflow_url)}/#/experiments/\d+/runs/\w+\?workflowType=machine_learning", run_link), run_link
    assert re.fullmatch(rf"{re.escape(stack.mlflow_url)}/#/experiments/\d+\?workflowType=machine_learning", experiment_link)

    # a browser that never chose a view (MLflow's default is GenAI): the link decides
    page.goto(experiment_link)
    page.get_by_text(re.compile(r"^Runs$")).first.wait_for(timeout=60_000)  # the Runs view's tab
    page.wait_for_timeout(1500)
    assert page.get_by_text("Agent versions").count() == 0
    page.screenshot(path=str(artifacts / "console-05-mlflow-runs-view.png"))

    page.goto(run_link)
    page.get_by_text(re.compile(r"^(Model metrics|System metrics)$")).first.wait_for(timeout=60_000)
    assert page.get_by_text("Agent versions").count() == 0
    page.screenshot(path=str(artifacts / "console-06-mlflow-run.png"))


def test_a_forced_delete_shows_its_report(page, airflow_stack, artifacts):
    from e2e.stack import unique

    stack = airflow_stack
    name = unique("console-del")
    run_id = trigger(stack, name, max_samples=480, logging_steps=1, save_steps=1000)
    login(page, stack)
    wait_task_running(stack, run_id, "train_local")
    page.goto(f"{stack.url}/airtune/jobs/{name}")
    assert page.locator("#run-state").get_attribute("data-state") == "running"
    page.locator("#delete summary").click()
    page.locator("#delete-confirm").fill(name)
    page.locator("#delete-force").check()
    page.screenshot(path=str(artifacts / "console-07-delete-running.png"))
    page.locator("#delete-button").click()
    assert page.locator("#delete-status").inner_text().strip()  # "deleting…" while it works
    page.wait_for_selector("#deleted, #not-deleted", timeout=300_000)
    page.wait_for_timeout(4000)  # the refresh that used to reload the page would have come by now
    assert page.locator("#deleted").count() == 1, page.locator("body").inner_text()
    report = page.locator("#report").inner_text()
    assert "airflow: cancelled DAG run" in report and "airflow: deleted DAG run" in report, report
    page.screenshot(path=str(artifacts / "console-08-delete-report.png"), full_page=True)
    status, _ = stack.request("GET", f"/airtune/api/jobs/{name}")
    assert status == 404
