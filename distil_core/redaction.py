"""Which option names hold secrets, and a config with their values hidden.

One rule for the whole toolkit: trackers never receive these values (config.yaml stays private
to the run's owner, but a tracker may send what it is given to a server), and plugins that talk
to providers (the API expert) keep them out of their messages and cache keys.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

SECRET_NAME = re.compile(r"(?i)secret|passw|credential|authorization|(^|[_-])(api_?key|key|token|auth)$|apikey$")
"""Option names whose values are secrets. Any name holding ``secret``,
``password``, ``credential`` or ``authorization`` (``aws_secret_access_key``,
``vertex_credentials``), or ending in ``key`` or ``token`` as a word (``api_key``, ``x-api-key``,
``hf_token``); not ``api_key_env`` (a variable's name) nor ``max_new_tokens``."""


def redacted(value: Any) -> Any:
    """``value`` with the value of every secret-looking key replaced by ``"***"``."""
    if isinstance(value, Mapping):
        return {k: "***" if isinstance(k, str) and SECRET_NAME.search(k) and v else redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value


__all__ = ["SECRET_NAME", "redacted"]
