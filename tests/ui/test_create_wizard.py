"""In a real browser (headless chromium, Playwright) against the real stack (tests/e2e/stack.py): the
jobs page's "New job" button and its create wizard (/airtune/create).

- a bad value and a cross-field error are shown at their fields, the start button stays disabled
  and no run is created;
- a job that does not fit its GPU (the GPU memory estimate over the GPU type's memory) is refused
  before submit, with the reason;
- the tiny job of tests/e2e/stack.py filled in through the wizard: its dataset preview (rows and
  counts as `airtune prepare` makes them), the pre-flight figures, then started and run to success.
Screenshots go to the artefacts folder (tests/ui/conftest.py)."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from airtune.spec import FIELDS

pytestmark = pytest.mark.slow

FIELD = {f.name: f for f in FIELDS}


def login(page, stack) -> None:
    page.goto(f"{stack.url}/")
    page.wait_for_selector("input[name=username]")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", stack.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/" not in url)


def open_wizard(page, stack, lang: str | None = None) -> None:
    page.goto(f"{stack.url}/airtune/jobs")
    page.click("#new-job")
    page.wait_for_url(re.compile(r"/airtune/create"))
    if lang:
        page.goto(f"{stack.url}/airtune/create?lang={lang}")
    page.wait_for_function("document.getElementById('check-status').textContent !== ''")


def reveal(page, name: str) -> None:
    """Go to the field's step (sections 4 and 5 are under step 3, collapsed)."""
    section = FIELD[name].section
    page.click(f"#tab-{min(section - 1, 2)}")
    if section >= 4:
        details = page.locator(f"#section-{section}")
        if details.get_attribute("open") is None:
            details.locator("summary").click()


def put(page, name: str, value) -> None:
    reveal(page, name)
    f = FIELD[name]
    el = f"#in-{name}"
    if f.kind == "names":
        for v in value:
            page.check(f"{el} input[value='{v}']")
    elif page.locator(el).evaluate("e => e.tagName") == "SELECT":
        page.select_option(el, str(value))
    else:
        page.fill(el, str(value))


def settled(page) -> None:
    """The last check's answer is shown (the page checks 250 ms after the last change)."""
    page.wait_for_timeout(400)
    page.wait_for_function("!['checking…', '检查中…'].includes(document.getElementById('check-status').textContent)")


def runs_of(stack, name: str) -> list[str]:
    status, body = stack.request("GET", "/api/v2/dags/airtune_finetune/dagRuns?limit=100&order_by=-start_date")
    assert status == 200, body
    return [r["dag_run_id"] for r in body["dag_runs"] if (r.get("conf") or {}).get("name") == name]


def test_errors_at_their_fields_and_no_run(page, airflow_stack, artifacts):
    from e2e.stack import unique

    stack = airflow_stack
    name = unique("wiz-bad")
    login(page, stack)
    open_wizard(page, stack)
    page.screenshot(path=str(artifacts / "wizard-01-step1.png"), full_page=True)
    put(page, "name", name)
    put(page, "base_model", "tiny-llama-dev")
    put(page, "dataset", ["alpaca_en_demo"])
    put(page, "finetuning_method", "full")
    put(page, "learning_rate", "-1")  # a bad value
    put(page, "lora_rank", "4")  # only with lora: a cross-field error
    settled(page)
    page.wait_for_selector("#err-learning_rate:not([hidden])")
    assert "must be > 0 and <= 1" in page.inner_text("#err-learning_rate")
    assert "used only with finetuning_method lora" in page.inner_text("#err-lora_rank")
    # ... and at the field the rule names
    assert "lora_rank" in page.inner_text("#err-finetuning_method") or FIELD["lora_rank"].label("en") in page.inner_text("#err-finetuning_method")
    assert page.is_disabled("#submit")
    assert "2 error(s)" in page.inner_text("#submit-reason")
    page.click("#tab-1")
    page.locator("#field-learning_rate").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "wizard-02-bad-value.png"), full_page=True)
    page.click("#tab-0")
    page.screenshot(path=str(artifacts / "wizard-03-cross-field-at-finetuning-method.png"), full_page=True)
    # the button cannot be used; a forced call to the endpoint is refused the same way
    status, body = stack.request("POST", "/airtune/api/create/submit", {"values": {"name": name, "base_model": "tiny-llama-dev",
                                 "dataset": ["alpaca_en_demo"], "learning_rate": -1}})
    assert status == 422, body
    assert runs_of(stack, name) == []

    # the same page in Chinese: the table's labels, the errors at the same fields
    open_wizard(page, stack, lang="zh")
    put(page, "name", name)
    put(page, "learning_rate", "-1")
    settled(page)
    page.click("#tab-1")
    page.wait_for_selector("#err-learning_rate:not([hidden])")
    assert FIELD["learning_rate"].label("zh") in page.inner_text("#field-learning_rate")
    assert "可接受" in page.inner_text("#err-learning_rate")
    assert "须为 > 0 且 <= 1" in page.inner_text("#err-learning_rate")  # the message itself in Chinese
    assert "must be" not in page.inner_text("#err-learning_rate")
    page.screenshot(path=str(artifacts / "wizard-04-zh-error.png"), full_page=True)


