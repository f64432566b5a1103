"""Grading sessions: the batch harness kept running across steps (``sessions: true``).

A batch job (``batch.py``) pays, at every step, for a sandbox, an interpreter, the harness's
imports and its fork server before grading anything: on two cores about as long as grading a
step's rollouts. A session is the same harness, in the same kind of sandbox with the same
limits, started once and then sent one batch per step over its stdin (a
:class:`distil_sandbox.Conversation`; see ``serve`` in ``harness.py``). Each batch carries a
fresh key, and each run its own nonce, so results are checked exactly as a batch job's are. On bwrap
the sandbox's init keeps none of the session's pipes (see ``distil_sandbox.bwrap``), so no
process of the job can reach them. Behind that, each request is signed with a secret the harness
reads before any solution runs, and a batch's answer ends at a token sent with it: a solution's
process that did reach them could neither slip in a request nor end a batch early to read the
next one (and its key) while it still runs.

What keeps one rollout from affecting another is what keeps it so inside a batch job: every run
is graded in new child processes forked from a clean interpreter, its files are placed fresh,
and after each run the harness checks that no process is left and that the writable places, IPC,
the kernel keys of its uid and its own limits, priority and CPUs are as they were when the
session started. A run that leaves something behind ends the
session after its batch (the harness says so and exits); the runs after it in that batch are
graded again in jobs of their own, and the next batch starts a new session. A session that dies
during a batch, or does not answer it within the batch's time limit (it is killed then), keeps
the verdicts of the runs it finished; the others are graded again in jobs of their own too. So a verdict still never depends on which rollouts shared a
sandbox, within a step or across steps (``tests/test_code_exec_batch.py`` compares them).

Sessions need a backend that can hold a conversation (``bwrap``, ``process``); on ``docker``
and engine pools the verifier uses batch jobs. A session lives at most :data:`LIFETIME_S`, then
a new one replaces it between batches.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Optional

import distil_sandbox

if TYPE_CHECKING:
    from .verifier import CodeExecVerifier

LIFETIME_S = 3600.0  # a session's sandbox timeout: it is replaced before a batch could cross it
SESSION_HEADER = b"DISTIL-SESSION\n"  # the harness's ``SESSION``
END_MARKER = b"DISTIL-BATCH-END"  # the harness's ``END_MARKER``
OUTPUT_LIMIT = 32 << 20  # bytes of a session's output not yet read; a batch that could need more runs as a job
MAX_FAILED_STARTS = 3  # sessions in a row that died before answering: then batch jobs only


def within_lifetime(age_s: float, timeout_s: float) -> bool:
    """Whether a batch with this time limit, sent to a session this old, ends a minute or more
    before the session's own time limit."""
    return age_s + timeout_s + 60.0 < LIFETIME_S


class GradingSession:
    """One harness running in one sandbox, answering one batch at a time."""

    def __init__(self, backend: Any, verifier: "CodeExecVerifier") -> None:
        job = distil_sandbox.Job(code=verifier.harness_source, timeout_s=LIFETIME_S, memory_mb=verifier.memory_mb,
                                 output_limit=OUTPUT_LIMIT)
        self.conversation = backend.converse(job)
        # Read by the harness before any solution runs: it signs every request (see ``serve``).
        self.secret = secrets.token_bytes(32)
        self.conversation.send(SESSION_HEADER + self.secret.hex().encode() + b"\n")
        self.backend = backend.name
        self.born = time.monotonic()
        self.batches = 0  # answered

    @property
    def alive(self) -> bool:
        return self.conversation.alive

    def fits(self, timeout_s: float) -> bool:
        """Whether a batch with this time limit ends well before the session's own."""
        return self.alive and within_lifetime(time.monotonic() - self.born, timeout_s)

    def grade(self, batch: dict[str, Any], key: bytes, timeout_s: float) -> tuple[str, Optional[bool]]:
        """The harness's output for ``batch`` and whether the session goes on after it (None: it
        died or did not answer within ``timeout_s``, and is killed; the output is then what came
        before, whose runs with a signed end record were graded in full)."""
        # A batch's end is known by a token no solution can guess (a solution's process can
        # write to the session's stdout: see ``serve`` in harness.py), read at a line's start.
        # Every batch ends with a "done" line.
        token = secrets.token_hex(16)
        body = json.dumps(dict(batch, key=key.hex(), end=token)).encode("utf-8")
        mac = hmac.new(self.secret, body, hashlib.sha256).hexdigest().encode()
        self.conversation.send(mac + b" " + body + b"\n")
        marker = b"\n" + END_MARKER + f" {token} ".encode()
        deadline = time.monotonic() + timeout_s
        output = self.conversation.receive_until(marker, timeout_s)
        status = None
        if output is not None:
            status = self.conversation.receive_until(b"\n", max(0.0, deadline - time.monotonic()) + 1.0)
        if output is None or status is None:
            self.close(kill=True)
            return self.conversation.receive_rest().decode("utf-8", "replace"), None
        self.batches += 1
        goes_on = status.strip() == b"ok"
        if not goes_on:
            self.close()
        return output[: -len(marker) + 1].decode("utf-8", "replace"), goes_on

    def close(self, kill: bool = False) -> None:
        if kill:
            self.conversation.kill()
        self.conversation.close(timeout_s=2.0)


