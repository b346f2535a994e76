"""How long Airflow takes to parse airtune's DAG files (issue 16, item 3).

Two measurements, each in fresh processes, repeated:

- `airflow dags report`: the per-file parse duration Airflow's own DagBag records (what the
  dag-processor's `dag_processing.last_duration` metric reports), with a temporary AIRFLOW_HOME.
- bare import: a fresh Python imports Airflow's SDK, then the DAG file; the figure is the DAG file's
  import alone (what every task's process pays again before it runs), and which heavy modules it
  loaded.

    .venv/bin/python bench/parse_bench.py --repeats 5 [--dags DIR] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("kubernetes", "kubernetes_asyncio", "torch", "transformers", "datasets", "mlflow", "peft", "trl", "pandas")

BARE = """
import sys, time, json
import airflow.sdk
sys.path.insert(0, {dags!r})
t = time.perf_counter()
import {module}
print(json.dumps({{"s": time.perf_counter() - t, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def _airflow_env(home: Path, dags: Path) -> dict:
    return {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "PYTHONWARNINGS": "ignore"}


def dags_report(dags: Path, home: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "airflow", "dags", "report", "-o", "json"], env=_airflow_env(home, dags),
                         capture_output=True, text=True, check=True).stdout
    rows = json.loads(next(line for line in out.splitlines() if line.startswith("[")))
    result = {}
    for r in rows:
        h, m, s = r["duration"].split(":")
        result[r["file"]] = int(h) * 3600 + int(m) * 60 + float(s)
    return result


def bare_import(dags: Path, module: str, home: Path) -> dict:
    code = BARE.format(dags=str(dags), module=module, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], env=_airflow_env(home, dags), capture_output=True, text=True,
                         check=True, cwd=str(dags)).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dags", type=Path, default=REPO / "dags")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)
    files = sorted(p.stem for p in args.dags.glob("*.py"))
    with tempfile.TemporaryDirectory(prefix="parse-bench-") as tmp:
        home = Path(tmp)
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=_airflow_env(home, args.dags),
                       capture_output=True, check=True)
        report = {f: [] for f in files}
        bare = {f: [] for f in files}
        heavy = {}
        for _ in range(args.repeats):
            for f, s in dags_report(args.dags, home).items():
                report[Path(f).stem].append(s)
            for f in files:
                r = bare_import(args.dags, f, home)
                bare[f].append(r["s"])
                heavy[f] = r["heavy"]
    print(f"{'DAG file':<22} {'airflow dags report (median)':>30} {'bare import (median)':>22}  heavy modules loaded")
    for f in files:
        print(f"{f + '.py':<22} {statistics.median(report[f]):>28.3f} s {statistics.median(bare[f]):>20.3f} s  "
              f"{', '.join(heavy[f]) or 'none'}")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({"dags_report_s": report, "bare_import_s": bare, "heavy": heavy}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
