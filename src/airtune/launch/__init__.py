"""Launchers: one per backend, each running the same training command (`launch.command`).

Like Kubeflow trainer's backends: `local` runs a process group on this machine; `kubernetes`
builds pods / indexed Jobs. The DAG picks one per run with a branch task.
"""

from __future__ import annotations

LAUNCHER_KINDS = ("local", "kubernetes_pod", "kubernetes_job")


def launcher_kind(resolved) -> str:
    """Which train branch a resolved job takes (a Resolved or spec.json's dict): local, one pod, or an
    indexed Job of several pods."""
    from airtune.resolved import as_resolved

    resolved = as_resolved(resolved)
    if resolved.location.kind == "local":
        return "local"
    return "kubernetes_job" if resolved.runtime.nodes > 1 else "kubernetes_pod"
