"""The local launcher: the training command as a child process group on this machine.

The process runs in its own session (process group) so that stopping the Airflow task stops every
process it started (torchrun's workers included), and its output is streamed line by line into the
task log. Its pid is recorded in the job folder so that the DAG's cleanup task can stop a group
whose task died without running its `finally` (e.g. a killed worker).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

PID_FILE = "train.pid"


class TrainingFailed(RuntimeError):
    pass


# The trainer's exit code for an error in its configuration, found before training starts (a bad
# extra_args value, a model that does not load with these arguments): running it again fails the same way.
EXIT_CONFIG = 78  # sysexits.h EX_CONFIG


class TrainingRefused(TrainingFailed):
    """The trainer refused its configuration (EXIT_CONFIG): not worth a retry."""


def run(command: list[str], *, job_dir: Path, env: dict[str, str] | None = None, echo=None) -> None:
    """Run the command to completion; raise TrainingFailed on a non-zero exit.

    `echo` receives each output line (default: this module's logger, i.e. the task log).
    """
    echo = echo or log.info
    job_dir = Path(job_dir)
    pid_file = job_dir / PID_FILE
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    echo("$ " + " ".join(command))
    proc = subprocess.Popen(
        command,
        cwd=job_dir,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,  # own process group: killpg reaches every child
    )
    pid_file.write_text(str(proc.pid))
    last_error = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("[airtune] configuration error: "):
                last_error = line.removeprefix("[airtune] configuration error: ")
            echo(line)
        code = proc.wait()
    except BaseException:
        # The task was stopped (SIGTERM from Airflow, a timeout, Ctrl-C): take the group down with it.
        stop_group(proc.pid)
        raise
    finally:
        if proc.poll() is not None:
            pid_file.unlink(missing_ok=True)
    if code == EXIT_CONFIG:
        raise TrainingRefused(f"training refused its configuration (exit {code}): {last_error or 'see the lines above'}")
    if code != 0:
        raise TrainingFailed(f"training exited with code {code}")


def stop_group(pgid: int, grace: float = 10.0) -> bool:
    """SIGTERM the process group, then SIGKILL what is left after `grace` seconds. True if one existed."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        _reap(pgid)
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pgid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def cleanup(job_dir: Path) -> bool:
    """Stop a training process group left behind by a task that died; True if one was stopped."""
    pid_file = Path(job_dir) / PID_FILE
    if not pid_file.exists():
        return False
    try:
        pgid = int(pid_file.read_text().strip())
    except ValueError:
        pid_file.unlink(missing_ok=True)
        return False
    stopped = stop_group(pgid)
    pid_file.unlink(missing_ok=True)
    return stopped
