"""Retraining DAGs from configs/jobs/: every shipped file is valid, each file becomes its DAG with its
schedule (cron, asset, either), the graph is airtune_finetune's, and a broken file becomes a paused
placeholder naming the file and the field without taking the other files' DAGs down."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import yaml

from airtune import retrain
from airtune.resolve import format_errors, validate_mapping
from airtune.spec import SpecError

REPO = Path(__file__).resolve().parents[1]
JOB_FILES = sorted((REPO / "configs" / "jobs").glob("*.yaml"))

GOOD = """\
schedule: {schedule}
name: {name}
base_model: tiny-llama-dev
dataset: [alpaca_en_demo]
max_samples: 40
"""


def test_configs_jobs_is_not_empty():
    assert len(JOB_FILES) >= 3


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_job_file_is_valid(path):
    """`make test` validates every file of configs/jobs/: the parse-time checks and the full validation
    the run's validate task does (catalog, hardware fit, resolve)."""
    job = retrain.load_file(path)
    assert job.ok, job.problem()
    assert job.name == path.stem and job.schedule is not None
    try:
        resolved = validate_mapping(job.mapping)
    except SpecError as exc:
        pytest.fail(f"{path.name}: {format_errors(exc)}")
    assert resolved["spec"]["name"] == path.stem


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_job_file_explains_itself(path):
    """Like torchtune's recipes: a header comment, and comments on the knobs (with numbers)."""
    text = path.read_text()
    assert text.startswith("#")
    commented = [line for line in text.splitlines() if not line.startswith("#") and " # " in line]
    assert len(commented) >= 4, f"{path.name}: comment what the knobs do"


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize(
    "schedule, kind",
    [("'0 3 * * 1'", "cron"), ("'@daily'", "cron"), ("{assets: [airtune/x]}", "asset"),
     ("{assets: [airtune/x, 's3://bucket/y/'], when: all}", "all"), ("{cron: '@weekly', assets: [airtune/x]}", "either")],
)
def test_schedules(tmp_path, schedule, kind):
    from airflow.sdk import Asset, AssetAll
    from airflow.sdk.definitions.timetables.assets import AssetOrTimeSchedule

    job = retrain.load_file(_write(tmp_path, "j.yaml", GOOD.format(schedule=schedule, name="j")))
    assert job.ok, job.problem()
    s = job.schedule.airflow_schedule()
    if kind == "cron":
        assert isinstance(s, str) and s == yaml.safe_load(schedule)
    elif kind == "asset":
        assert isinstance(s, Asset) and s.name == "airtune/x"
    elif kind == "all":
        assert isinstance(s, AssetAll) and {a.uri for a in s.objects} == {"airtune/x", "s3://bucket/y"}  # Airflow drops the trailing /
    else:
        assert isinstance(s, AssetOrTimeSchedule)
        assert s.timetable.expression in ("@weekly", "0 0 * * 0")


@pytest.mark.parametrize(
    "text, field, words",
    [
        (GOOD.format(schedule="'61 * * * *'", name="j"), "schedule", "not a cron expression"),
        (GOOD.format(schedule="{cron: '@daily', every: 2}", name="j"), "schedule.every", "accepted: cron, assets, when"),
        (GOOD.format(schedule="{assets: [airtune/x], when: most}", name="j"), "schedule.when", "any"),
        (GOOD.format(schedule="{assets: 'has space'}", name="j"), "schedule.assets", "asset names"),
        (GOOD.replace("schedule: {schedule}\n", ""), "schedule", "needs a cron"),
        (GOOD.format(schedule="'@daily'", name="other"), "name", "takes name: j"),
        (GOOD.format(schedule="'@daily'", name="j") + "learning_rate: -1\n", "learning_rate", "-1"),
        (GOOD.format(schedule="'@daily'", name="j") + "epochs: 3\n", "epochs", "num_train_epochs"),
        (GOOD.format(schedule="'@daily'", name="j").replace("tiny-llama-dev", "gpt-9"), "base_model", "gpt-9"),
        (GOOD.format(schedule="'@daily'", name="j") + "location: mars\n", "location", "mars"),
        ("name: j\nschedule: [unclosed\n", "(file)", "not readable YAML (line 3"),
        ("- a list\n", "(file)", "one flat mapping"),
    ],
)
def test_broken_files_name_the_field(tmp_path, text, field, words):
    job = retrain.load_file(_write(tmp_path, "j.yaml", text))
    assert not job.ok
    assert field in job.fields, job.problem()
    assert words in job.problem()
    assert job.problem().startswith("j.yaml: ")


