"""Talk to a job's model: `airtune generate` and `airtune chat`.

A job's model is a version of the registered model named after the job (`tracking.register_version`):

1. which version: `--version N`, else the one with alias `champion` (a person's choice), else `best`
   (the register task's choice), else the newest;
2. its files: the checkpoint in the job folder (`paths.job_dir(job, airflow_run_id) / checkpoint`,
   from the version's tags) while it is still on disk, else the version's artefacts (the bundle
   `tracking.bundle` uploads) downloaded once into `$AIRTUNE_HOME/cache/models/<name>/<version>`;
3. loaded as the trainer loads it (`airtune.train.model`): a LoRA adapter (adapter_config.json) on
   top of the job's base weights with `PeftModel.from_pretrained`, never merged on disk; full or
   freeze weights (and a merged/ export) directly. fp32, on the GPU when there is one, else the CPU.
   The tokenizer gets the chat template the job trained with.

Generation is greedy unless a temperature (or top_p) is given, and stops at the template's
end-of-turn token (chatml: <|im_end|>, found by rendering a probe conversation as the data encoder
does) or the tokenizer's EOS. `Chat` keeps a conversation and streams its answers.

Every mistake a user can make (no such job, no such version, the files gone, the base weights not on
this machine) raises `InferenceError`, whose message is one line; the CLI prints it and exits 1.
torch, transformers, peft and mlflow are imported inside the functions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airtune import paths

ALIAS_CHAMPION = "champion"
DEFAULT_MAX_NEW_TOKENS = 256
ADAPTER_CONFIG = "adapter_config.json"


class InferenceError(Exception):
    """A mistake a user can make or fix (no such job or version, files gone): one line, no traceback."""


# --- which version ------------------------------------------------------------------------------

@dataclass
class Version:
    """A registered version of a job's model, as far as finding its files goes."""

    name: str
    version: str
    tags: dict[str, str]
    source: str  # models:/<logged model id>
    run_id: str | None = None  # its MLflow run
    aliases: list[str] = field(default_factory=list)


def _mlflow_error(exc: Exception) -> str:
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _job_known(c, name: str) -> bool:
    """Something of the job exists (a workspace folder or an MLflow experiment), registered or not."""
    from airtune import tracking

    if (paths.workspace() / "jobs" / name).is_dir():
        return True
    try:
        exp = c.get_experiment_by_name(tracking.experiment_name(name))
    except Exception:
        return False
    return exp is not None and exp.lifecycle_stage == "active"


def find_version(name: str, version: int | str | None = None) -> Version:
    """The version to load: `version`, else alias champion, else best, else the newest."""
    from mlflow.exceptions import MlflowException

    from airtune import tracking

    try:
        c = tracking.client()
        try:
            c.get_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc.error_code) and "not found" not in str(exc).lower():
                raise
            if _job_known(c, name):
                raise InferenceError(f"job {name!r} has no registered model version yet "
                                     "(its register task has not run, or the job failed before it)") from None
            raise InferenceError(f"no job named {name!r} (no registered model of that name in MLflow at "
                                 f"{tracking.tracking_uri()})") from None
        mv = None
        if version is not None:
            try:
                mv = c.get_model_version(name, str(version))
            except MlflowException:
                known = sorted(int(v.version) for v in c.search_model_versions(f"name = '{name}'"))
                raise InferenceError(f"job {name!r} has no version {version} (its versions: "
                                     f"{', '.join(map(str, known)) or 'none'})") from None
        else:
            for alias in (ALIAS_CHAMPION, tracking.ALIAS_BEST):
                try:
                    mv = c.get_model_version_by_alias(name, alias)
                    break
                except MlflowException:
                    continue
            if mv is None:
                versions = c.search_model_versions(f"name = '{name}'")
                if not versions:
                    raise InferenceError(f"job {name!r} has no registered model version yet")
                mv = max(versions, key=lambda v: int(v.version))
    except InferenceError:
        raise
    except MlflowException as exc:
        raise InferenceError(f"MLflow at {tracking.tracking_uri()}: {_mlflow_error(exc)}") from None
    except (OSError, ConnectionError) as exc:  # requests' errors are OSErrors
        raise InferenceError(f"MLflow at {tracking.tracking_uri()} is not reachable: {exc}") from None
    return Version(name=name, version=str(mv.version), tags=dict(mv.tags or {}), source=str(mv.source or ""),
                   run_id=mv.run_id, aliases=list(getattr(mv, "aliases", None) or []))


