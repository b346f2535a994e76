"""In a real browser (headless chromium, Playwright): log in to Airflow, open airtune_finetune's
trigger form, check its sections and labels (English), fill in a job and trigger it, see the run
succeed; then open the jobs page (the airtune_jobs plugin, inside Airflow's UI), its detail view, ask
the trained model a question in its "Try it" box, and delete the job there after typing its name.
Screenshots are kept as test artefacts."""

from __future__ import annotations

import re
import time

import pytest

from airtune.spec import FIELDS, SECTIONS

pytestmark = pytest.mark.slow

FIELD = {f.name: f for f in FIELDS}


def login(page, stack) -> None:
    page.goto(f"{stack.url}/")
    page.wait_for_selector("input[name=username]")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", stack.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/" not in url)


def field(dialog, label: str):
    """A form row (Chakra's field group) by its exact label."""
    return dialog.locator("[data-scope=field][data-part=root]").filter(
        has=dialog.page.locator("label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*\*?\s*$")))


def choose(dialog, name: str, value: str) -> None:
    """Pick `value` in the select of param `name` (react-select: type, then Enter)."""
    box = dialog.locator(f"#element_{name} input[role=combobox]")
    box.click()
    box.fill(value)
    dialog.page.keyboard.press("Enter")


def number(dialog, label: str, value) -> None:
    box = field(dialog, label).locator("input[role=spinbutton]")
    box.fill(str(value))
    box.press("Tab")


def open_section(dialog, title: str) -> None:
    trigger = dialog.locator("[data-scope=accordion][data-part=item-trigger]", has_text=title)
    if trigger.get_attribute("aria-expanded") != "true":
        trigger.click()


