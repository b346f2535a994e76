"""Where airtune reads its catalog and writes its work. Nothing here touches the disk at import."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_root() -> Path:
    """The source checkout this package runs from (configs/ and data/ live there)."""
    return _REPO_ROOT


def airtune_home() -> Path:
    """Local state of the embedded default: models built here, the workspace, Airflow and MLflow."""
    return Path(os.environ.get("AIRTUNE_HOME") or (_REPO_ROOT / ".airtune")).resolve()


def config_dir() -> Path:
    return Path(os.environ.get("AIRTUNE_CONFIG_DIR") or (_REPO_ROOT / "configs")).resolve()


def workspace() -> Path:
    """`<workspace>/jobs/<name>/<run_id>/` holds each job run's artefacts (docs/architecture.md)."""
    return Path(os.environ.get("AIRTUNE_WORKSPACE") or (airtune_home() / "workspace")).resolve()


def expand(value: str, base: Path | None = None) -> Path:
    """Expand ${AIRTUNE_HOME} and other environment variables; relative paths are taken from `base`."""
    env = dict(os.environ)
    env.setdefault("AIRTUNE_HOME", str(airtune_home()))
    text = value
    for key, val in env.items():
        text = text.replace("${" + key + "}", val)
    path = Path(os.path.expanduser(text))
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def safe_run_component(run_id: str) -> str:
    """Airflow run ids contain ':' and '+'; keep folder names portable."""
    from airtune.names import safe_path_component

    return safe_path_component(run_id)


def job_dir(name: str, run_id: str) -> Path:
    return workspace() / "jobs" / name / safe_run_component(run_id)


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read a megabyte at a time."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`; an existing `dst` is moved aside first and removed after (never half-written)."""
    import shutil
    import uuid

    dst.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dst.exists() or dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(dst, old)
    os.rename(src, dst)
    if old is not None:
        if old.is_symlink() or old.is_file():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
