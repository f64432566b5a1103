"""Which option names hold secrets, and a config with their values hidden.

One rule for the whole toolkit: trackers never receive these values (config.yaml stays private
to the run's owner, but a tracker may send what it is given to a server), and plugins that talk
to providers (the API expert) keep them out of their messages and cache keys.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

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
    """The secrets an address carries, as written and decoded: the password of its user part
    (``http://alice:pw@host``), or the user part itself when it has no password (a token written
    as ``https://TOKEN@host``), and the value of every query parameter with a secret-looking name
    (``?api-key=…``)."""
    read = _address(url)
    if read is None:
        return []
    _parts, userinfo, pairs = read
    user, sep, password = userinfo or ("", "", "")
    found = [v for v in (password if sep else user, *(value for _pair, value in pairs)) if v]
    found += [unquote_plus(v) for v in found] + [unquote(v) for v in found]
    return [v for v in dict.fromkeys(found) if v]


def redacted_url(url: str) -> str:
    """``url`` with its :func:`url_secrets` masked where they stand (the user part's password,
    or a user part without one, and each secret-named query value): an address can be shown in
    a message or sent to a tracker, a password in it never."""
    read = _address(url)
    if read is None:
        return url
    parts, userinfo, pairs = read
    netloc = parts.netloc
    if userinfo:
        user, sep, _password = userinfo
        netloc = (f"{user}:***@" if sep else "***@") + netloc.rsplit("@", 1)[1]
    query = "&".join(pair if value is None else pair.split("=", 1)[0] + "=***" for pair, value in pairs)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _address(url: Optional[str]) -> Optional[tuple[Any, Optional[tuple[str, str, str]], list[tuple[str, Optional[str]]]]]:
    """``url`` split once for both readers above: its parts, its user part as (user, ":", password)
    (None without one), and each query pair with its secret value (None: not secret-named).
    None when ``url`` is no address (no scheme, or a port that is no number)."""
    if not url or "://" not in url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    userinfo = parts.netloc.rsplit("@", 1)[0].partition(":") if "@" in parts.netloc else None
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        name, sep, value = pair.partition("=")
        pairs.append((pair, value if sep and value and SECRET_NAME.search(unquote_plus(name)) else None))
    return parts, userinfo, pairs


__all__ = ["SECRET_NAME", "redacted", "url_secrets", "redacted_url"]
