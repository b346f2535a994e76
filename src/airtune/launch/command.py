"""The commands every launcher runs (locally, in a pod, or on each pod of a Job): training and evaluation."""

from __future__ import annotations

import sys
from pathlib import PurePath


def train_command(
    resolved,
    *,
    spec_path: str | PurePath,
    data_dir: str | PurePath,
    output_dir: str | PurePath,
    python: str | None = None,
    rendezvous: dict | None = None,
) -> list[str]:
    """`python -m airtune.train ...`, through torchrun when the job has more than one process.
    `resolved`: the job's Resolved (or spec.json's dict).

    `rendezvous` (several machines): {"master_addr", "master_port", "node_rank"}; the node rank may be
    a shell expression evaluated in the pod (e.g. "$(JOB_COMPLETION_INDEX)").
    """
    from airtune.resolved import as_resolved

    python = python or sys.executable
    runtime = as_resolved(resolved).runtime
    nodes = int(runtime.nodes)
    nproc = max(1, int(runtime.gpus_per_node) or int(runtime.processes_per_node))
    program = ["-m", "airtune.train", "--spec", str(spec_path), "--data", str(data_dir), "--output", str(output_dir)]
    if nodes == 1 and nproc == 1:
        return [python, *program]
    launcher = [python, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nodes}"]
    if nodes == 1:
        launcher.append("--standalone")
    else:
        rdzv = rendezvous or {}
        launcher += [
            f"--node_rank={rdzv.get('node_rank', '0')}",
            f"--master_addr={rdzv['master_addr']}",
            f"--master_port={rdzv.get('master_port', 29500)}",
        ]
    return [*launcher, *program]


def evaluate_command(
    resolved: dict,
    *,
    spec_path: str | PurePath,
    data_dir: str | PurePath,
    model_dir: str | PurePath,
    output_dir: str | PurePath,
    python: str | None = None,
) -> list[str]:
    """`python -m airtune.evaluate ...` (airtune.evaluate): one process whatever the job's size, run where
    training ran. `resolved` is the job's resolved spec (for launchers that pick by it; the command is the same)."""
    python = python or sys.executable
    return [python, "-m", "airtune.evaluate", "--spec", str(spec_path), "--data", str(data_dir),
            "--model", str(model_dir), "--output", str(output_dir)]