def test_trigger_form_run_and_jobs_page(page, airflow_stack, artifacts):
    from e2e.stack import unique

    stack = airflow_stack
    JOB = unique("ui-job")
    login(page, stack)

    # --- the trigger form: docs/form.md's sections in order (Airflow's own "Advanced Options" after them)
    page.goto(f"{stack.url}/dags/airtune_finetune")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.locator("[data-scope=accordion][data-part=item-trigger]").first.wait_for()
    sections = [t.strip() for t in dialog.locator("[data-scope=accordion][data-part=item-trigger]").all_inner_texts()]
    expected = [s.title("en") for s in SECTIONS]
    assert sections[: len(expected)] == expected, sections
    page.screenshot(path=str(artifacts / "01-trigger-form-sections.png"))

    # section 1: labels and help text from the spec, readable enum names, required fields marked
    open_section(dialog, expected[0])
    for name in ("name", "location", "base_model", "template", "finetuning_method", "stage", "dataset"):
        row = field(dialog, FIELD[name].label("en"))
        assert row.count() == 1, name
        assert FIELD[name].help("en")[:60] in row.inner_text(), name
    assert "local (this machine)" in field(dialog, FIELD["location"].label("en")).inner_text()
    assert "*" in field(dialog, FIELD["base_model"].label("en")).locator("label").inner_text()  # required
    # each drop-down lists each value once: no "(default: sft)" entry beside sft, which is pre-selected
    box = dialog.locator("#element_stage input[role=combobox]")
    box.click()
    menu = dialog.locator("#element_stage [role=option]")  # react-select's menu, inside its container
    menu.first.wait_for()
    options = [o.strip() for o in menu.all_inner_texts()]
    assert len(options) == len(FIELD["stage"].choices) == len(set(options)), options
    assert not any("default" in o for o in options), options
    page.screenshot(path=str(artifacts / "01b-trigger-form-stage-options.png"))
    box.fill("sft: supervised")  # close the menu by picking the default again (Escape would close the dialog)
    page.keyboard.press("Enter")
    assert "sft: supervised fine-tuning" in field(dialog, FIELD["stage"].label("en")).inner_text()

    dialog.locator("#element_name").fill(JOB)
    choose(dialog, "base_model", "tiny-llama-dev")
    choose(dialog, "dataset", "alpaca_en_demo")
    assert "tiny-llama-dev" in field(dialog, FIELD["base_model"].label("en")).inner_text()

    # section 2: numbers with their limits; a tiny job (16 rows, 2 steps)
    open_section(dialog, expected[1])
    lr = field(dialog, FIELD["learning_rate"].label("en"))
    assert FIELD["learning_rate"].help("en")[:40] in lr.inner_text()
    number(dialog, FIELD["max_samples"].label("en"), 16)
    number(dialog, FIELD["cutoff_len"].label("en"), 64)
    number(dialog, FIELD["num_train_epochs"].label("en"), 1)
    number(dialog, FIELD["learning_rate"].label("en"), 0.005)
    page.screenshot(path=str(artifacts / "02-trigger-form-filled.png"))
    open_section(dialog, expected[2])
    number(dialog, FIELD["logging_steps"].label("en"), 1)
    page.screenshot(path=str(artifacts / "03-trigger-form-advanced.png"))

    submit = dialog.get_by_test_id("trigger-dag-submit")
    assert submit.is_enabled()
    submit.click()
    deadline = time.monotonic() + 60
    run = None
    while run is None and time.monotonic() < deadline:
        _, body = stack.request("GET", "/api/v2/dags/airtune_finetune/dagRuns?limit=100&order_by=-run_after")
        run = next((r for r in body["dag_runs"] if (r.get("conf") or {}).get("name") == JOB), None)
        time.sleep(1)
    assert run is not None, "the form's Trigger created no run"
    # what the form sent: the values typed, the rest defaults (or empty, for 'auto by context' fields)
    conf = run["conf"]
    assert (conf["base_model"], conf["dataset"], conf["max_samples"], conf["cutoff_len"], conf["logging_steps"]) == (
        "tiny-llama-dev", ["alpaca_en_demo"], 16, 64, 1), conf
    assert conf["location"] == "local" and conf["stage"] == "sft"

    # --- the run succeeds, as Airflow's own run page shows it
    final = stack.wait_run(run["dag_run_id"], timeout=300)
    assert final["state"] == "success", stack.task_states(run["dag_run_id"])
    page.goto(f"{stack.url}/dags/airtune_finetune/runs/{run['dag_run_id']}")
    page.get_by_text(re.compile("^success$", re.I)).first.wait_for()
    page.screenshot(path=str(artifacts / "04-run-succeeded.png"))

    # --- the jobs page, in Airflow's navigation (an external view: an iframe on /airtune/jobs)
    page.goto(f"{stack.url}/")
    page.get_by_role("link", name=re.compile("Fine-tuning")).first.click()
    frame = page.frame_locator("iframe").first
    row = frame.locator(f"#jobs tr[data-job='{JOB}']")
    row.wait_for()
    cells = [c.strip() for c in row.locator("td").all_inner_texts()]
    assert cells[:5] == [JOB, "success", "tiny-llama-dev", "lora", "sft"], cells
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", cells[5]) and re.match(r"(\d+m )?\d+s", cells[6]), cells
    assert re.match(r"(eval_loss|loss) \d", cells[7]), cells  # the best metric
    page.screenshot(path=str(artifacts / "05-jobs-page.png"))

    # --- the detail view (opened on its own, as the link in the iframe points to it)
    row.get_by_role("link", name=JOB).click()
    frame.locator("#tasks tr[data-task='train_local']").wait_for()
    page.goto(f"{stack.url}/airtune/jobs/{JOB}")
    tasks = {r.get_attribute("data-task"): r.locator("td").nth(1).inner_text().strip() for r in page.locator("#tasks tbody tr").all()}
    for task_id in ("validate", "prepare_dataset", "train_local", "register", "cleanup"):
        assert tasks[task_id] == "success", tasks
    # the log tail, loaded by the page: the training's for a finished run; any task's on a click
    page.wait_for_function("document.getElementById('log').textContent.includes('[airtune] done:')")
    assert "train_local" in page.locator("#log-task").inner_text()
    page.locator("[data-log-task=validate]").click()
    page.wait_for_function("document.getElementById('log').textContent.includes('resolved spec written')")
    # the loss curve: a PNG drawn on request, so wait for it to load (it fails the test if it never does)
    page.wait_for_function("() => { const i = document.getElementById('curves'); "
                           "return i !== null && i.complete && i.naturalWidth > 300; }", timeout=30_000)
    assert "final" in page.locator("#checkpoints").inner_text()
    assert f"{JOB} version 1" in page.locator("#registered").inner_text()
    assert page.locator("#airflow-link").get_attribute("href").startswith(f"{stack.url}/dags/airtune_finetune/runs/")
    assert page.locator("#mlflow-link").get_attribute("href").startswith(f"{stack.mlflow_url}/#/experiments/")
    spec = page.locator("#spec").inner_text()
    assert "template\tchatml" in spec and "cutoff_len\t64" in spec, spec  # the resolved spec
    page.screenshot(path=str(artifacts / "06-job-detail.png"), full_page=True)

    # --- "Try it": one prompt to the registered version, answered by `airtune generate` in a process of its own
    about = page.locator("#try-about").inner_text()
    assert f"{JOB} version 1" in about and "greedy" in about, about
    page.locator("#try-prompt").fill("Give three tips for staying healthy.")
    page.locator("#try-button").click()
    page.wait_for_selector("#try-answer[data-state]", timeout=150_000)
    answer = page.locator("#try-answer")
    assert answer.get_attribute("data-state") == "answer", answer.inner_text()
    assert answer.inner_text().strip() and not answer.inner_text().startswith("(an empty answer"), answer.inner_text()
    assert page.locator("#try-status").inner_text().startswith("version 1 · ")
    page.screenshot(path=str(artifacts / "06b-try-it.png"), full_page=True)

    # --- delete, after typing the job's name
    page.locator("#delete summary").click()
    assert page.locator("#delete-button").is_disabled()
    page.locator("#delete-confirm").fill(JOB[:-1])
    assert page.locator("#delete-button").is_disabled()
    page.locator("#delete-confirm").fill(JOB)
    page.screenshot(path=str(artifacts / "07-delete-confirm.png"))
    page.locator("#delete-button").click()
    page.locator("#deleted").wait_for(timeout=180_000)
    report = page.locator("#report").inner_text()
    assert f"mlflow: deleted registered model {JOB}" in report and "airflow: deleted DAG run" in report, report
    page.screenshot(path=str(artifacts / "08-deleted.png"))
    status, _ = stack.request("GET", f"/airtune/api/jobs/{JOB}")
    assert status == 404
    assert not (stack.home / "workspace" / "jobs" / JOB).exists()


def test_jobs_page_needs_a_login(page, airflow_stack):
    page.goto(f"{airflow_stack.url}/airtune/jobs")
    page.wait_for_selector("input[name=username]")
    assert "/auth/login" in page.url
    status, body = airflow_stack.request("GET", "/airtune/api/jobs", token=False)
    assert status == 401, body
