"""The resolved spec as typed, frozen records: what `airtune.resolve` builds and `<job>/spec.json` holds.

    Resolved
      format_version   int: the shape of spec.json (FORMAT_VERSION); a file without it is format 1
      airtune_version  the airtune that wrote it
      spec             JobSettings: every field of the job form (airtune.spec's table), each `auto` resolved
      model            ModelRecord | None        the catalog model (weights: a path or a hub id)
      template         TemplateRecord | None     the chat template's name and file
      datasets         tuple[DatasetRecord]      the training datasets (catalog entries)
      eval_datasets    tuple[DatasetRecord]      the held-out datasets
      benchmarks       tuple[BenchmarkRecord]
      location         LocationRecord | None     the locations.yaml entry (its other keys in `settings`)
      runtime          Runtime                   nodes, GPUs, world size, device
      parent           EarlierJob | None         parent_job's finished run
      reward_model     EarlierJob | None         reward_model's finished rm run
      estimate         Estimate                  the GPU memory estimate (empty on the CPU)
      warnings         tuple[str]
      tracking         Tracking | None           set by the validate task (MLflow run, DAG run)

`JobSettings` is generated from the job spec's field table (`airtune.spec.FIELDS`): one field per
row, its default the table's, so a new form field needs no edit here. `Resolved.from_json` reads a
spec.json (or the dict `resolve.validate_mapping` returns); `to_json` gives that dict back, key for key.

Reading an older spec.json: a file without `format_version` is format 1 (the shape before the field
was written; nothing else differs). Spec keys it lacks (fields added to the form since) take the
table's defaults; a key the table does not have, or a format newer than this airtune reads, is a
`ResolvedSpecError` naming it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from airtune.spec import FIELDS

FORMAT_VERSION = 1


class ResolvedSpecError(ValueError):
    """A spec.json this airtune cannot read (a newer format, an unknown key, a missing part)."""


def _freeze(value: Any) -> Any:
    """Lists as tuples (a frozen record's lists cannot change); dicts copied."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def _thaw(value: Any) -> Any:
    """The JSON form: tuples as lists, dicts copied."""
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def _build(cls, data: Mapping | None, what: str):
    """A record from its JSON object: keys it lacks take the record's defaults; an unknown key is refused."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ResolvedSpecError(f"spec.json: {what} is {type(data).__name__}, not an object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ResolvedSpecError(f"spec.json: {what} has key(s) this airtune does not know: {', '.join(unknown)}")
    return cls(**{k: _freeze(v) for k, v in data.items()})


def _dump(record, *, drop_none: tuple = ()) -> dict:
    out = {f.name: _thaw(getattr(record, f.name)) for f in dataclasses.fields(record)}
    for name in drop_none:
        if out.get(name) is None:
            out.pop(name, None)
    return out


# -- the job's settings: one field per row of airtune.spec's table ----------------------------------

_TYPES = {"str": "str | None", "choice": "str | None", "int": "int | None", "float": "float | None",
          "bool": "bool | None", "names": "tuple[str, ...] | None", "target": "str | tuple[str, ...] | None",
          "object": "dict"}


def _settings_field(info) -> tuple:
    default = info.default
    if isinstance(default, dict):
        return info.name, _TYPES.get(info.kind, "Any"), field(default_factory=lambda d=default: json.loads(json.dumps(d)))
    return info.name, _TYPES.get(info.kind, "Any"), field(default=_freeze(default))


JobSettings = dataclasses.make_dataclass(
    "JobSettings", [_settings_field(f) for f in FIELDS], frozen=True,
    namespace={"__module__": __name__, "__doc__": "Every field of the job form (airtune.spec.FIELDS), resolved: `auto` replaced, the "
                          "defaults that depend on the method or stage applied (None where an option does not apply)."},
)


def settings_from_json(data: Mapping) -> Any:
    return _build(JobSettings, data, "spec")


# -- the other parts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRecord:
    name: str | None = None
    family: str | None = None
    kind: str | None = None
    template: str | None = None
    context_length: int | None = None
    params_b: float | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    weights: str | None = None
    revision: str | None = None
    rope_factor: int | None = None


@dataclass(frozen=True)
class TemplateRecord:
    name: str
    path: str | None = None


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    format: str | None = None
    kind: str | None = None
    files: tuple[str, ...] = ()
    columns: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    fill: dict | None = None  # written only when the catalog entry has one

    def to_json(self) -> dict:
        return _dump(self, drop_none=("fill",))


@dataclass(frozen=True)
class BenchmarkRecord:
    name: str
    files: tuple[str, ...] = ()
    lang: str | None = None


_LOCATION_KEYS = ("name", "kind", "gpu_quota", "connection_id", "namespace", "image", "gpu_type")


@dataclass(frozen=True)
class LocationRecord:
    """The job's locations.yaml entry: the keys every location has, the chosen GPU type, the rest in `settings`
    (the Kubernetes launcher reads gpu_types, tolerations, ...: `settings.get(key)`)."""

    name: str
    kind: str | None = None
    gpu_quota: int | None = None
    connection_id: str | None = None
    namespace: str | None = None
    image: str | None = None
    gpu_type: dict | None = None
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping | None) -> LocationRecord | None:
        if data is None:
            return None
        known = {k: _freeze(data[k]) for k in _LOCATION_KEYS if k in data}
        return cls(**known, settings={k: _thaw(v) for k, v in data.items() if k not in _LOCATION_KEYS})

    def to_json(self) -> dict:
        return {**_thaw(self.settings), **{k: _thaw(getattr(self, k)) for k in _LOCATION_KEYS}}


@dataclass(frozen=True)
class Runtime:
    nodes: int = 1
    gpus_per_node: int = 0
    world_size: int = 1
    device: str = "cpu"
    processes_per_node: int = 1
    gpu_type: str | None = None


@dataclass(frozen=True)
class EarlierJob:
    """A finished earlier job (parent_job, reward_model)."""

    name: str | None = None
    run_id: str | None = None
    job_dir: str | None = None
    stage: str | None = None
    finetuning_method: str | None = None
    base_model: str | None = None
    template: str | None = None
    final_dir: str | None = None
    adapter: bool = False


_ESTIMATE_OPTIONAL = ("gpu_memory_gib_certain", "row_tokens", "parts_gib", "trainable_params", "gpu_memory_gib_available")


@dataclass(frozen=True)
class Estimate:
    """resolve.estimate_gpu_memory's figures (only gpu_memory_gib_per_process, None, on the CPU)."""

    gpu_memory_gib_per_process: float | None = None
    gpu_memory_gib_certain: float | None = None
    row_tokens: int | None = None
    parts_gib: dict | None = None
    trainable_params: int | None = None
    gpu_memory_gib_available: float | None = None

    def to_json(self) -> dict:
        out = _dump(self)
        computed = self.gpu_memory_gib_certain is not None
        for name in _ESTIMATE_OPTIONAL:
            if out[name] is None and not (computed and name == "gpu_memory_gib_available"):
                del out[name]
        return out


@dataclass(frozen=True)
class Tracking:
    mlflow_run_id: str | None = None
    dag_id: str | None = None
    run_id: str | None = None


# -- the whole -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    spec: Any  # JobSettings
    model: ModelRecord | None = None
    template: TemplateRecord | None = None
    datasets: tuple[DatasetRecord, ...] = ()
    eval_datasets: tuple[DatasetRecord, ...] = ()
    benchmarks: tuple[BenchmarkRecord, ...] = ()
    location: LocationRecord | None = None
    runtime: Runtime = field(default_factory=Runtime)
    parent: EarlierJob | None = None
    reward_model: EarlierJob | None = None
    estimate: Estimate = field(default_factory=Estimate)
    warnings: tuple[str, ...] = ()
    tracking: Tracking | None = None
    airtune_version: str | None = None
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, data: Mapping) -> Resolved:
        """From spec.json's object (see the module's docstring for older files)."""
        if not isinstance(data, Mapping):
            raise ResolvedSpecError(f"spec.json holds {type(data).__name__}, not an object")
        version = data.get("format_version", 1)
        if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
            raise ResolvedSpecError(f"spec.json is format {version!r}; this airtune reads formats 1 to "
                                    f"{FORMAT_VERSION} (a newer airtune wrote it: read it with that one)")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ResolvedSpecError(f"spec.json has key(s) this airtune does not know: {', '.join(unknown)}")
        if not isinstance(data.get("spec"), Mapping):
            raise ResolvedSpecError("spec.json has no spec (the job's settings)")
        rm = data.get("reward_model")
        if isinstance(rm, str):  # a bare folder (older hand-written specs): the rm job's final_dir
            rm = {"final_dir": rm}
        return cls(
            format_version=version,
            airtune_version=data.get("airtune_version"),
            spec=settings_from_json(data["spec"]),
            model=_build(ModelRecord, data.get("model"), "model"),
            template=_build(TemplateRecord, data.get("template"), "template"),
            datasets=tuple(_build(DatasetRecord, d, "a dataset") for d in data.get("datasets") or ()),
            eval_datasets=tuple(_build(DatasetRecord, d, "an eval dataset") for d in data.get("eval_datasets") or ()),
            benchmarks=tuple(_build(BenchmarkRecord, b, "a benchmark") for b in data.get("benchmarks") or ()),
            location=LocationRecord.from_json(data.get("location")),
            runtime=_build(Runtime, data.get("runtime") or {}, "runtime"),
            parent=_build(EarlierJob, data.get("parent"), "parent"),
            reward_model=_build(EarlierJob, rm, "reward_model"),
            estimate=_build(Estimate, data.get("estimate") or {}, "estimate"),
            warnings=tuple(data.get("warnings") or ()),
            tracking=_build(Tracking, data.get("tracking"), "tracking"),
        )

    def to_json(self) -> dict:
        """spec.json's object (JSON-able: lists, dicts, numbers, strings)."""
        out = {
            "format_version": self.format_version,
            "airtune_version": self.airtune_version,
            "spec": _dump(self.spec),
            "model": _dump(self.model) if self.model else None,
            "template": _dump(self.template) if self.template else None,
            "datasets": [d.to_json() for d in self.datasets],
            "eval_datasets": [d.to_json() for d in self.eval_datasets],
            "benchmarks": [_dump(b) for b in self.benchmarks],
            "location": self.location.to_json() if self.location else None,
            "runtime": _dump(self.runtime),
            "parent": _dump(self.parent) if self.parent else None,
            "reward_model": _dump(self.reward_model) if self.reward_model else None,
            "estimate": self.estimate.to_json(),
            "warnings": list(self.warnings),
        }
        if self.tracking is not None:
            out["tracking"] = _dump(self.tracking)
        return out


def as_resolved(resolved: Resolved | Mapping) -> Resolved:
    """A Resolved from either a Resolved or spec.json's dict (what the steps are handed)."""
    return resolved if isinstance(resolved, Resolved) else Resolved.from_json(resolved)


def load(path) -> Resolved:
    """Read a spec.json file."""
    from pathlib import Path

    return Resolved.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def as_settings(spec) -> Any:
    """A JobSettings from either a JobSettings or a spec mapping (missing keys: the table's defaults)."""
    return spec if isinstance(spec, JobSettings) else settings_from_json(spec)


def as_dataset(dataset: DatasetRecord | Mapping) -> DatasetRecord:
    """A DatasetRecord from either a DatasetRecord or its JSON object."""
    return dataset if isinstance(dataset, DatasetRecord) else _build(DatasetRecord, dataset, "a dataset")
