"""Check each row against its format and turn it into one normal form.

Formats (LLaMA-Factory's, with its column and tag names):

- `alpaca`: instruction (`prompt`), input (`query`), output (`response`), optional `system` and
  `history` ([[question, answer], ...]); preference: `chosen`/`rejected` columns, or an output that
  is a list [chosen, rejected]; KTO: a boolean `kto_tag` column; text: one text column.
- `sharegpt`: a list of messages (`messages`, default column `conversations`) of
  {from, value} (`role_tag`, `content_tag`), roles named by `user_tag`, `assistant_tag`,
  `observation_tag`, `function_tag`, `system_tag`; optional `system` and `tools` columns;
  preference: `chosen`/`rejected` columns holding one message each.
- `openai`: `messages` of {role, content} with OpenAI's roles, assistant `tool_calls` and `tool`
  messages; otherwise as sharegpt.

The normal forms (plain dicts, cheap to send to worker processes):

- conversation: {"messages": [{"role", "content", ["tool_calls"]}, ...], "tools": list | None}
- preference:   {"prompt": messages, "chosen": message, "rejected": message, "tools"}
- kto:          {"prompt": messages, "completion": message, "label": bool, "tools"}
- text:         {"text": str}
"""

from __future__ import annotations

import json


class Bad(Exception):
    """A row fails its checks: `field` is the column (or message field), `problem` what is wrong."""

    def __init__(self, field: str | None, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


SHAREGPT_TAGS = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}
OPENAI_TAGS = {
    "role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
    "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system",
}
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}


