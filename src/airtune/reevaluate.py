"""`airtune evaluate NAME [--version N] [--eval-dataset D ...] [--max-samples N] [--benchmark B ...]`:
score a registered version again, e.g. on a new evaluation set, and record the results on it.

The version's files are found as `airtune generate` finds them (inference.locate: the job folder,
else MLflow's copy, downloaded once); its resolved spec says the base model, template and data. The
held-out data is prepared again by the data step (the prepared-data cache makes this cheap when
nothing changed): the version's own validation split, or `--eval-dataset` catalog datasets instead.
The evaluator (`python -m airtune.evaluate`) runs on this machine as the evaluate task's local
process does. Results: a folder `$AIRTUNE_HOME/evaluations/<name>/v<N>-<time>/` (evaluation.json,
predictions.jsonl), tags `eval.<source>.<metric>` on the version (replacing the earlier figures,
with `eval.evaluated_on` saying what they were measured on) and both files as artefacts of the
version's MLflow run under `evaluation/<time>/`. The run's own metrics stay those of its DAG run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from airtune import paths

log = logging.getLogger("airtune")


class EvaluateError(Exception):
    """A message for the person at the terminal (exit 2 when the input is wrong, 1 otherwise)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _with_eval_data(resolved: dict, eval_datasets: list[str], benchmarks: list[str], max_samples: int | None) -> dict:
    """The version's resolved spec with other held-out data / benchmarks, checked as validate checks them."""
    from airtune.catalog import Catalog
    from airtune.resolve import format_errors, validate_mapping
    from airtune.spec import SpecError

    spec = dict(resolved["spec"])
    if not (eval_datasets or benchmarks or max_samples is not None):
        return resolved
    mapping = {k: v for k, v in spec.items() if v is not None}
    if eval_datasets:
        mapping.update(eval_dataset=eval_datasets, val_size=0.0)
    if benchmarks:
        mapping["eval_benchmarks"] = benchmarks
    if max_samples is not None:
        mapping["eval_max_samples"] = max_samples
    # only the evaluation fields are judged here: the rest was valid when the job ran
    mapping.update(promote="never", parent_job=None, reward_model=None)
    for key in ("gpu_type", "gpus_per_node", "compute_type", "booster", "distributed", "extra_args", "promote_timeout_hours"):
        mapping.pop(key, None)
    try:
        checked = validate_mapping(mapping, Catalog.load())
    except SpecError as exc:
        ours = [e for e in exc.errors if e.field.split(".")[0] in ("eval_dataset", "eval_benchmarks", "eval_max_samples")]
        if ours:
            raise EvaluateError("the evaluation is not valid:\n" + format_errors(SpecError(ours)), code=2) from None
        raise EvaluateError("the version's job no longer validates against this catalog:\n" + format_errors(exc), code=2) from None
    out = json.loads(json.dumps(resolved))
    out["spec"].update(eval_dataset=checked["spec"]["eval_dataset"], eval_benchmarks=checked["spec"]["eval_benchmarks"],
                       eval_max_samples=checked["spec"]["eval_max_samples"], val_size=checked["spec"]["val_size"])
    out["eval_datasets"], out["benchmarks"] = checked["eval_datasets"], checked["benchmarks"]
    if eval_datasets:
        # only the held-out data matters here: the training rows are not prepared again (they may be many)
        out["datasets"] = out["eval_datasets"]
    return out


def evaluate_version(name: str, version: str | None = None, *, eval_datasets: list[str] | None = None,
                     benchmarks: list[str] | None = None, max_samples: int | None = None, echo=print) -> dict:
    from airtune import data, inference, tracking
    from airtune.data.errors import DataError
    from airtune.launch.command import evaluate_command

    try:
        v = inference.find_version(name, version)
        folder, where = inference.locate(v)
        resolved = inference.resolved_spec(folder, v)
    except inference.InferenceError as exc:
        raise EvaluateError(str(exc), code=2) from None
    resolved = _with_eval_data(resolved, list(eval_datasets or []), list(benchmarks or []), max_samples)
    spec = resolved["spec"]
    if not spec.get("val_size") and not resolved.get("eval_datasets") and not resolved.get("benchmarks"):
        raise EvaluateError(f"{name} version {v.version} has no held-out data (its job had val_size 0 and no "
                            "eval_dataset): give --eval-dataset NAME (a catalog dataset) or --benchmark NAME", code=2)
    echo(f"evaluating {name} version {v.version} ({where})")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir = paths.airtune_home() / "evaluations" / name / f"v{v.version}-{stamp}"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".v{v.version}-", dir=out_dir.parent))
    try:
        (work / "spec.json").write_text(json.dumps(resolved, indent=2))
        try:
            data.prepare(resolved, work / "data", cache_dir=paths.airtune_home() / "cache" / "prepared", log=echo)
        except DataError as exc:
            raise EvaluateError(f"the evaluation data cannot be prepared: {exc}", code=2) from None
        cmd = evaluate_command(resolved, spec_path=work / "spec.json", data_dir=work / "data", model_dir=folder,
                               output_dir=work / "evaluation")
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(cmd, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith("[airtune] "):
                echo(line.removeprefix("[airtune] "))
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
            raise EvaluateError(f"the evaluator exited with code {proc.returncode}:\n{tail}")
        os.replace(work / "evaluation", out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    on = (", ".join(d["name"] for d in resolved.get("eval_datasets") or []) or "its validation split")
    recorded = tracking.record_evaluation(v.run_id, name, v.version, out_dir, run_metrics=False,
                                          artifact_path=f"evaluation/{stamp}", evaluated_on=on)
    from airtune.pipeline import evaluation_summary

    return {"name": name, "version": v.version, "folder": str(out_dir), "evaluated_on": on,
            "summary": evaluation_summary(out_dir), "metrics": recorded["metrics"]}


def main(args) -> int:
    try:
        out = evaluate_version(args.name, args.version, eval_datasets=args.eval_dataset, benchmarks=args.benchmark,
                               max_samples=args.max_samples, echo=lambda m: print(m, file=sys.stderr))
    except EvaluateError as exc:
        print(f"airtune evaluate: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['name']} version {out['version']} on {out['evaluated_on']}: {out['summary']} (base -> tuned)")
        print(f"  results  {out['folder']}")
        print(f"  recorded on the version's tags (eval.*) and its MLflow run (evaluation/)")
    return 0