def test_a_job_that_does_not_fit_is_refused_before_submit(page, airflow_stack, artifacts):
    from e2e.stack import unique

    stack = airflow_stack
    name = unique("wiz-big")
    login(page, stack)
    open_wizard(page, stack)
    put(page, "name", name)
    put(page, "location", "k8s-example")
    # gpu_type offers the chosen location's GPU types only
    reveal(page, "gpu_type")
    options = page.locator("#in-gpu_type option").evaluate_all("os => os.map(o => o.value)")
    assert options == ["nvidia-h100-80gb", "nvidia-a100-80gb", "nvidia-t4"], options
    put(page, "gpu_type", "nvidia-t4")
    put(page, "gpus_per_node", 1)
    put(page, "base_model", "qwen2.5-7b-instruct")
    put(page, "dataset", ["alpaca_en_demo"])
    put(page, "finetuning_method", "full")
    settled(page)
    page.wait_for_selector("#memory-verdict[data-fits=no]")
    assert "16 GiB" in page.inner_text("#memory")
    assert page.is_disabled("#submit")
    reason = page.inner_text("#submit-reason")
    assert "does not fit" in reason and "GPU memory" in reason and "nvidia-t4" in reason
    page.screenshot(path=str(artifacts / "wizard-05-does-not-fit.png"), full_page=True)
    assert runs_of(stack, name) == []


def test_create_a_tiny_job_through_the_wizard(page, airflow_stack, artifacts):
    from e2e.stack import tiny_job, unique

    stack = airflow_stack
    job = tiny_job(unique("wiz-ok"))
    login(page, stack)
    open_wizard(page, stack)
    for key in ("name", "base_model", "dataset", "finetuning_method", "stage", "max_samples", "cutoff_len",
                "per_device_train_batch_size", "num_train_epochs", "logging_steps", "save_steps", "val_size",
                "learning_rate"):
        put(page, key, job[key])
    settled(page)
    page.wait_for_function("document.getElementById('check-status').textContent === 'no errors'")
    assert page.inner_text("[data-auto=template]") == "chatml"
    assert page.inner_text("[data-auto=compute_type]") == "fp32"  # on the CPU (location local, gpu_type cpu)

    # the dataset preview: rows and counts as the data step makes them (16 rows, 13 longer than 64 tokens)
    page.click("#preview-button")
    page.wait_for_selector("#preview-rows .prow", timeout=120_000)
    assert page.inner_text("#count-rows").strip() == "16"
    assert page.inner_text("#count-truncated").strip() == "13"
    assert page.locator("#preview-rows .prow").count() == 5
    first = page.locator("#preview-rows .prow").first
    assert "<|im_start|>user" in first.locator(".seg-prompt").first.inner_text()
    assert first.locator(".seg-trained").count() >= 1
    assert page.inner_text("#steps-per-epoch").strip() == "2"
    assert "estimate" in page.inner_text("#time-estimate")
    page.locator("#preview").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "wizard-06-preview-and-preflight.png"), full_page=True)

    assert not page.is_disabled("#submit")
    page.click("#submit")
    page.wait_for_url(re.compile(rf"/airtune/jobs/{job['name']}\?run="), timeout=60_000)
    run_id = re.search(r"run=([^&]+)", page.url).group(1)
    from urllib.parse import unquote

    run_id = unquote(run_id)
    assert runs_of(stack, job["name"]) == [run_id]
    run = stack.wait_run(run_id, timeout=300)
    assert run["state"] == "success", stack.task_states(run_id)
    assert run["conf"]["name"] == job["name"] and run["conf"]["cutoff_len"] == 64
    page.goto("about:blank")  # the page reloads itself when the run ends: a reload of ours would race it
    page.goto(f"{stack.url}/airtune/jobs/{job['name']}?run={quote(run_id)}")
    page.wait_for_selector("#run-state.state-success")
    page.screenshot(path=str(artifacts / "wizard-07-job-succeeded.png"), full_page=True)
