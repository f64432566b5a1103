"""The model thread of ``distil serve``: concurrent requests that can share a batch are decoded together.

A request's thread queues a :class:`Job` (its rows, how to sample them) and waits; one model
thread decodes the waiting jobs with the same batch key (adapter, ``max_tokens``, sampling
parameters) as one batch, as vLLM batches concurrent requests. What a batch computes is the
``decode`` function the :class:`Batcher` is given (:meth:`distil_core.serving.engine.LocalLM.decode`).

A streamed request (:meth:`Batcher.stream`) does not wait for the end: after every decoding
step the model thread publishes a copy of its rows, which the request's thread turns into
chunks while the batch goes on. A stream whose client hangs up cancels its job, and the model
thread stops decoding its rows at the next step.

A request that waits for its whole answer (:meth:`Batcher.run`) inside :func:`watching_client`
asks, every :data:`HANGUP_POLL_S`, whether its client is still there: one that gave up (a
client's timeout, a killed process) withdraws its job, which is taken out of the queue or whose
rows end at the next step, and the request ends with :class:`ClientGone`; a prompt-scoring
request waiting for the model (:func:`held_while_watched`) ends the same way. Without this, a
client that times out and retries leaves the abandoned request decoding beside its retry, and
under load the abandoned work piles up. A client that shuts down only its sending side and then
reads its answer (``nc -N``) cannot be told from one that left, and is taken for gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from distil_core.serving.requests import ApiError

__all__ = ["Generation", "Job", "Batcher", "ClientGone", "HANGUP_POLL_S", "watching_client", "held_while_watched"]

HANGUP_POLL_S = 0.1
"""How often a request waiting for its rows checks that its client is still connected."""
_CLIENT_GONE: ContextVar[Optional[Callable[[], bool]]] = ContextVar("distil_serve_client_gone", default=None)


class ClientGone(Exception):
    """The client of a request hung up before its answer was ready: its job was withdrawn and
    there is no one to answer."""


@contextlib.contextmanager
def watching_client(gone: Callable[[], bool]) -> Iterator[None]:
    """Within the block, :meth:`Batcher.run` withdraws its job once ``gone()`` is true.

    A context variable rather than a parameter: the request's thread sets it where it knows its
    connection (the HTTP handler), and the layers in between (the fault schedule, the engine)
    need not carry it.
    """
    token = _CLIENT_GONE.set(gone)
    try:
        yield
    finally:
        _CLIENT_GONE.reset(token)


@contextlib.contextmanager
def held_while_watched(lock: threading.Lock) -> Iterator[None]:
    """``lock`` held for the block; within :func:`watching_client`, a client that hangs up while
    this waits for it ends the wait with :class:`ClientGone` (the lock not taken)."""
    gone = _CLIENT_GONE.get()
    if gone is None:
        lock.acquire()
    else:
        while not lock.acquire(timeout=HANGUP_POLL_S):
            if gone():
                raise ClientGone("the client hung up while its request waited for the model")
    try:
        yield
    finally:
        lock.release()


@dataclass
class Generation:
    """One row's generated tokens, their log-probs and top alternatives, and how it ended."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    cut_text: Optional[str] = None  # the text before a stop string, once one was hit
    done: bool = False


