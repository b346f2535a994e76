"""Capacity: one Airflow pool per location, so jobs queue instead of overcommitting the GPUs.

    pool airtune_<location>   slots = the location's gpu_quota (configs/locations.yaml); local = 1
                              include_deferred = True: a deferred train task (a pod or Job the
                              triggerer watches) still holds its GPUs, so it keeps its slots

A train task takes as many slots as the GPUs it trains on (nodes x gpus_per_node, at least 1),
capped at the pool's size: a job larger than the quota waits until the pool is empty and then runs
alone, rather than never (Airflow never schedules a task that asks for more slots than the pool has).

Pool slots are fixed when a DAG is parsed, while airtune_finetune learns its location and GPU count
only from each run's conf. The retraining DAGs know both at parse time (their job file). For
airtune_finetune, deploy/airflow_local_settings.py (a task-instance mutation hook) sets the pool
and slots per run from the conf; without it, train_local uses airtune_local with one slot and the
Kubernetes train tasks Airflow's default_pool (docs/capacity.md).

Cheap to import (the catalog only); `ensure_pools` imports Airflow's models when called.
Create or update the pools with `python -m airtune.pools [--slots local=2]` (make up does).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from airtune.catalog import Catalog

PREFIX = "airtune_"
LOCAL_SLOTS = 1  # local runs one job at a time: two trainings would share one machine's GPUs and cores
# The train tasks of the job graph (dags/airtune_finetune.py, dags/airtune_retrain.py).
TRAIN_TASK_IDS = ("train_local", "train_kubernetes_pod", "train_kubernetes_job.train")


def pool_name(location: str) -> str:
    return f"{PREFIX}{location}"


def pool_size(location_name: str, catalog: Catalog | None = None) -> int:
    loc = (catalog or Catalog.load()).location(location_name)
    return LOCAL_SLOTS if loc.is_local else max(1, int(loc.gpu_quota))


def pool_sizes(catalog: Catalog | None = None, overrides: Mapping[str, int] | None = None) -> dict[str, int]:
    """pool name -> slots, one per location of configs/locations.yaml (overrides: location -> slots)."""
    catalog = catalog or Catalog.load()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(catalog.locations))
    if unknown:
        raise ValueError(f"pool overrides: {', '.join(unknown)} not in locations.yaml; accepted: {', '.join(catalog.locations)}")
    out = {}
    for name in catalog.locations:
        slots = int(overrides.get(name, pool_size(name, catalog)))
        if slots < 1:
            raise ValueError(f"pool of location {name}: {slots} slots; accepted: 1 or more")
        out[pool_name(name)] = slots
    return out


def describe(location: str, catalog: Catalog) -> str:
    loc = catalog.location(location)
    if loc.is_local:
        return "airtune: local training on this machine, one job at a time"
    return f"airtune: GPUs of location {location} ({loc.kind}, gpu_quota {loc.gpu_quota} in locations.yaml)"


def ensure_pools(catalog: Catalog | None = None, overrides: Mapping[str, int] | None = None, *, session=None) -> dict[str, int]:
    """Create or update one pool per location (include_deferred=True). Returns pool name -> slots.

    Needs Airflow's metadata database configured (the environment of the component calling it).
    Pools of locations no longer in locations.yaml are left alone (a run may still use one).
    """
    catalog = catalog or Catalog.load()
    sizes = pool_sizes(catalog, overrides)
    from airflow.models.pool import Pool

    def write(s) -> None:
        for location in catalog.locations:
            name = pool_name(location)
            Pool.create_or_update_pool(name, sizes[name], describe(location, catalog), True, session=s)
        s.commit()

    if session is not None:
        write(session)
    else:
        from airflow import settings

        if settings.Session is None:
            settings.configure_orm()
        s = settings.Session()
        try:
            write(s)
        finally:
            s.close()
    return sizes


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value) if value is not None and str(value).strip() != "" else default
    except (TypeError, ValueError):
        return default


def gpus_of(mapping: Mapping) -> int:
    """The GPUs a job (a flat mapping of docs/form.md's keys, not yet resolved) trains on: nodes x gpus_per_node.

    An empty gpus_per_node means every GPU of the machine on local (at most one job runs there
    anyway) and 1 on Kubernetes, as airtune.resolve decides. At least 1: a CPU job still takes a slot.
    """
    nodes = max(1, _int_or(mapping.get("nodes"), 1))
    gpus = _int_or(mapping.get("gpus_per_node"), 1)
    return max(1, nodes * max(1, gpus))


def train_slots(mapping: Mapping, catalog: Catalog | None = None) -> tuple[str, int] | None:
    """(pool, slots) for the train task of this job, or None when its location is not in the catalog
    (validate refuses it before any train task runs)."""
    catalog = catalog or Catalog.load()
    location = mapping.get("location") or "local"
    if not isinstance(location, str) or location not in catalog.locations:
        return None
    return pool_name(location), min(gpus_of(mapping), pool_size(location, catalog))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m airtune.pools", description="Create or update airtune's Airflow pools (one per location).")
    p.add_argument("--slots", action="append", default=[], metavar="LOCATION=N", help="override a pool's size, e.g. local=2")
    args = p.parse_args(argv)
    overrides = {}
    for item in args.slots:
        loc, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit():
            p.error(f"--slots: {item!r}; accepted: LOCATION=N, e.g. local=2")
        overrides[loc.strip()] = int(n)
    for name, slots in ensure_pools(overrides=overrides).items():
        print(f"pool {name}: {slots} slot{'s' if slots != 1 else ''} (deferred tasks count)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
