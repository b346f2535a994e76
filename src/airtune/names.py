"""Names derived from a job: folders, MLflow names, Kubernetes objects. Always valid, never late errors."""

from __future__ import annotations

import hashlib
import re

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def is_dns_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS_LABEL.match(value))


def short_hash(*parts: str, length: int = 8) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:length]


def dns_label(*parts: str, max_len: int = 63) -> str:
    """Join parts into a DNS-1123 label of at most max_len characters.

    Over-long names are truncated and given a hash of the full name, so two different long names
    never collide and the result is stable.
    """
    raw = "-".join(p for p in parts if p)
    text = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
    text = re.sub(r"-{2,}", "-", text) or "x"
    if len(text) <= max_len and text == raw:
        return text
    digest = short_hash(raw)
    keep = max_len - len(digest) - 1
    return f"{text[:keep].rstrip('-')}-{digest}" if keep > 0 else digest[:max_len]


def safe_path_component(value: str) -> str:
    """Airflow run ids contain ':' and '+'; keep folders portable."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", value)
