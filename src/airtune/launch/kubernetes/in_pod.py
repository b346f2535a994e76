"""What the prepare pod runs, inside the training image (no Airflow there):

    python -m airtune.launch.kubernetes.in_pod prepare --spec <job>/spec.json --out <job>/data --cache DIR

It checks first that the files the spec names are visible in the pod (they must be on the
location's volumes, at the same paths as on the workers), and says which one is not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from airtune.resolved import Resolved, as_resolved


def pod_view(resolved) -> Resolved:
    """The spec as the pod sees it (a Resolved; from a Resolved or spec.json's dict). The chat template
    comes with the image's catalog (AIRTUNE_CONFIG_DIR), not from the worker's checkout; everything else
    keeps its path."""
    from airtune import paths

    resolved = as_resolved(resolved)
    template = resolved.template
    if not Path(template.path).is_file():
        template = dataclasses.replace(template, path=str(paths.config_dir() / "templates" / f"{template.name}.jinja"))
    return dataclasses.replace(resolved, template=template)


def missing_files(resolved) -> list[str]:
    resolved = as_resolved(resolved)
    out = []
    if not Path(resolved.template.path).is_file():
        out.append(f"template {resolved.template.name}: {resolved.template.path}")
    for d in resolved.datasets:
        for f in d.files:
            if not any(ch in str(f) for ch in "*?[") and not Path(f).exists():
                out.append(f"dataset {d.name}: {f}")
    return out


def prepare(args) -> int:
    from airtune import data

    resolved = pod_view(json.loads(Path(args.spec).read_text()))
    missing = missing_files(resolved)
    if missing:
        print("These files are not visible in the pod; put them on the location's volumes (mounted at the "
              "same paths as on the Airflow workers, docs/kubernetes.md):\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    manifest = data.prepare(resolved, Path(args.out), cache_dir=Path(args.cache), log=lambda m: print(m, flush=True))
    print(json.dumps({k: manifest.get(k) for k in ("rows", "tokens", "content_hash") if k in manifest}, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airtune.launch.kubernetes.in_pod")
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="prepare the dataset of a job (the prepare_dataset task's pod)")
    p.add_argument("--spec", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cache", required=True)
    p.set_defaults(func=prepare)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
