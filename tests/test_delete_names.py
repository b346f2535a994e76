"""`airtune delete` takes only job names and removes only the job's own folders."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _env(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "AIRTUNE"))}
    env["AIRTUNE_HOME"] = str(home)
    return env


def _tree(home):
    return sorted(str(p.relative_to(home.parent)) for p in home.parent.rglob("*"))


@pytest.mark.parametrize("name", ["..", ".", "../x", "x/..", "/etc", "a/b", "", "Demo", "-x", "x" * 64, "x\x1b[31m"])
def test_a_name_that_is_not_a_job_name_deletes_nothing(tmp_path, name):
    home = tmp_path / "home"
    for d in ("workspace/jobs/x", "workspace/jobs/keep", "prepare/x", "models/tiny"):
        (home / d).mkdir(parents=True)
    (tmp_path / "x").mkdir()
    before = _tree(home)
    proc = subprocess.run([sys.executable, "-m", "airtune.cli", "delete", "--yes", "--", name], env=_env(home),
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "is not a job name" in proc.stderr and "nothing deleted" in proc.stderr
    assert "Traceback" not in proc.stderr and "\x1b" not in proc.stderr
    assert _tree(home) == before


def test_a_job_folder_that_links_outside_is_refused(tmp_path):
    from airtune import jobs

    root = tmp_path / "jobs"
    root.mkdir()
    outside = tmp_path / "precious"
    outside.mkdir()
    (root / "linked").symlink_to(outside)
    with pytest.raises(jobs.InvalidName, match="outside"):
        jobs._own_folder(root, "linked")
    assert outside.is_dir()
    assert jobs._own_folder(root, "plain") == (root / "plain").resolve()
