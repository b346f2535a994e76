"""Retraining jobs: the files of configs/jobs/, read cheaply when dags/airtune_retrain.py is parsed.

A job file is a job (the flat mapping of docs/form.md's keys, as for `airtune run`) plus one key beside
it, `schedule`, which says when it retrains:

    schedule: "0 3 * * 1"                  # cron (or @daily, @weekly, ...): every Monday 03:00 UTC
    schedule: {assets: [airtune/alpaca]}   # when an Airflow asset is updated (a producing DAG, or
                                           # POST /api/v2/assets/events)
    schedule: {cron: "@weekly", assets: [airtune/alpaca]}   # either: AssetOrTimeSchedule
    schedule: {assets: [a, b], when: all}  # only after both were updated (default: any of them)

An asset is given by name (`airtune/alpaca`) or by URI (`s3://bucket/alpaca/`, `file:///data/x`).
The file's name is the job's: `configs/jobs/<name>.yaml` holds `name: <name>`, and becomes the DAG
`airtune_retrain__<name>`; each run registers a new version of the registered model `<name>`.

What is checked here, at parse time (no torch, transformers, datasets or mlflow): the YAML, the
schedule, every single-field and cross-field rule of airtune.spec and the catalog look-ups of
airtune.resolve. Rules that depend on other jobs (parent_job, reward_model), on this machine's GPUs
(location local with gpu_type auto) or on the TRL config (extra_args keys) are checked by the
run's validate task, as for any conf. A file that fails becomes a paused placeholder DAG naming the
file and the field (dags/airtune_retrain.py). `AIRTUNE_JOBS_DIR` moves the folder (default
`<AIRTUNE_CONFIG_DIR>/jobs`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from airtune import paths

DAG_PREFIX = "airtune_retrain__"
SCHEDULE_KEY = "schedule"
WHEN = ("any", "all")
CRON_PRESETS = ("@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")
# Fields whose rules need this machine's GPUs when location is local and gpu_type auto: the parse-time
# check cannot judge them (detecting the GPUs imports torch), the validate task does.
HARDWARE_FIELDS = {"gpus_per_node", "gpu_type", "compute_type", "booster", "distributed", "quantization_bit",
                   "quantization_method", "flash_attn"}
# Depend on other jobs, which may finish between parsing and the run: the validate task checks them.
RUN_TIME_FIELDS = {"parent_job", "reward_model"}
_ASSET_NAME = re.compile(r"^[A-Za-z0-9_./:@+\-]{1,1500}$")


def jobs_dir() -> Path:
    return Path(os.environ.get("AIRTUNE_JOBS_DIR") or (paths.config_dir() / "jobs")).resolve()


@dataclass(frozen=True)
class Schedule:
    cron: str | None = None
    assets: tuple[str, ...] = ()
    when: str = "any"

    def describe(self) -> str:
        parts = []
        if self.cron:
            parts.append(f"cron {self.cron} (UTC)")
        if self.assets:
            joined = f" {'and' if self.when == 'all' else 'or'} ".join(self.assets)
            parts.append(f"when {joined} {'are' if len(self.assets) > 1 and self.when == 'all' else 'is'} updated")
        return ", or ".join(parts)

    def airflow_schedule(self):
        """What `DAG(schedule=...)` takes: a cron string, an asset condition, or AssetOrTimeSchedule."""
        if not self.assets:
            return self.cron
        from airflow.sdk import Asset, AssetAll, AssetAny

        assets = [Asset(uri=a) if "://" in a else Asset(name=a) for a in self.assets]
        condition = assets[0] if len(assets) == 1 else (AssetAll if self.when == "all" else AssetAny)(*assets)
        if not self.cron:
            return condition
        from airflow.sdk import CronTriggerTimetable
        from airflow.sdk.definitions.timetables.assets import AssetOrTimeSchedule

        return AssetOrTimeSchedule(timetable=CronTriggerTimetable(self.cron, timezone="UTC"), assets=condition)


@dataclass(frozen=True)
class RetrainJob:
    """One file of configs/jobs/: its job mapping and schedule, or the first reason it is broken."""

    name: str
    path: Path
    mapping: dict[str, Any] = field(default_factory=dict)
    schedule: Schedule | None = None
    errors: tuple[str, ...] = ()  # "field: value is not accepted: why", each naming its field
    fields: tuple[str, ...] = ()  # the fields those errors are about

    @property
    def dag_id(self) -> str:
        return DAG_PREFIX + self.name

    @property
    def ok(self) -> bool:
        return not self.errors

    def problem(self) -> str:
        return f"{self.path.name}: " + "; ".join(self.errors)


class _Broken(Exception):
    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name
        self.message = message


def _cron(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Broken(where, f"{where}: {value!r} is not accepted: a cron expression such as '0 3 * * 1' or one of {', '.join(CRON_PRESETS)}")
    text = value.strip()
    if text in CRON_PRESETS:
        return text
    from croniter import croniter  # Airflow's own cron library (~0.1 s)

    if not croniter.is_valid(text):
        raise _Broken(where, f"{where}: {text!r} is not accepted: not a cron expression (minute hour day month weekday, "
                             f"e.g. '0 3 * * 1'); presets: {', '.join(CRON_PRESETS)}")
    return text


def parse_schedule(value: Any) -> Schedule:
    """The `schedule` key of a job file (module docstring), or _Broken naming the field."""
    if value is None:
        raise _Broken("schedule", "schedule: empty is not accepted: a retraining job needs a cron expression, "
                                  "{assets: [...]} or both (docs/retraining.md)")
    if isinstance(value, str):
        return Schedule(cron=_cron(value, "schedule"))
    if not isinstance(value, dict):
        raise _Broken("schedule", f"schedule: {value!r} is not accepted: a cron string or a mapping with cron and/or assets")
    unknown = sorted(set(value) - {"cron", "assets", "when"})
    if unknown:
        raise _Broken(f"schedule.{unknown[0]}", f"schedule.{unknown[0]}: unknown key; accepted: cron, assets, when")
    cron = _cron(value["cron"], "schedule.cron") if value.get("cron") is not None else None
    assets = value.get("assets")
    if isinstance(assets, str):
        assets = [assets]
    if assets is None:
        assets = []
    if not isinstance(assets, list) or not all(isinstance(a, str) and _ASSET_NAME.match(a) for a in assets):
        raise _Broken("schedule.assets", f"schedule.assets: {value.get('assets')!r} is not accepted: a list of asset names "
                                         "or URIs (letters, digits and _ . / : @ + -), e.g. [airtune/alpaca_en_demo]")
    when = value.get("when", "any")
    if when not in WHEN:
        raise _Broken("schedule.when", f"schedule.when: {when!r} is not accepted: any (a run when one of the assets "
                                       "is updated) or all (after every one was)")
    if not cron and not assets:
        raise _Broken("schedule", "schedule: neither cron nor assets given; accepted: a cron expression, assets, or both")
    return Schedule(cron=cron, assets=tuple(assets), when=when)


class _NoJobs:
    """parent_job / reward_model are looked up when the run starts, not at parse time."""

    def get(self, name: str) -> None:
        return None


# Stands in for this machine's GPUs at parse time (location local, gpu_type auto): permissive, and
# the errors on HARDWARE_FIELDS it might cause are not reported here.
_ANY_HARDWARE = {"cuda_devices": 1024, "bf16": True, "flash_attn": True, "eetq": True, "gpu_memory_gib": None}


def check_spec(mapping: dict) -> list:
    """The spec's errors that can be judged at parse time (a list of airtune.spec.FieldError)."""
    from airtune.catalog import Catalog
    from airtune.resolve import validate_mapping
    from airtune.spec import SpecError, parse_partial

    _, errors, bad = parse_partial(mapping)
    catalog = Catalog.load()
    local_auto = (mapping.get("location") or "local") in catalog.locations and catalog.location(
        mapping.get("location") or "local").is_local and (mapping.get("gpu_type") in (None, "", "auto"))
    # extra_args: its keys are checked against the stage's TRL config, which imports trl (and torch).
    cheap = {k: v for k, v in mapping.items() if k != "extra_args" and k not in bad}
    try:
        validate_mapping(cheap, catalog, hardware=_ANY_HARDWARE if local_auto else None, jobs=_NoJobs())
    except SpecError as exc:
        skip = RUN_TIME_FIELDS | (HARDWARE_FIELDS if local_auto else set())
        known = {(e.field, str(e.value)) for e in errors}
        errors += [e for e in exc.errors if e.field.split(".")[0] not in skip and (e.field, str(e.value)) not in known]
    return errors


