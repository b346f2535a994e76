"""The official chat templates of the catalog's instruct models: prepared rows equal what transformers'
apply_chat_template gives with the same template text, and the labels cover exactly the answers.

Each template runs on the tiny BPE tokenizer with that model family's control tokens added (as special
tokens, with the family's EOS), so the control tokens are single tokens as in the real tokenizers.
"""

from __future__ import annotations

import json

import pytest

from airtune.data import prepare

from .conftest import TEMPLATES, dataset, load_rows, resolved, trained_text

FAMILIES = {
    # template: (control tokens added, eos, bos, how one answer is trained)
    "qwen": (["<|im_start|>", "<|im_end|>"], "<|im_end|>", None, "{a}<|im_end|>"),
    "qwen3": (["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"], "<|im_end|>", None, "{a}<|im_end|>"),
    "llama3": (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"],
               "<|eot_id|>", "<|begin_of_text|>", "{a}<|eot_id|>"),
    "gemma": (["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<eos>", "<bos>", "{a}<end_of_turn>"),
    "mistral": (["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                 "[TOOL_RESULTS]", "[/TOOL_RESULTS]"], "</s>", "<s>", " {a}</s>"),
    # GLM-4 ends an answer with no token: the EOS is appended (LLaMA-Factory's efficient_eos)
    "glm4": (["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "<|endoftext|>"],
             "<|endoftext|>", None, "\n{a}<|endoftext|>"),
}

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}

CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}],
    "system_multi": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue."},
    ],
    "tools": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call00001", "content": "sunny, 21 C"},
        {"role": "assistant", "content": "It is sunny in Paris."},
    ],
}
# what each template can render (Gemma has no system role; GLM-4's template ignores the "tool" role, Mistral's
# and Llama's need the tool call forms they define)
CASES = [(t, c) for t in FAMILIES for c in CONVERSATIONS
         if not (t == "gemma" and c in ("system_multi", "tools")) and not (t == "glm4" and c == "tools")]


@pytest.fixture(scope="module")
def family_tokenizers(tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    out = {}
    for name, (controls, eos, bos, _) in FAMILIES.items():
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        extra = {"eos_token": eos, "additional_special_tokens": [c for c in controls if c not in (eos, bos)]}
        if bos:
            extra["bos_token"] = bos
        tok.add_special_tokens(extra)
        path = tmp_path_factory.mktemp(f"tok-{name}")
        tok.save_pretrained(path)
        out[name] = (path, AutoTokenizer.from_pretrained(path))
    return out


@pytest.mark.parametrize(("template", "case"), CASES)
def test_official_template_matches_apply_chat_template(template, case, family_tokenizers, tmp_path):
    path, tok = family_tokenizers[template]
    text = (TEMPLATES / f"{template}.jinja").read_text()
    messages = CONVERSATIONS[case]
    tools = [WEATHER_TOOL] if case == "tools" else None
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": messages, **({"tools": tools} if tools else {})}) + "\n")
    out = tmp_path / "o"
    m = prepare(resolved(path, [dataset("d", "openai", "sft", [data])], template=template), out, log=lambda m: None)
    (row,) = load_rows(out)
    rendered = tok.apply_chat_template(messages, tools=tools, chat_template=text, tokenize=False)
    expected = tok(rendered, add_special_tokens=False)["input_ids"]
    eos = FAMILIES[template][1]
    if template == "glm4":  # the appended EOS after each answer is the only difference
        ids = list(row["input_ids"])
        assert ids.count(tok.convert_tokens_to_ids(eos)) == sum(1 for x in messages if x["role"] == "assistant")
        assert [t for t in ids if t != tok.convert_tokens_to_ids(eos)] == expected
    else:
        assert row["input_ids"] == expected
    answers = [x for x in messages if x["role"] == "assistant"]
    want = ""
    for k, a in enumerate(answers):
        if a.get("tool_calls"):
            want += _rendered_call(template, a) + eos
        elif template == "qwen3" and k == len(answers) - 1:
            want += "<think>\n\n</think>\n\n" + a["content"] + eos  # Qwen3 writes the empty reasoning in the last turn
        else:
            want += FAMILIES[template][3].format(a=a["content"])
    assert trained_text(tok, row) == want
    assert m["boundary_tokens"] == 0
    if template == "mistral" and case == "system_multi":  # its template writes the system message nowhere here
        assert any("left out the system message of 1 rows" in w for w in m["warnings"])


def _rendered_call(template: str, message: dict) -> str:
    fn = message["tool_calls"][0]["function"]
    args = json.dumps(fn["arguments"], ensure_ascii=False)
    if template in ("qwen", "qwen3"):
        return f'<tool_call>\n{{"name": "{fn["name"]}", "arguments": {args}}}\n</tool_call>'
    if template == "llama3":
        return f'{{"name": "{fn["name"]}", "parameters": {args}}}'
    if template == "mistral":
        call = json.dumps(fn, ensure_ascii=False)[:-1] + ', "id": "' + message["tool_calls"][0]["id"] + '"}'
        return f"[TOOL_CALLS] [{call}]"
    raise AssertionError(template)


def test_gemma_refuses_a_system_message_by_name(family_tokenizers, tmp_path):
    from airtune.data import DataError

    path, _ = family_tokenizers["gemma"]
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": CONVERSATIONS["system_multi"]}) + "\n")
    with pytest.raises(DataError) as err:
        prepare(resolved(path, [dataset("d", "openai", "sft", [data])], template="gemma"), tmp_path / "o", log=lambda m: None)
    assert "d.jsonl: row 1" in str(err.value) and "System role not supported" in str(err.value)


def test_every_catalog_template_renders(tiny_model_dir, tmp_path):
    """Every template in configs/templates prepares a conversation with the tiny tokenizer (answers trained)."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": CONVERSATIONS["single"]}) + "\n")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for path in sorted(TEMPLATES.glob("*.jinja")):
        out = tmp_path / path.stem
        prepare(resolved(tiny_model_dir, [dataset("d", "openai", "sft", [data])], template=path.stem), out, log=lambda m: None)
        (row,) = load_rows(out)
        assert "It is 4." in trained_text(tok, row), path.stem
        assert "What is 2+2?" not in trained_text(tok, row), path.stem