class Job:
    """One request's rows to generate, how to sample them, and (once decoded) their generations."""

    def __init__(self, rows: list[list[int]], max_tokens: int, sampling: dict[str, Any], k: int,
                 adapter: Optional[str]):
        self.rows, self.max_tokens, self.sampling, self.k, self.adapter = rows, max_tokens, sampling, k, adapter
        self.keys: Optional[list[int]] = None  # each row's sampling key; None: greedy
        self.gens = [Generation() for _ in rows]
        self.error: Optional[BaseException] = None
        self.finished = threading.Event()
        self.streaming = False  # publish a copy of the rows after every step (set by Batcher.stream)
        self.cancelled = False  # the request's client is gone: stop decoding its rows
        self.abandoned = False  # withdrawn by its request while being decoded (Batcher._withdraw)
        self._progress = threading.Condition()
        self._published: list[Generation] = []
        self._version = 0

    def publish(self) -> None:
        """Called by the model thread after a step: copies the rows for a streamed request.

        Copies, because the model thread goes on changing the rows (a stop string cuts tokens
        it already appended) while the request's thread reads them.
        """
        if not self.streaming:
            return
        copies = [dataclasses.replace(g, ids=list(g.ids), logprobs=list(g.logprobs), top=list(g.top))
                  for g in self.gens]
        with self._progress:
            self._published, self._version = copies, self._version + 1
            self._progress.notify_all()

    def finish(self) -> None:
        """The job is answered (decoded, or failed with ``error``); wakes its waiting thread."""
        with self._progress:
            self.finished.set()
            self._progress.notify_all()

    def next_progress(self, seen: int) -> tuple[list[Generation], int, bool]:
        """(rows, version, finished) once a version after ``seen`` is published or the job ends."""
        with self._progress:
            self._progress.wait_for(lambda: self._version > seen or self.finished.is_set())
            return self._published, self._version, self.finished.is_set()

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can be decoded in one batch."""
        s = self.sampling
        return self.adapter, self.max_tokens, s["temperature"], s["top_p"], s["top_k"]


class Batcher:
    """The model thread: decodes the waiting jobs that can share a batch together.

    A request's thread queues its job and waits. The model thread takes the oldest job, lets
    the jobs that arrive right behind it join (until ``GATHER_S`` passes without a new one, at
    most ``MAX_GATHER_S``), and decodes it with every waiting job of the same batch key, up to
    ``max_rows`` rows; the others wait for the next batch, oldest first.
    """

    GATHER_S, MAX_GATHER_S = 0.003, 0.02

    def __init__(self, decode: Callable[[list[Job]], None], max_rows: int):
        self._decode, self.max_rows = decode, max_rows
        self._cond = threading.Condition()
        self._waiting: list[Job] = []
        self._thread: Optional[threading.Thread] = None
        self._open = 0  # jobs queued and not yet answered
        self._decoding: list[Job] = []  # the batch the model thread is decoding
        self.closed = False  # by close(): a job queued after it is refused, until open()

    def run(self, job: Job) -> list[Generation]:
        """Queue ``job``, wait until its rows are decoded, and return its generations.

        Within :func:`watching_client`, a client that hangs up meanwhile withdraws the job
        (:meth:`_withdraw`) and this raises :class:`ClientGone` at once, without waiting for
        the model thread: the connection and its thread are free while a long batch goes on.
        """
        gone = _CLIENT_GONE.get()
        self._queue(job)
        while not job.finished.wait(None if gone is None else HANGUP_POLL_S):
            try:
                left = gone is not None and gone()
            except BaseException:  # a watcher that fails leaves no job behind it
                self._withdraw(job)
                raise
            if left:
                self._withdraw(job)
                raise ClientGone("the client hung up before its answer was ready")
        with self._cond:
            self._open -= 1
        if job.error is not None:
            raise job.error
        return job.gens

    def _withdraw(self, job: Job) -> None:
        """Stop work on ``job``, whose request no longer waits for it: out of the queue if it is
        still there; in the batch being decoded, its rows end at the next step and the model
        thread counts it answered after the batch (:meth:`_loop`)."""
        with self._cond:
            job.cancelled = True
            if any(other is job for other in self._decoding):
                job.abandoned = True
                return
            if any(other is job for other in self._waiting):
                self._waiting = [other for other in self._waiting if other is not job]
                self._fail([job], ClientGone("the client hung up while its request was queued"))
            self._open -= 1

    def stream(self, job: Job) -> Iterator[list[Generation]]:
        """Queue ``job`` and yield copies of its rows as the model thread decodes them, the
        last one after its rows have ended. Closing the iterator early cancels the job."""
        job.streaming = True
        self._queue(job)
        try:
            seen, finished = 0, False
            while not finished:
                rows, version, finished = job.next_progress(seen)
                if job.error is not None:
                    raise job.error
                if version > seen:
                    seen = version
                    yield rows
        finally:
            job.cancelled = not job.finished.is_set()
            with self._cond:
                self._open -= 1

    def _queue(self, job: Job) -> None:
        with self._cond:
            if self.closed:  # a request read before its server stopped: no model thread starts for it
                raise ApiError(503, "The server is shutting down.", "service_unavailable")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="distil-serve-model", daemon=True)
                self._thread.start()
            self._waiting.append(job)
            self._open += 1
            self._cond.notify_all()

    def open_jobs(self) -> int:
        """How many jobs are queued or being decoded (a test waits on this, not on a clock)."""
        with self._cond:
            return self._open

    def open(self) -> None:
        """Take jobs again after :meth:`close` (a server started again); the first starts the model thread."""
        with self._cond:
            self.closed = False

    def close(self) -> None:
        """End the model thread after its batch; the jobs still waiting fail, and a later one is
        refused (503) until :meth:`open`."""
        with self._cond:
            self.closed = True
            self._thread = None
            self._fail(self._waiting, ApiError(503, "The server is shutting down.", "service_unavailable"))
            self._waiting = []
            self._cond.notify_all()

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while not self._waiting and self._thread is me:
                    self._cond.wait()
                if self._thread is not me:
                    return
                self._gather()
                if self._thread is not me:  # closed while gathering: close() failed the waiting jobs
                    return
                batch = self._decoding = self._take()
            try:
                self._decode(batch)
            except Exception as exc:  # answered to every request of the batch (a 500)
                self._fail(batch, exc)
            finally:  # no request waits for ever, whatever stopped the decoding
                self._fail(batch, RuntimeError("The model thread stopped before this request's rows were decoded."))
                with self._cond:  # jobs whose request left while they were decoded are answered now
                    self._open -= sum(job.abandoned for job in batch)
                    self._decoding = []

    def _gather(self) -> None:
        """Wait (holding the condition's lock only between waits) while jobs keep arriving."""
        deadline = time.monotonic() + self.MAX_GATHER_S
        while True:
            seen, left = len(self._waiting), deadline - time.monotonic()
            if left <= 0 or self._rows(self._waiting) >= self.max_rows:
                return
            self._cond.wait(min(self.GATHER_S, left))
            if len(self._waiting) == seen:
                return

    def _take(self) -> list[Job]:
        """The oldest job and the waiting jobs that can share its batch, within ``max_rows``."""
        key, rows, batch, rest = self._waiting[0].batch_key(), 0, [], []
        for job in self._waiting:
            if job.batch_key() == key and (not batch or rows + len(job.rows) <= self.max_rows):
                batch.append(job)
                rows += len(job.rows)
            else:
                rest.append(job)
        self._waiting = rest
        return batch

    @staticmethod
    def _rows(jobs: list[Job]) -> int:
        return sum(len(job.rows) for job in jobs)

    @staticmethod
    def _fail(jobs: list[Job], error: BaseException) -> None:
        for job in jobs:
            if not job.finished.is_set():
                job.error = error
                job.finish()
