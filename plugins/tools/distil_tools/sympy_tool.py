"""Tool ``sympy``: equality checks, simplification and equation solving.

The input is read here (:func:`parse_request`: the string and object forms) and every
expression in it is checked in this process by the whitelist of :mod:`distil_tools.symbolic`,
so unsafe input is refused before any sympy code sees it. Then the work runs in a worker
process — this interpreter started with ``-I`` on ``symbolic.py`` — limited to ``memory_mb`` of
address space and ``timeout_s`` of wall time per call. A worker that times out is killed; the
next call starts a fresh one. Workers are reused (sympy's import takes most of a second) and
replaced after :data:`RECYCLE_AFTER` calls so sympy's caches cannot grow without bound.
``isolate=False`` runs sympy in this process instead: faster, but with no time or memory limit.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Optional, Union

from . import symbolic
from .base import ToolInput, ToolResult
from .options import MAX_MEMORY_MB, flag, seconds, whole
from .symbolic import SymbolicError

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "symbolic.py")
STARTUP_TIMEOUT_S = 60.0
RECYCLE_AFTER = 200
MAX_WORKERS = 64  # worker processes, each a Python with sympy imported (about 100 MB)
_FOR_SUFFIX = re.compile(r"\s+for\s+([A-Za-z][A-Za-z0-9_]*(?:\s*,\s*[A-Za-z][A-Za-z0-9_]*)*)\s*$")


# -- reading the tool input ---------------------------------------------------------------


def parse_request(input: Union[str, dict]) -> dict[str, Any]:
    """The tool input as ``{"op", "exprs", "equals", "for"}``, every expression validated.

    String forms: ``"simplify: <expr>"`` (also ``expand``/``factor``), ``"solve: <lhs> = <rhs>
    [; <equation> ...] [for x, y]"``, ``"equals: <a> == <b>"``, or without a prefix: ``a == b``
    is an equality check, ``lhs = rhs`` an equation to solve, anything else is simplified. A
    string that starts with ``{`` is read as the JSON object form.
    """
    if isinstance(input, str):
        text = input.strip()
        if text.startswith("{"):
            try:
                input = json.loads(text)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError, or nesting or digits past Python's limits
                problem = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply or a number too long"
                raise SymbolicError(f"the input looks like JSON but is not valid: {problem}") from None
        else:
            return _request_from_text(text)
    if not isinstance(input, dict):
        raise SymbolicError('give a string such as "simplify: sin(x)**2 + cos(x)**2" or an object with "expr"')
    return _request_from_dict(input)


def _request_from_text(text: str) -> dict[str, Any]:
    op = None
    head, sep, rest = text.partition(":")
    if sep and head.strip().lower() in symbolic.OPERATIONS:
        op, text = head.strip().lower(), rest.strip()
    symbols = None
    suffix = _FOR_SUFFIX.search(text)
    if suffix and (op in (None, "solve")):
        symbols = [s.strip() for s in suffix.group(1).split(",")]
        text = text[: suffix.start()]
    if op is None:
        op = "equals" if "==" in text else "solve" if symbolic.split_equation(text)[1] is not None else "simplify"
    if op == "equals":
        left, sep, right = text.partition("==")
        if not sep:
            raise SymbolicError('an equality check needs two sides: "equals: a == b"')
        return _request_from_dict({"op": "equals", "expr": left, "equals": right})
    if op == "solve":
        return _request_from_dict({"op": "solve", "expr": [e for e in text.split(";") if e.strip()], "for": symbols})
    return _request_from_dict({"op": op, "expr": text})


def _request_from_dict(obj: dict[str, Any]) -> dict[str, Any]:
    allowed = {"op", "expr", "equals", "for"}
    extra = sorted(set(obj) - allowed)
    if extra:
        raise SymbolicError(f"unexpected key {', '.join(map(repr, extra))}; the keys are op, expr, equals, for")
    op = obj.get("op") or ("equals" if "equals" in obj else "simplify")
    if op not in symbolic.OPERATIONS:
        raise SymbolicError(f"unknown operation {op!r}; use one of {', '.join(symbolic.OPERATIONS)}")
    exprs = obj.get("expr")
    if isinstance(exprs, str):
        exprs = [exprs]
    if not isinstance(exprs, list) or not exprs or not all(isinstance(e, str) for e in exprs):
        raise SymbolicError('"expr" must be a string (or, to solve a system, a list of strings)')
    if len(exprs) > (symbolic.MAX_EQUATIONS if op == "solve" else 1):
        raise SymbolicError(f"too many expressions for {op} (at most {symbolic.MAX_EQUATIONS if op == 'solve' else 1})")
    request: dict[str, Any] = {"op": op, "exprs": [e.strip() for e in exprs], "equals": None, "for": None}
    if op == "equals":
        other = obj.get("equals")
        if other is None and "==" in exprs[0]:
            request["exprs"][0], _, other = exprs[0].partition("==")
        if not isinstance(other, str):
            raise SymbolicError('an equality check needs "equals": the expression to compare with')
        request["exprs"][0], request["equals"] = request["exprs"][0].strip(), other.strip()
    symbols = obj.get("for")
    if symbols is not None:
        symbols = [symbols] if isinstance(symbols, str) else symbols
        if not isinstance(symbols, list) or not all(isinstance(s, str) and symbolic.SYMBOL.match(s.strip()) for s in symbols):
            raise SymbolicError('"for" must name symbols, as in "x" or ["x", "y"]')
        request["for"] = [s.strip() for s in symbols]
    for text in _expressions(request):
        symbolic.check_expression(text)
    return request


def _expressions(request: dict[str, Any]) -> list[str]:
    texts = []
    for text in request["exprs"]:
        left, right = symbolic.split_equation(text) if request["op"] == "solve" else (text, None)
        texts.extend([left] + ([right] if right is not None else []))
    if request["equals"] is not None:
        texts.append(request["equals"])
    return texts


# -- the worker processes ------------------------------------------------------------------


class WorkerError(RuntimeError):
    """The worker timed out, died or could not start."""


class WorkerStartError(WorkerError):
    """No worker could be started: the tool's machinery failed, not the call's input."""


class _Worker:
    """One sympy worker process, used by one thread at a time."""

    def __init__(self, memory_mb: int):
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", WORKER, str(memory_mb)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            raise WorkerStartError(f"the sympy worker could not start: {exc}") from None
        self.buffer = b""
        self.served = 0
        try:
            ready = self._read_line(STARTUP_TIMEOUT_S)
            started = json.loads(ready) == {"ready": True}
        except WorkerError as exc:
            raise WorkerStartError(f"the sympy worker could not start: {exc}") from None
        except ValueError:
            started = False
        if not started:
            self.close()
            raise WorkerStartError(f"the sympy worker did not start properly: {ready[:200]!r}")

    def ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.close()
            raise WorkerError(f"the sympy worker has died (exit status {self.proc.poll()})") from None
        self.served += 1
        return json.loads(self._read_line(timeout_s))

    def _read_line(self, timeout_s: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.close()
                raise WorkerError(f"timed out after {timeout_s:g} s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self.close()
                status = self.proc.returncode
                why = " (probably out of memory)" if status is not None and status != 0 else ""
                raise WorkerError(f"the sympy worker died (exit status {status}){why}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass


def _close_all(workers: list[_Worker]) -> None:
    while workers:
        workers.pop().close()


class SympyTool:
    """Symbolic checks with sympy: equals, simplify, expand, factor, solve."""

    name = "sympy"
    description = 'Symbolic math with sympy: {"expr": "...", "equals": "..."}, "simplify: ...", "solve: x**2 = 4".'
    run_options = frozenset({"timeout_s", "memory_mb", "workers", "isolate"})
    """How many workers and under what limits, not the answers (the same sympy computes them; a
    limit shows only in a call that reaches it): left out of the tiny base's cache key."""

    def __init__(self, timeout_s: float = 10.0, memory_mb: int = 1024, workers: int = 2, isolate: bool = True):
        self.timeout_s = seconds("timeout_s", timeout_s)
        self.memory_mb = whole("memory_mb", memory_mb, 128, MAX_MEMORY_MB, unit="MiB")
        self.workers = whole("workers", workers, 1, MAX_WORKERS)
        self.isolate = flag("isolate", isolate)
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.workers)
        self._finalizer = weakref.finalize(self, _close_all, self._idle)

    def run(self, input: ToolInput) -> ToolResult:
        try:
            request = parse_request(input)
        except SymbolicError as exc:
            return ToolResult.error(str(exc))
        if not self.isolate:
            reply = symbolic.run_request(request)
        else:
            try:
                reply = self._ask(request)
            except WorkerStartError as exc:  # the tool's machinery, not the input: kept from the expert
                return ToolResult.error(f"sympy: {exc}", infrastructure_error=True)
            except WorkerError as exc:
                return ToolResult.error(f"sympy: {exc}")
        return ToolResult(reply["text"], ok=bool(reply["ok"]), data={"op": request["op"], **reply.get("data", {})})

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._slots:
            with self._lock:
                worker: Optional[_Worker] = self._idle.pop() if self._idle else None
            if worker is None:
                worker = _Worker(self.memory_mb)
            reply: Optional[dict[str, Any]] = None
            try:
                reply = worker.ask(request, self.timeout_s)
            finally:
                # Whatever ask raised (not only WorkerError), the worker goes back to the pool
                # or is stopped: a worker left in neither is a process outside the `workers` limit.
                if reply is not None and worker.alive and worker.served < RECYCLE_AFTER and not reply.get("restart"):
                    with self._lock:
                        self._idle.append(worker)
                else:
                    worker.close()
            return reply

    def close(self) -> None:
        """Stop the idle workers (also done when the tool is garbage-collected)."""
        with self._lock:
            _close_all(self._idle)
