"""LLaMA-Factory's own preprocessing of one alpaca file, timed: run with LLaMA-Factory's virtualenv
(bench/setup_llamafactory.sh), by bench/prepare_bench.py.

    python bench/lf_prepare.py --data FILE.json --model DIR --workers N --cutoff 512 --out DIR

It calls what `llamafactory-cli train` runs before training (`get_dataset`: load, align, template,
tokenize, save to `tokenized_path`) on a fresh datasets cache, and prints one JSON line: seconds (of
that call), rows, tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--model", required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cutoff", type=int, default=512)
    p.add_argument("--template", default="chatml")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lf-bench-", dir=a.out.parent))
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf-cache")  # cold cache: nothing from an earlier run
    dataset_dir = work / "data"
    dataset_dir.mkdir()
    (dataset_dir / a.data.name).symlink_to(a.data.resolve())
    (dataset_dir / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": a.data.name}}))
    t_import = time.time()
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args({
        "model_name_or_path": a.model, "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "dataset": "bench", "dataset_dir": str(dataset_dir), "template": a.template, "cutoff_len": a.cutoff,
        "preprocessing_num_workers": a.workers if a.workers > 1 else None, "overwrite_cache": True,
        "tokenized_path": str(a.out), "output_dir": str(work / "output"), "report_to": "none",
    })
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    t0 = time.time()
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    seconds = time.time() - t0
    train = module["train_dataset"]
    tokens = sum(len(x) for x in train["input_ids"])
    print(json.dumps({"tool": "llamafactory", "seconds": seconds, "setup_seconds": t0 - t_import,
                      "rows": len(train), "tokens": tokens, "workers": a.workers}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
