"""JSON over HTTP to a rollout server (vLLM or ``distil serve``), with retries on overload and
errors that say what to do. :mod:`distil_core.rollouts.server` builds on it.

Each request must be answered whole within ``timeout_s``: urllib's timeout bounds each read of
the socket only, so a server sending a byte now and then could hold a rollout step for ever.
A deadline timer shuts the request's socket down when the time is up, which ends a read
blocked on it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Optional

from distil_core.errors import DistilError
from distil_core.retry import RetryPolicy, retry_after_seconds

__all__ = ["RETRY_STATUSES", "ServerClient", "ServerError"]

RETRY_STATUSES = (429, 502, 503, 504)  # overloaded or restarting; a 500 is a server bug and is not retried
MAX_ANSWER_BYTES = 256 * 2**20
"""The largest answer read: n samples' tokens and log-probs take kilobytes to a few megabytes,
so more is a runaway or hostile server, refused before the trainer holds it all."""


class ServerError(DistilError):
    """The rollout server refused a request or answered something the rollouts cannot use."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class ServerClient:
    """JSON over HTTP to one server, with retries on overload and errors that say what to do.

    ``retries`` more attempts follow a refused connection, an answer broken off or not HTTP, or
    a status in :data:`RETRY_STATUSES`, waiting as :class:`~distil_core.retry.RetryPolicy` says:
    the server's Retry-After (at most 10 s), else 0.5 s doubling. ``timeout_s`` bounds each
    attempt whole (connecting and reading all of the answer); a timeout is not retried: the
    server is busy, not gone.
    """

    def __init__(self, base_url: str, api_key: Optional[str] = None, timeout_s: float = 300.0, retries: int = 2,
                 max_answer_bytes: int = MAX_ANSWER_BYTES):
        self.root = base_url.rstrip("/").removesuffix("/v1")
        self.api_key, self.timeout_s, self.max_answer_bytes = api_key, timeout_s, max_answer_bytes
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
                status, answer_headers, raw = self._exchange(
                    urllib.request.Request(url, data=data, method=verb, headers=headers))
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
            except http.client.HTTPException as exc:  # cut off mid-answer, or not HTTP at all
                if not last:
                    time.sleep(self.policy.delay(attempt))
                    continue
                raise ServerError(f"{verb} {url} answered with a broken HTTP response ({type(exc).__name__}: "
                                  f"{str(exc).strip()[:200]}), {attempt + 1} times. Is the server restarting, or "
                                  "is rollout.server.base_url another kind of server?") from None
            if not 200 <= status < 300:
                if 300 <= status < 400:  # never followed (_NoRedirect): a POST would come back a bodiless GET
                    where = answer_headers.get("Location") if answer_headers is not None else None
                    raise ServerError(f"{verb} {url} answered {status}, a redirect{f' to {where}' if where else ''}; "
                                      "rollout.server.base_url must name the server itself.", status)
                if status in RETRY_STATUSES and not last:
                    time.sleep(self.policy.delay(attempt, retry_after_seconds(answer_headers)))
                    continue
                message = _message(raw.decode("utf-8", "replace"))
                raise ServerError(f"{verb} {url} answered {status}: {message}", status)
            return _parsed(raw)
        raise AssertionError("unreachable")

    def _exchange(self, request: urllib.request.Request) -> tuple[int, Any, bytes]:
        """(status, headers, body) of one attempt, all of it within ``timeout_s`` or TimeoutError."""
        with _Deadline(self.timeout_s) as deadline:
            opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline), _NoRedirect())
            try:
                try:
                    with opener.open(request, timeout=self.timeout_s) as response:
                        answer = response.status, response.headers, self._read(request, response)
                except urllib.error.HTTPError as exc:  # an error status: its body says why
                    answer = exc.code, exc.headers, self._read(request, exc)
                    exc.close()
            except (OSError, http.client.HTTPException):
                if deadline.expired:
                    raise TimeoutError from None
                raise
        if deadline.expired:  # shut down at the deadline: what was read may be cut short
            raise TimeoutError
        return answer


    def _read(self, request: urllib.request.Request, response: Any) -> bytes:
        """The answer's body, refused past ``max_answer_bytes`` (declared or received)."""
        declared = (response.headers.get("Content-Length") if response.headers is not None else None) or ""
        too_big = declared.isdigit() and int(declared) > self.max_answer_bytes
        body = b"" if too_big else response.read(self.max_answer_bytes + 1)
        if too_big or len(body) > self.max_answer_bytes:
            raise ServerError(f"{request.get_method()} {request.full_url} answered more than "
                              f"{self.max_answer_bytes:,} bytes; a rollout answer takes a few megabytes at most.")
        raw = response if isinstance(response, http.client.HTTPResponse) else getattr(response, "fp", None)
        left = getattr(raw, "length", None)  # what a declared length still expects (0 for a 204 or 304)
        if isinstance(left, int) and left > 0:  # read(n) returns what came before a cut, without a word
            raise http.client.IncompleteRead(body, left)
        return body


class _Deadline:
    """Shuts down the sockets it watches once ``seconds`` have passed since it was entered."""

    def __init__(self, seconds: float):
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    """An http.client connection whose socket a :class:`_Deadline` watches."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.deadline.watch(self.sock)  # type: ignore[attr-defined]


class _WatchedHTTP(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPS(_Watched, http.client.HTTPSConnection):
    pass


class _Watching:
    """A urllib handler that opens its connections watched by ``deadline``."""

    connection: type

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self.connection, req, deadline=self.deadline, **kwargs)  # type: ignore[misc]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Every 3xx comes back as an error status: urllib would follow a POST's 301/302/303 as a GET
    without its body, and a policy sync answered that way would be lost without a word."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _HTTPHandler(_Watching, urllib.request.HTTPHandler):
    connection = _WatchedHTTP


class _HTTPSHandler(_Watching, urllib.request.HTTPSHandler):
    connection = _WatchedHTTPS


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
