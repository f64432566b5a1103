"""A fault schedule for testing clients: a server whose next answers fail on purpose.

:class:`FaultyServer` is a :class:`~distil_core.serving.http.LocalOpenAIServer` that, for each
completion request, takes the next entry of its schedule and answers with that fault instead of
(or around) the normal answer; with the schedule empty it answers normally. It wraps the
server's one answering method, so the serving code has no fault branches. Clients' retries,
timeouts and error messages are tested against it (the api-expert plugin's tests, the rollout
client's), and ``distil serve --fault SPEC`` serves through it.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from distil_core.serving.http import LocalOpenAIServer, Response
from distil_core.serving.requests import ApiError, parse_body

__all__ = ["FAULT_KINDS", "Fault", "parse_fault", "FaultyServer"]

FAULT_KINDS = ("429", "500", "503", "slow", "malformed", "no_logprobs", "no_token_ids", "ok")


@dataclass
class Fault:
    """One scheduled misbehaviour: ``kind`` in FAULT_KINDS, with its delay or Retry-After."""

    kind: str
    seconds: float = 0.0


def parse_fault(spec: str | Fault) -> Fault:
    """``429[:retry_after_s]``, ``500``, ``503``, ``slow:delay_s``, ``malformed``, ``no_logprobs``,
    ``no_token_ids``, ``ok``.

    ``slow`` answers normally after the delay; ``malformed`` answers 200 with broken JSON;
    ``no_logprobs`` answers 200 with every log-prob field removed; ``no_token_ids`` ignores
    ``return_tokens_as_token_ids`` (tokens come as text, as from a server without that option);
    ``ok`` is a normal answer (a placeholder in a schedule). Seconds are a finite number >= 0:
    a NaN or infinite Retry-After or delay would only fail every request it meets with a 500.
    """
    if isinstance(spec, Fault):
        return spec
    kind, _, arg = str(spec).strip().partition(":")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault {spec!r}; use one of {', '.join(FAULT_KINDS)} (slow:SECONDS, 429:RETRY_AFTER)")
    try:
        seconds = float(arg) if arg else (0.0 if kind != "slow" else 1.0)
    except ValueError:
        raise ValueError(f"fault {spec!r}: {arg!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:  # a Retry-After header or a wait cannot be made of it
        raise ValueError(f"fault {spec!r}: the seconds must be a finite number >= 0 (e.g. {kind}:2)")
    return Fault(kind, seconds)


def _error(fault: Fault) -> ApiError:
    if fault.kind == "429":
        headers = {"Retry-After": f"{fault.seconds:g}", "retry-after-ms": str(int(fault.seconds * 1000))}
        return ApiError(429, "Rate limit reached (scheduled fault). Retry after the given delay.",
                        "rate_limit_error", code="rate_limit_exceeded", headers=headers)
    if fault.kind == "503":
        return ApiError(503, "The server is overloaded (scheduled fault).", "service_unavailable")
    return ApiError(500, "The server had an error (scheduled fault).", "server_error")


class FaultyServer(LocalOpenAIServer):
    """A :class:`LocalOpenAIServer` with a fault schedule, consumed one entry per completion request.

    ``faults`` is the initial schedule (see :func:`parse_fault`); :meth:`add_faults` queues more
    and :meth:`clear_faults` drops what is left. A faulted request is counted in ``stats`` like
    any other (a ``slow`` one is in flight while it waits).
    """

    def __init__(self, model: Any, tokenizer: Any, *, faults: Sequence[str | Fault] = (), **options: Any):
        super().__init__(model, tokenizer, **options)
        self._faults: deque[Fault] = deque(parse_fault(f) for f in faults)
        self._faults_lock = threading.Lock()
        self._stopping = threading.Event()

    def add_faults(self, *faults: str | Fault) -> None:
        parsed = [parse_fault(f) for f in faults]
        with self._faults_lock:
            self._faults.extend(parsed)

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    def stop(self) -> None:
        self._stopping.set()  # a slow answer still waiting ends now
        super().stop()

    def complete(self, path: str, raw: bytes) -> Response:
        with self._faults_lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is None or fault.kind == "ok":
            return super().complete(path, raw)
        if fault.kind in ("429", "500", "503"):
            raise _error(fault)
        if fault.kind == "slow":
            self._stopping.wait(fault.seconds)
        if fault.kind == "no_token_ids":
            raw = json.dumps({**parse_body(raw), "return_tokens_as_token_ids": False}).encode()
        status, headers, body = super().complete(path, raw)
        if not isinstance(body, bytes):  # a stream (which has no log-probs): malformed cuts its first event
            return (status, headers, _cut_stream(body)) if fault.kind == "malformed" else (status, headers, body)
        if fault.kind == "malformed":
            return status, headers, body[: len(body) // 2]
        if fault.kind == "no_logprobs":
            result = json.loads(body)
            for choice in result["choices"]:
                choice["logprobs"] = None
                choice.pop("prompt_logprobs", None)
            return status, headers, json.dumps(result).encode()
        return status, headers, body


def _cut_stream(events: Iterator[bytes]) -> Iterator[bytes]:
    """The first half of a stream's first event, then the end of the stream."""
    try:
        first = next(iter(events), b"")
        yield first[: len(first) // 2]
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
