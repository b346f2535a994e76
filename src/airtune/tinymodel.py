"""`airtune make-tiny-model`: a tiny random Llama and its BPE tokenizer, built offline and deterministically.

No model hub is reachable from our machines, so tests, the demo and the benchmarks use this model.
Shape: 4 layers, hidden 128, vocabulary 4,096: about 1.8 M parameters, the same size as the model
of the reference LLaMA-Factory figures (docs/benchmarks.md), so our figures compare with them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from airtune import paths

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Text the tokenizer learns its merges from: the English demo data shipped in the repo.
CORPUS_FILES = ["alpaca_en_demo.json", "identity.json", "c4_demo.jsonl", "dpo_en_demo.json"]


def default_path() -> Path:
    return paths.airtune_home() / "models" / "tiny-llama-dev"


def _corpus(data_dir: Path):
    for name in CORPUS_FILES:
        path = data_dir / name
        if name.endswith(".jsonl"):
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            rows = json.loads(path.read_text(encoding="utf-8"))
        for row in rows:
            yield from _strings(row)


def _strings(obj):
    if isinstance(obj, str):
        if obj:
            yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def build_tokenizer(data_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(data_dir), trainer=trainer)
    chat_template = (paths.config_dir() / "templates" / "chatml.jinja").read_text(encoding="utf-8")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def make_tiny_model(out: Path | None = None, *, seed: int = 0, force: bool = False, data_dir: Path | None = None) -> Path:
    """Build the model at `out` (default: $AIRTUNE_HOME/models/tiny-llama-dev); idempotent unless force."""
    out = Path(out or default_path())
    marker = out / "airtune-tiny.json"
    if marker.exists() and not force:
        return out
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    data_dir = Path(data_dir or paths.repo_root() / "data" / "llamafactory-demo")
    tokenizer = build_tokenizer(data_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(out.name + ".tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    (tmp / "airtune-tiny.json").write_text(json.dumps({"seed": seed, "parameters": n_params, "vocab_size": len(tokenizer)}))
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out
