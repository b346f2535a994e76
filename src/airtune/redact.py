"""Secret-looking text kept out of messages, DAG descriptions, logs and links.

Three kinds: a value under a key that names a secret (`hub_token`, `password`, `api_key`, ...), a
value that looks like a credential whatever its key (Hugging Face, OpenAI, GitHub, Slack, AWS key
ids, JWTs, `Bearer ...`), and the user:password part of a URL."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
SECRET_KEY = re.compile(r"(token|passw(or)?d|secret|api[_-]?key|access[_-]?key|private[_-]?key|credential|auth)", re.I)
SECRET_VALUE = re.compile(
    r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_\-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abpr]-[A-Za-z0-9\-]{10,}"
    r"|AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})\b"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*")
URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/@\s:]*(:[^/@\s]*)?)@")


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(SECRET_KEY.search(key))


def text(value: str) -> str:
    """`value` with credentials and URL passwords masked."""
    if not isinstance(value, str) or not value:
        return value
    value = URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", value)
    return SECRET_VALUE.sub(MASK, value)


def value(v: Any, key: Any = None) -> Any:
    """A value for display: masked whole under a secret key, else its secret-looking parts; mappings
    and lists recursively."""
    if key is not None and is_secret_key(key) and v not in (None, "", {}, []):
        return MASK
    if isinstance(v, str):
        return text(v)
    if isinstance(v, dict):
        return {k: value(x, k) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(value(x) for x in v)
    return v


def url(u: str) -> str:
    """A link without its user:password."""
    return URL_USERINFO.sub(lambda m: m.group("scheme"), u) if isinstance(u, str) else u
