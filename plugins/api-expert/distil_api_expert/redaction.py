"""Keeping credentials out of what the expert says.

A provider's error message may quote the key, or an address with a password in it, and the
expert's messages end up in logs, metrics.jsonl and trackers. Which option names hold secrets
is the core's rule (:data:`distil_core.SECRET_NAME`); this adds the expert's own: the key, the
secret-named ``litellm_kwargs``, and anything shaped like an OpenAI key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from distil_core import SECRET_NAME, url_secrets

_SECRET = re.compile(r"(sk-[A-Za-z0-9_\-]{6})[A-Za-z0-9_\-]+")
MIN_SECRET_CHARS = 4  # shorter values would blot out ordinary words of a message


def secret_values(api_key: Optional[str], options: Optional[Mapping[str, Any]] = None,
                  api_base: Optional[str] = None) -> list[str]:
    """The configured key, every text value under a secret-looking name in ``options`` (nested
    mappings included) and the secrets written into ``api_base`` (``url_secrets``): what
    :func:`redact` must never let through."""
    found = [api_key] if api_key else []
    found += url_secrets(api_base)
    stack = [options or {}]
    while stack:
        for name, value in stack.pop().items():
            if isinstance(value, Mapping):
                stack.append(value)
            elif isinstance(value, str) and SECRET_NAME.search(str(name)):
                found.append(value)
    return sorted({v for v in found if len(v) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with every value of ``secrets`` (see :func:`secret_values`) replaced by ``***``
    and anything shaped like an OpenAI key shortened: messages end up in logs and metrics."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return _SECRET.sub(r"\1…", text)
