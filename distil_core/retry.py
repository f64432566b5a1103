"""When to try an HTTP request again, and how long to wait first: one policy for every client.

The rollout client (:class:`distil_core.rollouts.client.ServerClient`) and plugins that call
remote models (the api-expert plugin) retry the same way: a server that says how long to wait
(``retry-after-ms`` or ``Retry-After``, in seconds or as an HTTP date) is believed, up to a cap;
otherwise the wait doubles with each attempt, up to a ceiling, with jitter so that the retries
of many concurrent requests do not arrive together. Which failures are worth retrying is the
caller's call (a rollout server's 500 is a bug; a provider's is usually a hiccup);
:data:`TRANSIENT_STATUSES` is the usual answer for a hosted API.

Torch-free, no dependencies.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["RetryPolicy", "TRANSIENT_STATUSES", "is_transient_status", "retry_after_seconds"]

TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})  # and every 5xx: see is_transient_status


def is_transient_status(status: Optional[int]) -> bool:
    """True for a status a hosted API answers when the same request may succeed later."""
    return status is not None and (status in TRANSIENT_STATUSES or status >= 500)


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more attempts after the first; the wait before retry ``attempt`` (0-based) is
    the server's Retry-After (at most ``retry_after_max_s``), else ``backoff_s * 2**attempt``
    (at most ``backoff_max_s``), scaled by a random factor in [0.5, 1] when ``jitter``."""

    retries: int = 2
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 60.0
    jitter: bool = True

    def delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        """Seconds to wait before retry ``attempt``; ``retry_after``: what the server asked for."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_max_s)
        base = min(self.backoff_max_s, self.backoff_s * (2 ** attempt))
        return base * (0.5 + random.random() / 2) if self.jitter else base


def retry_after_seconds(*sources: Any) -> Optional[float]:
    """Seconds the server asked the client to wait, from the first of ``sources`` (header
    mappings; None is skipped) that says: ``retry-after-ms``, else ``Retry-After`` in seconds
    or as an HTTP date. None when none says."""
    for headers in sources:
        if headers is None:
            continue
        try:
            ms = _header(headers, "retry-after-ms")
            if ms is not None:
                return max(0.0, float(ms) / 1000)
            value = _header(headers, "retry-after")
        except (TypeError, ValueError, AttributeError):
            continue
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                continue
    return None


def _header(headers: Any, name: str) -> Any:
    """``headers[name]`` whatever the mapping's case rules (a plain dict has none)."""
    value = headers.get(name)
    if value is None and isinstance(headers, dict):
        value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    return value
