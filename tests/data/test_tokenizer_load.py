"""data.encode.load_tokenizer: the same tokenizer AutoTokenizer gives, without importing a model
configuration class (and with it torch's and transformers' modelling code) where the folder names
transformers' generic tokenizer class."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

TEXTS = ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
         "  spaced   text\t\n中文 测试 ü émoji 🙂", "<|endoftext|>tail", ""]


def _same(a, b):
    assert type(a) is type(b)
    assert dict(a.special_tokens_map) == dict(b.special_tokens_map)
    assert a.get_added_vocab() == b.get_added_vocab() and a.eos_token_id == b.eos_token_id
    assert a.chat_template == b.chat_template
    for special in (False, True):
        ea = a.backend_tokenizer.encode_batch(TEXTS, add_special_tokens=special)
        eb = b.backend_tokenizer.encode_batch(TEXTS, add_special_tokens=special)
        assert [(e.ids, e.offsets) for e in ea] == [(e.ids, e.offsets) for e in eb]
    assert a(TEXTS)["input_ids"] == b(TEXTS)["input_ids"]


def test_the_generic_path_gives_what_autotokenizer_gives(tiny_model_dir):
    from transformers import AutoTokenizer

    from airtune.data.encode import _generic_tokenizer, load_tokenizer

    assert _generic_tokenizer(tiny_model_dir)  # what airtune's own model folders are
    _same(load_tokenizer(str(tiny_model_dir)), AutoTokenizer.from_pretrained(str(tiny_model_dir)))


def test_other_folders_go_through_autotokenizer(tiny_model_dir, tmp_path):
    from airtune.data.encode import _generic_tokenizer

    for change in ({"tokenizer_class": "LlamaTokenizer"}, {"auto_map": {"AutoTokenizer": ["x.Tok", None]}}):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        shutil.copytree(tiny_model_dir, folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, **change}))
        assert not _generic_tokenizer(folder)
    # a model type AutoTokenizer corrects (its hub files name the wrong class): AutoTokenizer decides
    folder = tmp_path / "corrected"
    shutil.copytree(tiny_model_dir, folder)
    model = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**model, "model_type": "internlm2"}))
    assert not _generic_tokenizer(folder)
    assert not _generic_tokenizer(tmp_path / "missing")


def test_loading_it_imports_no_model_code(tiny_model_dir):
    code = ("import sys; from airtune.data.encode import load_tokenizer; load_tokenizer(sys.argv[1]); "
            "print([m for m in ('transformers.models.llama.configuration_llama', 'transformers.modeling_utils', 'hqq', "
            "'torch._dynamo') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