# --- where its files are ------------------------------------------------------------------------

def _has_weights(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    if (folder / ADAPTER_CONFIG).is_file():
        return any(folder.glob("adapter_model.*"))
    return (folder / "config.json").is_file() and (any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin")))


def job_folder(v: Version) -> Path | None:
    """The job folder the version was trained in, from its tags (None when they do not say)."""
    job, run = v.tags.get("job") or v.name, v.tags.get("airflow_run_id")
    return paths.job_dir(job, run) if run else None


def cache_dir(name: str, version: str) -> Path:
    return paths.airtune_home() / "cache" / "models" / name / str(version)


def _cached_is(cached: Path, v: Version) -> bool:
    """The cache holds this version's files, not those of an older job of the same name (deleted, made again)
    or of another tracking server's: the bundle's airtune.json names the MLflow run."""
    if not _has_weights(cached):
        return False
    try:
        info = json.loads((cached / "airtune.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return v.run_id is None or info.get("mlflow_run_id") == v.run_id


def locate(v: Version, *, download: bool = True) -> tuple[Path, str]:
    """(folder, where) of the version's files: the checkpoint in the job folder when it is still there,
    else the version's artefacts, downloaded once into the cache. `where` says which, for people."""
    folder = job_folder(v)
    checkpoint = v.tags.get("checkpoint")
    local = folder / checkpoint if folder is not None and checkpoint else None
    if local is not None and _has_weights(local):
        return local, f"job folder {local}"
    cached = cache_dir(v.name, v.version)
    if _cached_is(cached, v):
        return cached, f"cache {cached}"
    gone = f"{local} is gone" if local is not None else "its tags name no job folder"
    if not download:
        raise InferenceError(f"{v.name} version {v.version}: {gone}, and its files are not in the cache {cached}")
    if not v.source:
        raise InferenceError(f"{v.name} version {v.version}: {gone}, and the version names no source to download from")
    import mlflow

    from airtune import tracking

    tracking.client()  # sets MLflow's process-wide tracking URI to ours
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{v.version}-", dir=cached.parent))
    try:
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=v.source, dst_path=str(tmp)))
        except Exception as exc:
            raise InferenceError(f"{v.name} version {v.version}: {gone}, and its files could not be downloaded from "
                                 f"{v.source}: {_mlflow_error(exc)}") from None
        if not _has_weights(got):
            raise InferenceError(f"{v.name} version {v.version}: {gone}, and {v.source} holds no model weights "
                                 "(never uploaded, or removed from the artefact store)")
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(got, cached)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached, f"downloaded from {v.source} into {cached}"


def resolved_spec(folder: Path, v: Version | None = None) -> dict:
    """The job's resolved spec: spec.json beside the weights (final/ and the bundle have one), else the job folder's."""
    candidates = [folder / "spec.json"]
    if v is not None and job_folder(v) is not None:
        candidates += [job_folder(v) / "output" / "final" / "spec.json", job_folder(v) / "spec.json"]
    for p in candidates:
        if p.is_file():
            try:
                return json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
    raise InferenceError(f"no spec.json beside {folder} (or in its job folder): cannot tell the base weights and template")


# --- loading ------------------------------------------------------------------------------------

@dataclass
class Loaded:
    """A model ready to generate, and what it is."""

    model: Any
    tokenizer: Any
    name: str
    version: str
    base: bool
    description: str  # what was loaded from where, one line
    stop_ids: list[int]
    turn_end: str | None
    device: str
    resolved: dict


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _template_text(folders: list[Path], resolved: dict) -> str | None:
    """The chat template the job trained with: the one saved with its weights, else the spec's file."""
    for folder in folders:
        p = folder / "chat_template.jinja"
        if p.is_file():
            return p.read_text(encoding="utf-8")
    path = (resolved.get("template") or {}).get("path")
    if path and Path(path).is_file():
        return Path(path).read_text(encoding="utf-8")
    return None


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() and ((folder / "tokenizer.json").is_file() or any(folder.glob("vocab.*")))


def _weights_of(resolved: dict) -> tuple[str, str | None]:
    model = resolved.get("model") or {}
    weights = model.get("weights")
    if not weights:
        raise InferenceError("the job's spec.json names no base weights (model.weights)")
    weights = str(paths.expand(weights)) if "${" in weights else weights
    if weights.startswith(("/", "~", ".")) and not Path(weights).expanduser().is_dir():  # a folder, not a hub id
        raise InferenceError(f"the base weights {weights} of job {resolved.get('spec', {}).get('name')!r} are not on this machine")
    return weights, model.get("revision")


def load_tokenizer(folders: list[Path], resolved: dict):
    """The tokenizer saved with the model (else the base model's), with the job's chat template."""
    from transformers import AutoTokenizer

    source = next((f for f in folders if _has_tokenizer(f)), None)
    try:
        if source is not None:
            tok = AutoTokenizer.from_pretrained(str(source))
        else:
            weights, revision = _weights_of(resolved)
            tok = AutoTokenizer.from_pretrained(weights, revision=revision)
    except InferenceError:
        raise
    except (OSError, ValueError) as exc:
        raise InferenceError(f"cannot load the tokenizer: {_first_line(exc)}") from None
    template = _template_text(folders, resolved)
    if template:
        tok.chat_template = template
    if not tok.chat_template:
        raise InferenceError("the job's tokenizer has no chat template and none was saved with the job")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def turn_end_token(tokenizer) -> str | None:
    """The control token the chat template closes an answer with (chatml: <|im_end|>), or None.

    Found as the data encoder finds it (`Encoder._probe_turn_end`): a probe conversation rendered, and
    the added token that follows the answer."""
    from airtune.data.encode import Encoder

    try:
        enc = Encoder(None, None, tokenizer.chat_template, stage="sft", cutoff_len=1 << 20, tokenizer=tokenizer)
    except Exception:
        return None
    return enc.turn_end


def stop_ids(tokenizer, model=None) -> tuple[list[int], str | None]:
    """Token ids generation stops at: the template's end-of-turn token, the tokenizer's EOS, the model's own."""
    ids: list[int] = []
    turn_end = turn_end_token(tokenizer)
    if turn_end is not None:
        tid = tokenizer.convert_tokens_to_ids(turn_end)
        if isinstance(tid, int) and tid >= 0 and tid != getattr(tokenizer, "unk_token_id", None):
            ids.append(tid)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for tid in gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]:
        if isinstance(tid, int):
            ids.append(tid)
    return list(dict.fromkeys(ids)), turn_end


def _from_pretrained(folder_or_id: str, revision: str | None, *, what: str, dtype=None, model_class=None, **kwargs):
    """`model_class` (default AutoModelForCausalLM).from_pretrained in `dtype` (default float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    model_class = model_class or AutoModelForCausalLM
    try:
        return model_class.from_pretrained(folder_or_id, revision=revision, dtype=dtype or torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise InferenceError(f"cannot load {what} from {folder_or_id}: {_first_line(exc)}") from None


def load_weights(folder: Path, resolved: dict, *, what: str = "the model", dtype=None, model_class=None,
                 base_kwargs: dict | None = None):
    """The model in `folder`: a LoRA adapter on the job's base weights (not merged), or full weights.
    `model_class`/`dtype` as `_from_pretrained`; `base_kwargs` go to the base weights' from_pretrained
    (a reward model's num_labels)."""
    if (folder / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        weights, revision = _weights_of(resolved)
        base = _from_pretrained(weights, revision, what="the base weights", dtype=dtype, model_class=model_class,
                                **(base_kwargs or {}))
        try:
            with warnings.catch_warnings():  # transformers' deprecation notes on what PEFT calls: not the user's business
                warnings.simplefilter("ignore", FutureWarning)
                return PeftModel.from_pretrained(base, str(folder))
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise InferenceError(f"cannot apply the adapter in {folder}: {_first_line(exc)}") from None
    return _from_pretrained(str(folder), None, what=what, dtype=dtype, model_class=model_class)


def _parent_model(resolved: dict, *, dtype=None, registry: bool = True):
    """(model, description) of the job's parent (parent_job), or None when its files cannot be found
    (its final weights from the parent's job folder, else, with `registry`, its registered version)."""
    parent = resolved.get("parent") or {}
    name = parent.get("name") or (resolved.get("spec") or {}).get("parent_job")
    if not name:
        return None
    final = parent.get("final_dir")
    if final and _has_weights(Path(final)):
        folder = Path(final)
        spec = resolved_spec(folder) if (folder / "spec.json").is_file() else resolved
        return load_weights(folder, spec, what=f"parent job {name!r}", dtype=dtype), f"parent job {name!r} ({folder})"
    if not registry:
        return None
    try:
        v = find_version(name)
        folder, where = locate(v)
        return load_weights(folder, resolved_spec(folder, v), what=f"parent job {name!r}", dtype=dtype), \
            f"parent job {name!r} version {v.version} ({where})"
    except InferenceError:
        return None


def load_base(resolved: dict, *, dtype=None, registry: bool = True):
    """(model, description) of the model a job started from, from its resolved spec: the parent job's
    model (`_parent_model`) when it has one and its files are found, else the job's base weights
    (resolved model.weights). `registry=False`: the parent's job folder only, never MLflow."""
    found = _parent_model(resolved, dtype=dtype, registry=registry)
    if found is not None:
        return found
    weights, revision = _weights_of(resolved)
    return _from_pretrained(weights, revision, what="the base weights", dtype=dtype), f"base weights {weights}"


def load(name: str, version: Version | int | str | None = None, *, base: bool = False, device: str | None = None) -> Loaded:
    """A job's model (its registered version: `find_version`, or the Version found already), ready for `generate`.

    base=True loads the model the job started from instead, with the same tokenizer and chat template,
    to compare answers with: for a job with a parent_job, the parent's model (its final weights from
    the parent's job folder, else the parent's registered version: champion, best or newest); when the
    parent's files cannot be found, and for every other job, the job's base weights (resolved
    model.weights). `description` says which was loaded."""
    v = version if isinstance(version, Version) else find_version(name, version)
    stage = v.tags.get("stage")
    if stage == "rm":
        raise InferenceError(f"job {name!r} trains a reward model (stage rm): it scores answers, it does not generate")
    folder, where = locate(v)
    resolved = resolved_spec(folder, v)
    job = job_folder(v)
    folders = [folder] + ([job / "output" / "final"] if job is not None else [])
    tokenizer = load_tokenizer(folders, resolved)
    if base:
        found = _parent_model(resolved)
        if found is not None:
            model, description = found
        else:
            weights, revision = _weights_of(resolved)
            model = _from_pretrained(weights, revision, what="the base weights")
            description = f"base weights {weights} of {name} version {v.version}"
    else:
        model = load_weights(folder, resolved, what=f"{name} version {v.version}")
        kind = "LoRA adapter on " + _weights_of(resolved)[0] if (folder / ADAPTER_CONFIG).is_file() else "weights"
        description = f"{name} version {v.version}: {kind}, from {where}"
    device = device or default_device()
    model.to(device)
    model.eval()
    ids, turn_end = stop_ids(tokenizer, model)
    return Loaded(model=model, tokenizer=tokenizer, name=name, version=v.version, base=base, description=description,
                  stop_ids=ids, turn_end=turn_end, device=device, resolved=resolved)


# --- generating ---------------------------------------------------------------------------------

def _generation_kwargs(loaded: Loaded, *, max_new_tokens: int, temperature: float | None, top_p: float | None) -> dict:
    import copy

    config = copy.deepcopy(loaded.model.generation_config)
    sample = bool(temperature and temperature > 0) or (top_p is not None and top_p < 1.0)
    config.do_sample = sample
    if sample:
        config.temperature = temperature if temperature and temperature > 0 else 1.0
        config.top_p = top_p if top_p is not None else 1.0
        config.top_k = None
    else:
        config.temperature = config.top_p = config.top_k = None
    config.max_new_tokens = int(max_new_tokens)
    config.max_length = None
    config.eos_token_id = loaded.stop_ids or None
    pad = loaded.tokenizer.pad_token_id
    config.pad_token_id = pad if pad is not None else (loaded.stop_ids[0] if loaded.stop_ids else None)
    return {"generation_config": config}


def _inputs(loaded: Loaded, messages: list[dict]):
    text = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")  # the template writes them
    return {k: v.to(loaded.device) for k, v in enc.items()}


def _messages(prompt: str | list[dict]) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def generate(loaded: Loaded, prompt: str | list[dict], *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
             temperature: float | None = None, top_p: float | None = None) -> dict:
    """One answer to `prompt` (a user message, or a whole conversation of messages).

    Returns {answer, tokens (generated, the stop token included), stopped (it ended at a stop token
    rather than at max_new_tokens)}."""
    inputs = _inputs(loaded, _messages(prompt))
    out = loaded.model.generate(**inputs, **_generation_kwargs(loaded, max_new_tokens=max_new_tokens,
                                                               temperature=temperature, top_p=top_p))
    new = out[0][inputs["input_ids"].shape[1]:].tolist()
    cut = next((i for i, t in enumerate(new) if t in loaded.stop_ids), None)
    answer_ids = new if cut is None else new[:cut]
    answer = loaded.tokenizer.decode(answer_ids, skip_special_tokens=True)
    return {"answer": answer.strip(), "tokens": len(new) if cut is None else cut + 1, "stopped": cut is not None}


def stream(loaded: Loaded, prompt: str | list[dict], *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
           temperature: float | None = None, top_p: float | None = None) -> Iterator[str]:
    """The answer to `prompt` as it is generated, piece by piece (transformers' TextIteratorStreamer)."""
    from transformers import TextIteratorStreamer

    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    cancel = threading.Event()

    class Cancelled(StoppingCriteria):
        """Ends generation at the next token once the reader has gone (Ctrl-C, or it stopped reading)."""

        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    inputs = _inputs(loaded, _messages(prompt))
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = {**inputs, **_generation_kwargs(loaded, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p),
              "streamer": streamer, "stopping_criteria": StoppingCriteriaList([Cancelled()])}
    failed: list[BaseException] = []

    def run():
        try:
            with torch.no_grad():
                loaded.model.generate(**kwargs)
        except BaseException as exc:  # handed to the reader below
            failed.append(exc)
            streamer.end()

    thread = threading.Thread(target=run, name="airtune-generate", daemon=True)
    thread.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        cancel.set()
        thread.join()
    if failed:
        raise failed[0]


class Chat:
    """A conversation with a loaded model: each `send` streams the answer and keeps it in the history."""

    def __init__(self, loaded: Loaded, *, system: str | None = None, **options):
        self.loaded, self.system, self.options = loaded, system, options
        self.history: list[dict] = []

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def send(self, text: str) -> Iterator[str]:
        self.history.append({"role": "user", "content": text})
        pieces: list[str] = []
        try:
            for piece in stream(self.loaded, self.messages(), **self.options):
                pieces.append(piece)
                yield piece
        except BaseException:
            self.history.pop()  # a turn cut short is not part of the conversation
            raise
        self.history.append({"role": "assistant", "content": "".join(pieces).strip()})

    def reset(self) -> None:
        self.history.clear()


def setup_environment() -> None:
    """The embedded default's settings (MLflow's URI, offline hub) unless the environment sets them."""
    from airtune import localstack

    localstack.apply()


def quiet() -> None:
    """No progress bars or notes of the libraries on a terminal someone talks on (the model's answers go there)."""
    import logging
    import sys

    if not sys.stderr.isatty():  # MLflow's download bars are for a terminal
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.store.artifact").setLevel(logging.WARNING)  # "No artifacts found": our error says it
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "Failed to load CPU gemm_4bit_forward ..." on import
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
