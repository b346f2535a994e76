"""The local launcher: output reaches the log, failures fail, and stopping the task stops the whole group."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from airtune.launch import local
from airtune.launch.command import train_command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_streams_output_and_succeeds(tmp_path):
    lines = []
    local.run([sys.executable, "-c", "print('hello'); print('world')"], job_dir=tmp_path, echo=lines.append)
    assert "hello" in lines and "world" in lines
    assert not (tmp_path / local.PID_FILE).exists()


def test_nonzero_exit_fails(tmp_path):
    with pytest.raises(local.TrainingFailed, match="code 3"):
        local.run([sys.executable, "-c", "import sys; sys.exit(3)"], job_dir=tmp_path, echo=lambda _: None)


def test_stopping_the_task_stops_the_whole_group(tmp_path):
    """The child starts a grandchild (like torchrun's workers); interrupting the task kills both."""
    child_pids = tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(child_pids)!r}, 'w').write(f'{{os.getpid()}} {{g.pid}}')\n"
        "print('ready', flush=True); time.sleep(300)\n"
    )

    def interrupt_when_ready():
        while not child_pids.exists() or not child_pids.read_text().strip():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)

    class Stop(Exception):
        pass

    def handler(*_):
        raise Stop()

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        threading.Thread(target=interrupt_when_ready, daemon=True).start()
        with pytest.raises(Stop):
            local.run([sys.executable, "-c", script], job_dir=tmp_path, echo=lambda _: None)
    finally:
        signal.signal(signal.SIGUSR1, old)
    parent, grandchild = map(int, child_pids.read_text().split())
    deadline = time.monotonic() + 15
    while (_alive(parent) or _alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(parent) and not _alive(grandchild)


def test_cleanup_stops_a_group_left_behind(tmp_path):
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    (tmp_path / local.PID_FILE).write_text(str(proc.pid))
    assert local.cleanup(tmp_path) is True
    proc.wait(timeout=15)
    assert not (tmp_path / local.PID_FILE).exists()
    assert local.cleanup(tmp_path) is False


def _resolved(nodes=1, gpus=0):
    """A validated job, its runtime then set to `nodes` x `gpus` (what resolve gives a Kubernetes location)."""
    from airtune.resolve import validate_mapping

    resolved = validate_mapping({"name": "cmd", "base_model": "tiny-llama-dev", "dataset": "identity"})
    resolved["runtime"].update(nodes=nodes, gpus_per_node=gpus, world_size=nodes * max(gpus, 1),
                               processes_per_node=max(1, gpus))
    return resolved


def test_train_command_single_process():
    cmd = train_command(_resolved(), spec_path="/j/spec.json", data_dir="/j/data", output_dir="/j/output", python="python")
    assert cmd == ["python", "-m", "airtune.train", "--spec", "/j/spec.json", "--data", "/j/data", "--output", "/j/output"]


def test_train_command_torchrun_on_several_gpus():
    cmd = train_command(_resolved(gpus=8), spec_path="s", data_dir="d", output_dir="o", python="python")
    assert cmd[:6] == ["python", "-m", "torch.distributed.run", "--nproc_per_node=8", "--nnodes=1", "--standalone"]
    cmd = train_command(
        _resolved(nodes=2, gpus=8), spec_path="s", data_dir="d", output_dir="o", python="python",
        rendezvous={"master_addr": "job-0.svc", "master_port": 29500, "node_rank": "$(JOB_COMPLETION_INDEX)"},
    )
    assert "--nnodes=2" in cmd and "--master_addr=job-0.svc" in cmd and "--node_rank=$(JOB_COMPLETION_INDEX)" in cmd
    assert cmd[-8:-6] == ["-m", "airtune.train"]


def test_a_refused_configuration_is_not_worth_a_retry(tmp_path):
    script = "print('[airtune] configuration error: TypeError: weight_decay: heavy'); import sys; sys.exit(78)"
    with pytest.raises(local.TrainingRefused, match="weight_decay: heavy"):
        local.run([sys.executable, "-c", script], job_dir=tmp_path, echo=lambda _: None)
