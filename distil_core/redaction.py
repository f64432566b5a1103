"""Which option names hold secrets, and a config with their values hidden.

One rule for the whole toolkit: trackers never receive these values (config.yaml stays private
to the run's owner, but a tracker may send what it is given to a server), and plugins that talk
to providers (the API expert) keep them out of their messages and cache keys.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional
from urllib.parse import parse_qsl, quote, urlsplit

SECRET_NAME = re.compile(r"(?i)secret|passw|credential|authorization|(^|[_-])(api_?key|key|token|auth)$|apikey$")
"""Option names whose values are secrets. Any name holding ``secret``,
``password``, ``credential`` or ``authorization`` (``aws_secret_access_key``,
``vertex_credentials``), or ending in ``key`` or ``token`` as a word (``api_key``, ``x-api-key``,
``hf_token``); not ``api_key_env`` (a variable's name) nor ``max_new_tokens``."""


def redacted(value: Any) -> Any:
    """``value`` with the value of every secret-looking key replaced by ``"***"``, and the
    secrets written into an address hidden (:func:`redacted_url`)."""
    if isinstance(value, Mapping):
        return {k: "***" if isinstance(k, str) and SECRET_NAME.search(k) and v else redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return redacted_url(value)
    return value


def url_secrets(url: Optional[str]) -> list[str]:
    """The secrets an address carries: the password of its user part
    (``http://alice:pw@host``) and the value of every query parameter with a secret-looking name
    (``?api-key=…``)."""
    if not url or "://" not in url:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.password] if parts.password else []
        found += [v for k, v in parse_qsl(parts.query, keep_blank_values=False) if SECRET_NAME.search(k)]
    except ValueError:  # not an address after all (a port that is no number)
        return []
    return [v for v in found if v]


def redacted_url(url: str) -> str:
    """``url`` with each of its :func:`url_secrets` replaced by ``***``: an address can be shown
    in a message or sent to a tracker, the password in it never."""
    for secret in sorted(url_secrets(url), key=len, reverse=True):
        url = url.replace(secret, "***")
        url = url.replace(quote(secret, safe=""), "***")
    return url


__all__ = ["SECRET_NAME", "redacted", "url_secrets", "redacted_url"]
