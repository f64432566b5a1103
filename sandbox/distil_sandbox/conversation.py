"""Talking to a job while it runs: :class:`Conversation`.

A job's stdin is usually known before it starts and its stdout read once it has ended. A
program that serves many requests from one sandbox needs more: a grader that keeps its
interpreter, imports and fork server started across training steps pays the sandbox's and the
interpreter's start-up once instead of once per step. For that, ``backend.converse(job)`` (the
``bwrap`` and ``process`` backends) starts ``job`` with its stdin and stdout connected to a
``Conversation``: :meth:`~Conversation.send` queues bytes for the program's stdin while it runs,
:meth:`~Conversation.receive_until` returns its stdout up to a marker as soon as that has
arrived, with a deadline, and :meth:`~Conversation.close` ends it and returns its
:class:`ExecResult`.

Everything else holds as for any job of that backend: the same sandbox, limits and clean-up.
``timeout_s`` bounds the whole conversation: the program is killed at the deadline like any job,
and what is still waited for then comes back as None. ``job.stdin`` must be None (the
conversation is the stdin). Stdout not yet received is kept up to ``output_limit`` bytes; past
that the program's further output is dropped and :attr:`~Conversation.overflowed` is set, so a
reader that falls behind cannot make the host buffer without bound. Stderr is collected as for
any job (the first ``output_limit`` bytes) and comes with the result.

A ``Conversation`` is for one reader and one writer at a time; the backend's thread feeds it.
That thread is a daemon, which the interpreter would stop wherever it is at exit, before the
backend's clean-up (the job's memory cgroup, its uid) ran: so at exit every conversation still
running is killed and its clean-up waited for (:func:`end_all`), as ``close()`` would.
Docker jobs cross a socket to the container's supervisor as a whole, so docker has no
``converse``.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from typing import Callable, Optional

from ._common import CappedBuffer
from ._job import job_files, validate_job
from .result import ExecResult, Job


class Conversation:
    """One running job's stdin and stdout; see the module docstring."""

    def __init__(self, output_limit: int) -> None:
        self.output_limit = output_limit
        self._cond = threading.Condition()
        self._outgoing = bytearray()
        self._input_closed = False
        self._incoming = bytearray()
        self._result: Optional[ExecResult] = None
        self._ended = False
        self._kill: Optional[Callable[[], None]] = None
        self._kill_asked = False
        self.overflowed = False
        self.started = time.monotonic()
        # The supervising thread sleeps in select(); a byte on this pipe wakes it to write.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- the caller's side ---------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the program still runs (it may have ended since)."""
        with self._cond:
            return not self._ended

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the program's stdin (dropped if it has ended or closed its stdin)."""
        with self._cond:
            if self._ended or self._input_closed:
                return
            self._outgoing += data
        self._wake()

    def receive_until(self, marker: bytes, timeout_s: float) -> Optional[bytes]:
        """The program's stdout up to and including the first ``marker`` not yet received; None
        when the program ends, overflows or ``timeout_s`` passes first (nothing is consumed then)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                at = self._incoming.find(marker)
                if at >= 0:
                    end = at + len(marker)
                    taken = bytes(self._incoming[:end])
                    del self._incoming[:end]
                    return taken
                left = deadline - time.monotonic()
                if self._ended or self.overflowed or left <= 0:
                    return None
                self._cond.wait(left)

    def receive_rest(self) -> bytes:
        """Whatever stdout has arrived and was not received yet (all of it, once the program ended)."""
        with self._cond:
            taken = bytes(self._incoming)
            self._incoming.clear()
            return taken

    def close(self, timeout_s: float = 5.0) -> Optional[ExecResult]:
        """End the program's stdin, wait up to ``timeout_s`` for it to exit (killing it after
        that) and return its result (None if the backend never reported one)."""
        with self._cond:
            self._input_closed = True
        self._wake()
        if not self.wait(timeout_s):
            self.kill()
            self.wait(timeout_s)
        return self._result

    def kill(self) -> None:
        """End the program now (every process of the job, as at a timeout)."""
        with self._cond:
            kill = None if self._ended else self._kill
            self._kill_asked = not self._ended  # before the program started: at its start
        if kill is not None:
            kill()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the program to end; whether it has."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- the backend's side --------------------------------------------------------------------

    @property
    def wake_fd(self) -> int:
        """Readable when there is something to write, or the input was closed."""
        return self._wake_r

    def attach(self, kill: Callable[[], None]) -> None:
        """The backend started the program; ``kill`` ends it."""
        with self._cond:
            self._kill = kill
            asked = self._kill_asked
        if asked:
            kill()

    def take_input(self) -> tuple[bytes, bool]:
        """What to write to the program's stdin now, and whether its stdin should then close."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._cond:
            data = bytes(self._outgoing)
            self._outgoing.clear()
            return data, self._input_closed

    def stop_input(self) -> None:
        """The program's stdin is closed (by the caller, or by the program): later sends are dropped."""
        with self._cond:
            self._input_closed = True
            self._outgoing.clear()

    def output(self) -> "ConversationOutput":
        """The buffer :func:`~._common.supervise` feeds the program's stdout into."""
        return ConversationOutput(self)

    def feed(self, data: bytes) -> None:
        with self._cond:
            if len(self._incoming) + len(data) > self.output_limit:
                self.overflowed = True
            else:
                self._incoming += data
            self._cond.notify_all()

    def end(self, result: Optional[ExecResult]) -> None:
        """The program has exited (or never started): wake every waiting reader."""
        with self._cond:
            self._result, self._ended, self._kill = result, True, None
            self._cond.notify_all()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _wake(self) -> None:
        with self._cond:  # never after end(): the pipe's fd number may belong to another file then
            if self._ended:
                return
            try:
                os.write(self._wake_w, b"w")
            except OSError:  # full: woken already
                pass


class ConversationOutput(CappedBuffer):
    """The program's stdout as :func:`~._common.supervise` sees it: everything goes to the
    conversation; nothing is kept for the result (the caller has read it)."""

    def __init__(self, conversation: Conversation) -> None:
        super().__init__(0)
        self.conversation = conversation

    def feed(self, data: bytes) -> None:
        self.conversation.feed(data)


EXIT_WAIT_S = 10.0  # how long exiting waits for each conversation's clean-up
_running: "weakref.WeakSet[Conversation]" = weakref.WeakSet()


def end_all(wait_s: float = EXIT_WAIT_S) -> None:
    """Kill every conversation still running and wait (up to ``wait_s`` each) until its backend
    has cleaned up after it. Run at exit."""
    running = list(_running)
    for conversation in running:
        conversation.kill()
    for conversation in running:
        conversation.wait(wait_s)


atexit.register(end_all)


def start(run: Callable[["Conversation"], ExecResult], output_limit: int, name: str) -> Conversation:
    """A conversation whose job ``run`` (a backend's) executes on a thread of its own."""
    conversation = Conversation(output_limit)
    _running.add(conversation)

    def body() -> None:
        result = None
        try:
            result = run(conversation)
        finally:
            conversation.end(result)

    threading.Thread(target=body, name=f"distil-sandbox-{name}-conversation", daemon=True).start()
    return conversation


def conversation_job(job: Job) -> dict[str, bytes]:
    """Check ``job`` for a conversation (ValueError, as for any bad job); its files."""
    validate_job(job)
    if job.stdin is not None:
        raise ValueError("a conversation's job has no stdin of its own: send it through the conversation")
    return job_files(job)
