"""JSON over HTTP to a rollout server (vLLM or ``distil serve``), with retries on overload and
errors that say what to do. :mod:`distil_core.rollouts.server` builds on it.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Optional

from distil_core.errors import DistilError
from distil_core.retry import RetryPolicy, retry_after_seconds

__all__ = ["RETRY_STATUSES", "ServerClient", "ServerError"]

RETRY_STATUSES = (429, 502, 503, 504)  # overloaded or restarting; a 500 is a server bug and is not retried


class ServerError(DistilError):
    """The rollout server refused a request or answered something the rollouts cannot use."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class ServerClient:
    """JSON over HTTP to one server, with retries on overload and errors that say what to do.

    ``retries`` more attempts follow a refused connection or a status in :data:`RETRY_STATUSES`,
    waiting as :class:`~distil_core.retry.RetryPolicy` says: the server's Retry-After (at most
    10 s), else 0.5 s doubling. A timeout is not retried: the server is busy, not gone.
    """

    def __init__(self, base_url: str, api_key: Optional[str] = None, timeout_s: float = 300.0, retries: int = 2):
        self.root = base_url.rstrip("/").removesuffix("/v1")
        self.api_key, self.timeout_s = api_key, timeout_s
        self.policy = RetryPolicy(retries=retries, backoff_s=0.5, backoff_max_s=float("inf"),
                                  retry_after_max_s=10.0, jitter=False)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Optional[dict[str, Any]] = None) -> Any:
        return self.request("POST", path, body)

    def request(self, verb: str, path: str, body: Optional[dict[str, Any]] = None) -> Any:
        """The parsed JSON answer (or its text); raises :class:`ServerError` on an error status."""
        url = self.root + path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(self.policy.retries + 1):
            last = attempt == self.policy.retries
            try:
                req = urllib.request.Request(url, data=data, method=verb, headers=headers)
                with urllib.request.urlopen(req, timeout=self.timeout_s) as response:
                    return _parsed(response.read())
            except urllib.error.HTTPError as exc:
                text = exc.read().decode("utf-8", "replace")
                if exc.code in RETRY_STATUSES and not last:
                    time.sleep(self.policy.delay(attempt, retry_after_seconds(exc.headers)))
                    continue
                raise ServerError(f"{verb} {url} answered {exc.code}: {_message(text)}", exc.code) from None
            except (socket.timeout, TimeoutError):
                raise ServerError(f"{verb} {url} did not answer within {self.timeout_s:g} s; raise "
                                  "rollout.server.timeout_s or lower rollout.server.max_concurrency.") from None
            except (urllib.error.URLError, ConnectionError) as exc:
                if not last:
                    time.sleep(self.policy.delay(attempt))
                    continue
                reason = getattr(exc, "reason", exc)
                raise ServerError(f"Cannot reach the rollout server at {url} ({reason}). Start it (`vllm serve ...` "
                                  "or `distil serve ...`), or fix rollout.server.base_url.") from None
        raise AssertionError("unreachable")


def _parsed(raw: bytes) -> Any:
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return text


def _message(text: str) -> str:
    """The error message of an OpenAI-shaped (or vLLM's older flat) error body, else the text."""
    body = _parsed(text.encode())
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return text.strip()[:500] or "(empty body)"