def _kind_of(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _looks_like(row: dict) -> str | None:
    """Name the format a row seems to have, for errors about rows of another format."""
    if not isinstance(row, dict):
        return None
    if "conversations" in row:
        return "sharegpt (conversations)"
    if "messages" in row:
        return "openai/sharegpt (messages)"
    if "instruction" in row or "output" in row:
        return "alpaca (instruction/output)"
    if "text" in row and len(row) == 1:
        return "plain text"
    return None


class Converter:
    """Turns rows of one dataset entry into normal-form examples; `convert(row)` raises Bad."""

    def __init__(self, fmt: str, kind: str, columns: dict | None = None, tags: dict | None = None):
        self.fmt, self.kind = fmt, kind
        columns = dict(columns or {})
        if fmt not in ("alpaca", "sharegpt", "openai", "text"):
            raise ValueError(f"unknown format {fmt!r}; accepted: alpaca, sharegpt, openai, text")
        if kind not in ("sft", "preference", "kto", "text"):
            raise ValueError(f"unknown kind {kind!r}; accepted: sft, preference, kto, text")
        if fmt == "alpaca":
            self.columns = {**ALPACA_COLUMNS, **columns}
        else:
            self.columns = {"messages": "conversations" if fmt == "sharegpt" else "messages",
                            "system": "system", "tools": "tools", **columns}
        self.columns.setdefault("chosen", "chosen")
        self.columns.setdefault("rejected", "rejected")
        self.columns.setdefault("kto_tag", "label")
        base = SHAREGPT_TAGS if fmt == "sharegpt" else OPENAI_TAGS
        self.tags = {**base, **(tags or {})}
        t = self.tags
        self.role_of = {t["user_tag"]: "user", t["assistant_tag"]: "assistant", t["observation_tag"]: "tool",
                        t["function_tag"]: "function_call", t["system_tag"]: "system"}
        if fmt == "openai" or t["role_tag"] == "role":
            self.role_of.update({"user": "user", "assistant": "assistant", "tool": "tool", "system": "system"})
        # (explicit) columns a row must have, for the "missing column" check of whole files
        self.required = self._required()

    def _required(self) -> list[str]:
        c = self.columns
        if self.kind == "text":
            return [self.text_column()]
        if self.fmt == "alpaca":
            req = [c["prompt"]]
            if self.kind == "sft" or self.kind == "kto":
                req.append(c["response"])
            if self.kind == "kto":
                req.append(c["kto_tag"])
            return req
        req = [c["messages"]]
        if self.kind == "preference":
            req += [c["chosen"], c["rejected"]]
        if self.kind == "kto":
            req.append(c["kto_tag"])
        return req

    def text_column(self) -> str:
        c = self.columns
        return c.get("text") or (c["prompt"] if self.fmt == "alpaca" and "prompt" in c and c["prompt"] != "instruction" else None) or "text"

    # -- entry point ---------------------------------------------------------------------------
    def convert(self, row) -> dict:
        if not isinstance(row, dict):
            raise Bad(None, f"expected an object (one row), found {_kind_of(row)}")
        if self.kind == "text":
            return {"text": self._text(row, self.text_column(), allow_empty=False)}
        if self.fmt == "alpaca":
            return self._alpaca(row)
        return self._conversation(row)

    # -- helpers -------------------------------------------------------------------------------
    def _missing(self, row: dict, col: str) -> Bad:
        seems = _looks_like(row)
        hint = f" (this row looks like {seems}, the dataset is declared {self.fmt})" if seems and not seems.startswith(self.fmt) else ""
        return Bad(col, f"missing{hint}")

    def _text(self, row: dict, col: str, *, allow_empty: bool = True, required: bool = True) -> str:
        if col not in row or row[col] is None:
            if not required:
                return ""
            raise self._missing(row, col)
        value = row[col]
        if not isinstance(value, str):
            raise Bad(col, f"expected a string, found {_kind_of(value)}")
        if not allow_empty and not value.strip():
            raise Bad(col, "empty")
        return value

    def _label(self, row: dict) -> bool:
        col = self.columns["kto_tag"]
        if col not in row or row[col] is None:
            raise self._missing(row, col)
        v = row[col]
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0"):
            return v.strip().lower() in ("true", "1")
        raise Bad(col, f"expected a boolean (true/false), found {_kind_of(v)} {v!r}"[:200])

    def _tools(self, row: dict):
        col = self.columns.get("tools")
        if not col or col not in row or row[col] in (None, "", []):
            return None
        v = row[col]
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError as exc:
                raise Bad(col, f"not valid JSON ({exc})") from None
        if isinstance(v, dict):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
            raise Bad(col, f"expected a list of tool descriptions (objects), found {_kind_of(v)}")
        return v

    # -- alpaca --------------------------------------------------------------------------------
    def _alpaca(self, row: dict) -> dict:
        c = self.columns
        instruction = self._text(row, c["prompt"], allow_empty=True)
        query = self._text(row, c["query"], required=False) if c.get("query") else ""
        content = "\n".join(x for x in (instruction, query) if x)
        if not content.strip():
            raise Bad(c["prompt"], "empty (no instruction and no input)")
        messages = []
        system = self._text(row, c["system"], required=False) if c.get("system") else ""
        if system:
            messages.append({"role": "system", "content": system})
        hist_col = c.get("history")
        if hist_col and row.get(hist_col) not in (None, []):
            history = row[hist_col]
            if not isinstance(history, list):
                raise Bad(hist_col, f"expected a list of [question, answer] pairs, found {_kind_of(history)}")
            for k, pair in enumerate(history):
                if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                    raise Bad(f"{hist_col}[{k}]", "expected a [question, answer] pair of strings")
                if not pair[1].strip():
                    raise Bad(f"{hist_col}[{k}]", "empty answer")
                messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        messages.append({"role": "user", "content": content})
        tools = None
        if self.kind == "sft":
            answer = self._text(row, c["response"], allow_empty=False)
            return {"messages": messages + [{"role": "assistant", "content": answer}], "tools": tools}
        if self.kind == "kto":
            answer = self._text(row, c["response"], allow_empty=False)
            return {"prompt": messages, "completion": {"role": "assistant", "content": answer},
                    "label": self._label(row), "tools": tools}
        # preference: chosen/rejected columns, or the response column holding [chosen, rejected]
        resp = row.get(c["response"])
        if c["chosen"] not in row and isinstance(resp, list):
            if len(resp) != 2 or not all(isinstance(x, str) for x in resp):
                raise Bad(c["response"], "a preference row's output must be [chosen, rejected]: two strings")
            chosen, rejected = resp
            if not chosen.strip():
                raise Bad(f"{c['response']}[0]", "empty (the chosen answer)")
            if not rejected.strip():
                raise Bad(f"{c['response']}[1]", "empty (the rejected answer)")
        else:
            chosen = self._text(row, c["chosen"], allow_empty=False)
            rejected = self._text(row, c["rejected"], allow_empty=False)
        return {"prompt": messages, "chosen": {"role": "assistant", "content": chosen},
                "rejected": {"role": "assistant", "content": rejected}, "tools": tools}

    # -- sharegpt / openai ---------------------------------------------------------------------
    def _message(self, raw, where: str) -> dict:
        t = self.tags
        if not isinstance(raw, dict):
            raise Bad(where, f"expected a message object, found {_kind_of(raw)}")
        if t["role_tag"] not in raw:
            raise Bad(f"{where}.{t['role_tag']}", "missing")
        tag = raw[t["role_tag"]]
        role = self.role_of.get(tag) if isinstance(tag, str) else None
        if role is None:
            accepted = ", ".join(sorted(k for k in self.role_of if isinstance(k, str)))
            raise Bad(f"{where}.{t['role_tag']}", f"unknown role {tag!r}; accepted: {accepted}")
        content = raw.get(t["content_tag"])
        tool_calls = raw.get("tool_calls") if role == "assistant" else None
        if isinstance(content, list):  # OpenAI content parts
            texts = []
            for part in content:
                if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                else:
                    raise Bad(f"{where}.{t['content_tag']}", "only text content parts are supported")
            content = "".join(texts)
        if content is None and tool_calls:
            content = ""
        if content is None:
            raise Bad(f"{where}.{t['content_tag']}", "missing")
        if not isinstance(content, str):
            raise Bad(f"{where}.{t['content_tag']}", f"expected a string, found {_kind_of(content)}")
        msg = {"role": role, "content": content}
        if role == "function_call":  # sharegpt: the assistant calls a tool; the value is the JSON call
            try:
                call = json.loads(content)
            except ValueError:
                raise Bad(f"{where}.{t['content_tag']}", "a function call must be JSON ({\"name\": ..., \"arguments\": ...})") from None
            calls = call if isinstance(call, list) else [call]
            if not all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in calls):
                raise Bad(f"{where}.{t['content_tag']}", "a function call needs a \"name\"")
            msg = {"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function", "function": {"name": x["name"], "arguments": x.get("arguments", {})}} for x in calls]}
        elif tool_calls:
            if not isinstance(tool_calls, list) or not all(isinstance(x, dict) for x in tool_calls):
                raise Bad(f"{where}.tool_calls", "expected a list of tool calls (objects)")
            norm = []
            for k, call in enumerate(tool_calls):
                fn = call.get("function", call)
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise Bad(f"{where}.tool_calls[{k}]", "a tool call needs function.name")
                args = fn.get("arguments", {})
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except ValueError:
                        pass  # kept as text: templates print it as given
                item = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
                if isinstance(call.get("id"), str):
                    item["id"] = call["id"]
                norm.append(item)
            msg["tool_calls"] = norm
        if role == "tool":  # kept for templates that name the call answered (Mistral: tool_call_id)
            for key in ("tool_call_id", "name"):
                if isinstance(raw.get(key), str):
                    msg[key] = raw[key]
        return msg

    def _messages(self, row: dict) -> list[dict]:
        col = self.columns["messages"]
        if col not in row or row[col] is None:
            raise self._missing(row, col)
        raw = row[col]
        if not isinstance(raw, list):
            raise Bad(col, f"expected a list of messages, found {_kind_of(raw)}")
        messages = [self._message(m, f"{col}[{k}]") for k, m in enumerate(raw)]
        system = self._text(row, self.columns["system"], required=False) if self.columns.get("system") else ""
        if system:
            if messages and messages[0]["role"] == "system":
                raise Bad(self.columns["system"], "a system column and a system message in the same row")
            messages.insert(0, {"role": "system", "content": system})
        return messages

    def _check_turns(self, messages: list[dict], col: str, *, ends_with: str, added: int = 0) -> None:
        """After an optional system message: user (or tool) and assistant turns alternate, as in LLaMA-Factory.

        `added`: 1 when the system message came from the system column (error indices point into the file's list).
        """
        start = 1 if messages and messages[0]["role"] == "system" else 0
        for k, m in enumerate(messages[start:], start=start):
            where = f"{col}[{k - added}]"
            if m["role"] == "system":
                raise Bad(where, "a system message is only allowed first")
            expect_user = (k - start) % 2 == 0
            if expect_user and m["role"] not in ("user", "tool"):
                raise Bad(where, f"expected a user (or tool) turn here, found {m['role']}")
            if not expect_user and m["role"] != "assistant":
                raise Bad(where, f"expected an assistant turn here, found {m['role']}")
            if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
                raise Bad(f"{where}.{self.tags['content_tag']}", "empty response")
        n = len(messages) - start
        if n == 0:
            raise Bad(col, "no messages")
        if ends_with == "assistant" and messages[-1]["role"] != "assistant":
            raise Bad(col, "the conversation must end with an assistant turn")
        if ends_with == "user" and messages[-1]["role"] not in ("user", "tool"):
            raise Bad(col, "the prompt must end with a user (or tool) turn; the answers are in chosen/rejected")

    def _conversation(self, row: dict) -> dict:
        c = self.columns
        messages = self._messages(row)
        added = 1 if (c.get("system") and row.get(c["system"])) else 0
        tools = self._tools(row)
        if self.kind == "sft":
            self._check_turns(messages, c["messages"], ends_with="assistant", added=added)
            return {"messages": messages, "tools": tools}
        if self.kind == "kto":
            self._check_turns(messages, c["messages"], ends_with="assistant", added=added)
            return {"prompt": messages[:-1], "completion": messages[-1], "label": self._label(row), "tools": tools}
        self._check_turns(messages, c["messages"], ends_with="user", added=added)
        out = {"prompt": messages, "tools": tools}
        for key in ("chosen", "rejected"):
            col = c[key]
            if col not in row or row[col] is None:
                raise self._missing(row, col)
            value = row[col]
            if isinstance(value, str):
                msg = {"role": "assistant", "content": value}
            else:
                msg = self._message(value, col)
            if msg["role"] != "assistant":
                raise Bad(col, f"expected an assistant message, found {msg['role']}")
            if not msg["content"].strip() and not msg.get("tool_calls"):
                raise Bad(col, "empty response")
            out[key] = msg
        return out
