from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def airtune_home(tmp_path, tiny_model_dir) -> Path:
    """A fresh embedded default (Airflow + MLflow on SQLite) with the tiny model in place."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny-llama-dev").symlink_to(tiny_model_dir)
    return home


def airtune_env(home: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "AIRTUNE"))}
    env.update({"AIRTUNE_HOME": str(home), "PYTHONUNBUFFERED": "1"}, **extra)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env