def load_file(path: Path) -> RetrainJob:
    """One job file, never raising: a broken file comes back with its errors."""
    path = Path(path)
    stem = path.stem
    from airtune import jobfile

    try:
        data = jobfile.parse(path.read_text(encoding="utf-8"), "(file)")
    except (OSError, UnicodeDecodeError) as exc:
        return RetrainJob(stem, path, errors=(f"(file): not readable: {exc}",), fields=("(file)",))
    except jobfile.JobFileError as exc:
        message = str(exc)
        if "at the top is not accepted" in message:
            message += " plus `schedule`"
        return RetrainJob(stem, path, errors=(message,), fields=("(file)",))
    mapping = dict(data)
    errors: list[str] = []
    fields: list[str] = []
    schedule = None
    try:
        schedule = parse_schedule(mapping.pop(SCHEDULE_KEY, None))
    except _Broken as exc:
        errors.append(exc.message)
        fields.append(exc.field)
    if mapping.get("name") != stem:
        errors.append(f"name: {mapping.get('name')!r} is not accepted: a job file under configs/jobs/ is named after its "
                      f"job; this file, {path.name}, takes name: {stem} (or rename the file)")
        fields.append("name")
    # a retraining job promotes a better model by default when it has held-out data (docs/form.md#promote)
    if "promote" not in mapping:
        from airtune.promotion import retraining_default

        mapping["promote"] = retraining_default(mapping)
    for e in check_spec(mapping):
        if e.field == "name" and "name" in fields:
            continue
        errors.append(str(e))
        fields.append(e.field)
    if errors:
        return RetrainJob(_dag_safe(stem), path, mapping, schedule, tuple(errors), tuple(fields))
    return RetrainJob(stem, path, mapping, schedule)


def _dag_safe(stem: str) -> str:
    """A placeholder's name: the file's stem with what a DAG id does not take replaced."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", stem)[:200] or "unnamed"


def load_jobs(directory: Path | str | None = None) -> list[RetrainJob]:
    """Every *.yaml / *.yml of the folder, sorted by name; each file on its own (one broken file is one
    broken job, never an exception)."""
    root = Path(directory) if directory else jobs_dir()
    if not root.is_dir():
        return []
    files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith("."))
    jobs, seen = [], set()
    for p in files:
        job = load_file(p)
        if job.name in seen:  # a.yaml and a.yml: one name, two files
            job = RetrainJob(_dag_safe(p.name), p, job.mapping, job.schedule,
                             (f"name: {job.name!r} is not accepted: another file of {root} has this job name already",), ("name",))
        seen.add(job.name)
        jobs.append(job)
    return jobs