def test_run_time_rules_are_left_to_validate(tmp_path):
    """parent_job depends on other jobs, which may finish after parsing: not judged at parse time."""
    job = retrain.load_file(_write(tmp_path, "j.yaml", GOOD.format(schedule="'@daily'", name="j") + "parent_job: not-yet\n"))
    assert job.ok, job.problem()


def test_parse_time_check_imports_nothing_heavy(tmp_path):
    import subprocess
    import sys

    _write(tmp_path, "j.yaml", GOOD.format(schedule="'@daily'", name="j") + "extra_args: {dataloader_num_workers: 0}\n")
    code = f"""
import sys
from airtune import retrain
jobs = retrain.load_jobs({str(tmp_path)!r})
assert jobs[0].ok, jobs[0].problem()
print([m for m in ("torch", "transformers", "datasets", "mlflow", "trl", "peft") if m in sys.modules])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture
def jobs_bag(tmp_path, monkeypatch):
    """The DAG folder parsed with a jobs folder of one good, two broken files and a duplicate name."""
    jobs = tmp_path / "jobs"
    _write(jobs, "good.yaml", GOOD.format(schedule="{assets: [airtune/good-data]}", name="good"))
    _write(jobs, "cronjob.yaml", GOOD.format(schedule="'15 4 * * *'", name="cronjob"))
    _write(jobs, "bad-lr.yaml", GOOD.format(schedule="'@daily'", name="bad-lr") + "learning_rate: -1\n")
    _write(jobs, "bad-yaml.yaml", "name: bad-yaml\nschedule: [\n")
    _write(jobs, "good.yml", GOOD.format(schedule="'@daily'", name="good"))
    monkeypatch.setenv("AIRTUNE_JOBS_DIR", str(jobs))
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path / "airflow"))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_each_file_becomes_a_dag_and_broken_ones_placeholders(jobs_bag):
    assert jobs_bag.import_errors == {}
    ids = set(jobs_bag.dags)
    assert {"airtune_finetune", "airtune_retrain__good", "airtune_retrain__cronjob",
            "airtune_retrain__bad-lr", "airtune_retrain__bad-yaml", "airtune_retrain__good.yml"} <= ids

    cron = jobs_bag.dags["airtune_retrain__cronjob"]
    assert cron.timetable.expression == "15 4 * * *"
    assert cron.max_active_runs == 1 and "retraining" in cron.tags

    bad = jobs_bag.dags["airtune_retrain__bad-lr"]
    assert bad.is_paused_upon_creation is True
    assert "bad-lr.yaml" in bad.description and "learning_rate" in bad.description
    assert len(bad.tasks) == 1
    (t,) = bad.tasks
    assert "bad-lr.yaml" in t.task_id and "learning_rate" in t.task_id
    with pytest.raises(ValueError, match="learning_rate"):
        t.python_callable()
    assert "(file)" in jobs_bag.dags["airtune_retrain__bad-yaml"].description
    assert "another file" in jobs_bag.dags["airtune_retrain__good.yml"].description


def test_retraining_dag_builds_the_finetune_graph(jobs_bag):
    """One function builds both graphs: same task ids, same edges, same trigger rules and retries."""
    def shape(dag):
        return {t.task_id: (sorted(t.downstream_task_ids), t.trigger_rule, t.retries, t.is_teardown) for t in dag.tasks}

    finetune = jobs_bag.dags["airtune_finetune"]
    retraining = jobs_bag.dags["airtune_retrain__good"]
    assert shape(retraining) == shape(finetune)
    assert finetune.get_task("train_local").pool == "airtune_local"
    assert retraining.get_task("train_local").pool == "airtune_local"
    assert retraining.params == {} or not retraining.params  # the file is the job, not a form