class SessionPool:
    """The verifier's sessions: at most ``workers`` of them, each used by one batch at a time."""

    def __init__(self, verifier: "CodeExecVerifier") -> None:
        self.verifier = verifier
        self.backend = distil_sandbox.get_backend(verifier.backend)
        self.enabled = hasattr(self.backend, "converse")
        self._idle: list[GradingSession] = []
        self._lock = threading.Lock()
        self._failed_starts = 0
        self._executor = ThreadPoolExecutor(max_workers=verifier.workers, thread_name_prefix="distil-code-exec-session")

    def idle_sessions(self) -> tuple[GradingSession, ...]:
        """The sessions waiting for a batch (each answers one batch at a time)."""
        with self._lock:
            return tuple(self._idle)

    def usable(self, job: dict[str, Any]) -> bool:
        """Whether a batch job like ``job`` can go to a session instead."""
        return self.enabled and job["output_limit"] <= OUTPUT_LIMIT and within_lifetime(0.0, job["timeout_s"])

    def submit(self, batch: dict[str, Any], key: bytes, timeout_s: float) -> "Future[distil_sandbox.ExecResult]":
        """Grade a batch job's runs in a session; the result reads like the batch job's (if the
        session failed, its stdout is what came before: the runs without a signed end record in
        it are graded again alone)."""
        return self._executor.submit(self._grade, batch, key, timeout_s)

    def _grade(self, batch: dict[str, Any], key: bytes, timeout_s: float) -> distil_sandbox.ExecResult:
        session = self._take(timeout_s)
        started = time.monotonic()
        stdout, goes_on = session.grade(batch, key, timeout_s) if session is not None else ("", None)
        if goes_on:
            self._give_back(session)
        self._count(session, answered=goes_on is not None)
        return distil_sandbox.ExecResult(
            exit_code=0 if goes_on is not None else None, signal=None, timed_out=False, stdout=stdout, stderr="",
            stdout_truncated=False, stderr_truncated=False, wall_s=time.monotonic() - started, cpu_s=0.0,
            backend=self.backend.name, error=None if goes_on is not None else "the grading session ended early",
        )

    def _take(self, timeout_s: float) -> Optional[GradingSession]:
        with self._lock:
            while self._idle:
                session = self._idle.pop()
                if session.fits(timeout_s):
                    return session
                session.close()
            if not self.enabled:
                return None
        try:
            session = GradingSession(self.backend, self.verifier)
        except (OSError, ValueError) as exc:
            self._disable(f"a grading session could not start ({exc})")
            return None
        with self.verifier.counting() as counts:
            counts["sessions_started"] += 1
        return session

    def _give_back(self, session: GradingSession) -> None:
        with self._lock:
            self._idle.append(session)

    def _count(self, session: Optional[GradingSession], answered: bool) -> None:
        with self.verifier.counting() as counts:
            counts["session_batches" if answered else "session_failures"] += 1
        if session is not None and session.batches == 0:
            with self._lock:
                self._failed_starts += 1
                failed = self._failed_starts
            if failed >= MAX_FAILED_STARTS:
                self._disable(f"{failed} grading sessions in a row ended before answering a batch")
        elif session is not None:
            with self._lock:
                self._failed_starts = 0

    def _disable(self, why: str) -> None:
        import warnings

        with self._lock:
            was, self.enabled = self.enabled, False
        if was:
            warnings.warn(f"code_exec: {why}; grading in batch jobs from now on", RuntimeWarning, stacklevel=2)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()
        self._executor.shutdown(wait=True)

