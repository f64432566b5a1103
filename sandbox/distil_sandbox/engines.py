"""Many engines, one queue: jobs spread over several Docker engines and local sandboxes.

    from distil_sandbox import EnginePool
    engines = ["docker:unix:///run/d1.sock*4", "docker:tcp://10.0.0.2:2375*8", "bwrap*2"]
    with EnginePool(engines, timeout_s=5, memory_mb=256, max_pending=64) as pool:
        results = pool.map(jobs)                    # in order
        future = pool.submit("print(input())", stdin="x")
        pool.stats                                  # jobs per engine, requeues, engines up/down

An engine is written ``KIND[:ADDRESS][*WORKERS]``: ``docker:<address>`` (any address ``DOCKER_HOST``
accepts: ``unix://``, ``tcp://``, ``ssh://``, ``http(s)://``), ``docker`` (the engine the environment
names), ``bwrap`` or ``process``. ``*WORKERS`` is how many jobs that engine runs at once (default:
the pool's ``workers``); each docker worker has a warm container, as in :class:`~.pool.Pool`.

Jobs wait in one queue and every engine's workers take them from its front, so a faster engine
simply takes more. **Back-pressure**: at most ``max_pending`` jobs wait in the queue (running jobs
do not count); ``submit`` blocks until there is room.

**Engine failures.** A docker engine that cannot be reached, answers API calls with errors, or
loses a container together with itself has failed; a job's own timeout, memory kill or exit
status is the job's result. When an engine fails under a job, the engine is marked down, the job
goes back to the front of the queue and runs on another engine; a background probe starts a
container on the engine every ``probe_interval_s`` and marks it up once that works. Every future
is resolved exactly once: a job runs again only when its engine failed before it returned a
result. A job that has lost its engine ``MAX_ENGINE_LOSSES`` times, and every job while no engine
is up, gets a sandbox-failure result (``error`` names each engine and why it is down) instead of
waiting.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence, Union

from ._common import error_result
from ._job import validate_job
from .backends import BackendUnavailable, get_backend
from .pool import WarmContainers, make_job
from .result import ExecResult, Job

KINDS = ("docker", "bwrap", "process")
DOCKER_SCHEMES = ("unix", "tcp", "ssh", "http", "https")
MAX_ENGINE_LOSSES = 3  # a job that keeps breaking engines may be the reason they break
HOW_TO_WRITE = ('write "docker:<address>[*workers]" (e.g. "docker:unix:///run/d1.sock*4" or '
                '"docker:tcp://10.0.0.2:2375"), "docker" for DOCKER_HOST\'s engine, "bwrap[*workers]" '
                'or "process[*workers]"')


@dataclass(frozen=True)
class EngineSpec:
    """One engine of a pool: ``kind`` (docker, bwrap, process), docker's ``address`` ("" for the
    environment's engine) and how many jobs it runs at once."""

    kind: str
    address: str
    workers: int

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.address}" if self.address else self.kind

    @classmethod
    def parse(cls, text: Any, workers: int) -> "EngineSpec":
        """``KIND[:ADDRESS][*WORKERS]``; ValueError naming the entry and saying what to write."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"engine {text!r} is not an engine spec; {HOW_TO_WRITE}")
        body = text.strip()
        if "*" in body:
            body, _, count = body.rpartition("*")
            if not (count.isascii() and count.isdigit()) or int(count) < 1:
                raise ValueError(f"engine {text!r}: the worker count after '*' must be a whole number of at "
                                 f"least 1; {HOW_TO_WRITE}")
            workers = int(count)
        kind, _, address = body.partition(":")
        if kind not in KINDS:
            raise ValueError(f"engine {text!r}: unknown engine kind {kind!r} (choose docker, bwrap or process); "
                             f"{HOW_TO_WRITE}")
        if kind != "docker" and address:
            raise ValueError(f"engine {text!r}: {kind} runs on this machine and takes no address; write "
                             f'"{kind}*{workers}"')
        if kind == "docker" and ":" in body:
            scheme, sep, rest = address.partition("://")
            if not sep or scheme not in DOCKER_SCHEMES or not rest.strip("/"):
                raise ValueError(f"engine {text!r}: {address!r} is not a Docker engine address; give one with its "
                                 f"scheme ({', '.join(s + '://' for s in DOCKER_SCHEMES)}), e.g. "
                                 '"docker:unix:///run/d1.sock" or "docker:tcp://10.0.0.2:2375"')
        return cls(kind, address, workers)


def parse_engines(engines: Sequence[Any], workers: int = 2) -> list[EngineSpec]:
    """The specs of ``engines`` (see the module docstring); ``workers`` where an entry gives none."""
    if isinstance(engines, (str, bytes)) or not isinstance(engines, Iterable):
        raise ValueError(f"engines must be a list of engine specs, not {engines!r}; {HOW_TO_WRITE}")
    if workers < 1:
        raise ValueError(f"workers per engine must be at least 1 (got {workers})")
    specs = [EngineSpec.parse(text, workers) for text in engines]
    if not specs:
        raise ValueError(f"no engines given; {HOW_TO_WRITE}")
    seen: dict[str, tuple[str, EngineSpec]] = {}
    for text, spec in zip(engines, specs):
        if spec.name in seen:
            first, earlier = seen[spec.name]
            raise ValueError(f"engine {spec.name!r} is listed twice ({first!r} and {text!r}); write it once with "
                             f'the workers of both: "{spec.name}*{earlier.workers + spec.workers}"')
        seen[spec.name] = (text, spec)
    return specs


class _Engine:
    """One engine of a pool: its backend (and warm containers on docker), whether it is up, counters."""

    def __init__(self, spec: EngineSpec, template: Job, lock: threading.Lock) -> None:
        self.spec = spec
        self.name = spec.name
        self.template = template
        self.backend: Any = None
        self.warm: Optional[WarmContainers] = None
        self.up = False
        self.reason = "not started"
        self.jobs = self.requeued = self.failures = self.busy = 0
        self.ready = threading.Condition(lock)  # its workers wait here for a job

    def start(self) -> None:
        """Make the engine ready for jobs (again, after a failure); raises with the reason when it is not."""
        if self.spec.kind != "docker":
            self.backend = get_backend(self.spec.kind)
            if hasattr(self.backend, "keep_warm"):
                self.backend.keep_warm(self.template, self.spec.workers)
            return
        from .docker_backend import DockerBackend

        if self.backend is None:
            self.backend = DockerBackend(base_url=self.spec.address or None)
        if self.warm is not None:
            self.warm.revive()
            return
        ok, why = self.backend.available()
        if not ok:
            raise BackendUnavailable(why)
        self.warm = WarmContainers(self.backend, self.template, self.spec.workers)

    def run(self, job: Job) -> ExecResult:
        """The job's result; :class:`~.docker_container.EngineFailure` when the engine failed instead."""
        return self.warm.attempt(job) if self.warm is not None else self.backend.run(job)

    def close(self) -> None:
        if self.warm is not None:
            self.warm.close()

    def counters(self) -> dict[str, Any]:
        return {"up": self.up, "workers": self.spec.workers, "busy": self.busy, "jobs": self.jobs,
                "requeued": self.requeued, "failures": self.failures, "reason": "" if self.up else self.reason,
                "containers_started": self.warm.started if self.warm is not None else 0}


@dataclass
class _Entry:
    """A queued job with its future and the engines that failed under it."""

    job: Job
    future: "Future[ExecResult]"
    started: bool = False
    losses: list[str] = field(default_factory=list)


class EnginePool:
    """Run jobs on several engines from one queue; see the module docstring.

    ``engines``: specs such as ``"docker:unix:///run/d1.sock*4"``; ``workers``: jobs at once per
    engine whose spec gives no ``*N``; ``max_pending``: jobs waiting at most (default: twice all
    workers); ``probe_interval_s``: how often a down engine is tried; ``job_defaults``: :class:`Job`
    fields for every job. Raises :class:`BackendUnavailable` when no engine can start.
    """

    def __init__(self, engines: Sequence[str], workers: int = 2, max_pending: Optional[int] = None,
                 probe_interval_s: float = 2.0, **job_defaults: Any) -> None:
        template = Job(code="", **job_defaults)
        validate_job(template)
        self.specs = parse_engines(engines, workers)
        self.max_pending = max_pending if max_pending is not None else 2 * sum(s.workers for s in self.specs)
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be at least 1 (got {max_pending})")
        self.probe_interval_s = probe_interval_s
        self.job_defaults = dict(job_defaults)
        self._limits = None
        if any(spec.kind == "docker" for spec in self.specs):  # container limits are fixed per pool
            from .docker_container import ContainerLimits

            self._limits = ContainerLimits.for_job(template)
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # submitters wait here while the queue is full
        self._drained = threading.Condition(self._lock)  # close() waits here for the last job
        self._probe_due = threading.Condition(self._lock)  # the probe sleeps here
        self._queue: "collections.deque[_Entry]" = collections.deque()
        self._engines = [_Engine(spec, template, self._lock) for spec in self.specs]
        self._in_flight = self._requeued = self._engine_failures = self._failed = self._max_queued = 0
        self._closed = self._stopping = False

        starters = [threading.Thread(target=self._try_start, args=(engine,)) for engine in self._engines]
        for thread in starters:  # engines start their containers side by side
            thread.start()
        for thread in starters:
            thread.join()
        if not any(engine.up for engine in self._engines):
            for engine in self._engines:
                engine.close()
            raise BackendUnavailable(f"no sandbox engine could be started ({self._reasons()})")
        self._threads = [threading.Thread(target=self._probe, name="distil-sandbox-probe", daemon=True)]
        for engine in self._engines:
            for _ in range(engine.spec.workers):
                self._threads.append(threading.Thread(target=self._work, args=(engine,), daemon=True,
                                                      name=f"distil-sandbox-{engine.name}"))
        for thread in self._threads:
            thread.start()

    # -- the caller's side ----------------------------------------------------------------------

    def submit(self, code: Union[str, Job], **overrides: Any) -> "Future[ExecResult]":
        """Queue one job (source text plus Job fields, or a Job), waiting while ``max_pending`` jobs
        are queued; the future holds its ExecResult. ValueError for a job no engine may run."""
        job = make_job(code, self.job_defaults, overrides)
        validate_job(job)
        problem = self._limits.mismatch(job) if self._limits is not None else None
        if problem:
            raise ValueError(problem)
        entry = _Entry(job, Future())
        with self._lock:
            while not self._closed and self._any_up() and len(self._queue) >= self.max_pending:
                self._room.wait()
            if self._closed:
                raise RuntimeError("this EnginePool is closed")
            doomed = [] if self._any_up() else [entry]
            if not doomed:
                self._queue.append(entry)
                self._max_queued = max(self._max_queued, len(self._queue))
                self._wake_workers()
        self._fail(doomed)
        return entry.future

    def map(self, jobs: Iterable[Union[str, Job]]) -> list[ExecResult]:
        """Run every job (source texts or Jobs) and return their results in the same order."""
        futures = [self.submit(job) for job in jobs]
        return [future.result() for future in futures]

    @property
    def stats(self) -> dict[str, Any]:
        """Counters. Per engine: ``up``, ``workers``, ``busy`` (jobs running now), ``jobs`` (results
        it returned), ``requeued`` (jobs it handed back when it failed), ``failures`` (times it went
        down), ``reason`` (why it is down), ``containers_started`` (docker: warm ones and their
        replacements). For the pool: ``jobs``, ``requeued``,
        ``engine_failures``, ``failed`` (jobs given a pool failure result), ``engines_up``,
        ``engines_down``, ``queued``, ``in_flight``, ``max_queued`` (the most ever waiting) and
        ``max_pending``."""
        with self._lock:
            engines = {engine.name: engine.counters() for engine in self._engines}
            up = sum(engine.up for engine in self._engines)
            return {"engines": engines, "jobs": sum(e["jobs"] for e in engines.values()), "requeued": self._requeued,
                    "engine_failures": self._engine_failures, "failed": self._failed, "engines_up": up,
                    "engines_down": len(self._engines) - up, "queued": len(self._queue),
                    "in_flight": self._in_flight, "max_queued": self._max_queued, "max_pending": self.max_pending}

    def close(self, cancel_pending: bool = False) -> None:
        """Wait for the jobs (or cancel those not started yet), then stop the workers and remove
        the containers. Safe to call twice; leaving a ``with`` block on an exception cancels."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._room.notify_all()
            cancelled = list(self._queue) if cancel_pending else []
            if cancel_pending:
                self._queue.clear()
            while self._queue or self._in_flight:
                self._drained.wait()
            self._stopping = True
            self._probe_due.notify_all()
            for engine in self._engines:
                engine.ready.notify_all()
        for entry in cancelled:  # a job already started once (then requeued) cannot be cancelled
            if not entry.future.cancel():
                entry.future.set_result(error_result("engines", "the pool was closed before this job could run again"))
                with self._lock:
                    self._failed += 1
        for thread in self._threads:
            thread.join()
        for engine in self._engines:
            engine.close()

    def __enter__(self) -> "EnginePool":
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        self.close(cancel_pending=exc_type is not None)

    # -- workers and the probe ------------------------------------------------------------------

    def _work(self, engine: _Engine) -> None:
        """One worker of ``engine``: take the queue's first job whenever the engine is up."""
        from .docker_container import EngineFailure

        while True:
            with self._lock:
                while not self._stopping and not (engine.up and self._queue):
                    engine.ready.wait()
                if self._stopping:
                    return
                entry = self._queue.popleft()
                self._room.notify()
                if not entry.started and not entry.future.set_running_or_notify_cancel():
                    self._note_done()
                    continue  # cancelled while it waited
                entry.started = True
                self._in_flight += 1
                engine.busy += 1
            try:
                outcome: Union[ExecResult, BaseException] = engine.run(entry.job)
            except BaseException as exc:  # EngineFailure: run it elsewhere; anything else is a bug to report
                outcome = exc
            doomed: list[_Entry] = []
            with self._lock:
                self._in_flight -= 1
                engine.busy -= 1
                if isinstance(outcome, EngineFailure):
                    doomed = self._engine_failed(engine, entry, str(outcome))
                elif isinstance(outcome, ExecResult):
                    engine.jobs += 1
                self._note_done()
            if isinstance(outcome, EngineFailure):
                self._fail(doomed)
            elif isinstance(outcome, ExecResult):
                entry.future.set_result(outcome)
            else:
                entry.future.set_exception(outcome)

    def _probe(self) -> None:
        """Every ``probe_interval_s``: try to start each engine that is down; mark it up when that works."""
        while True:
            with self._lock:
                self._probe_due.wait(self.probe_interval_s)
                if self._stopping:
                    return
                down = [engine for engine in self._engines if not engine.up]
            for engine in down:
                self._try_start(engine)

    def _try_start(self, engine: _Engine) -> None:
        try:
            engine.start()
        except Exception as exc:  # whatever stops an engine is its reason to be down, shown in stats
            with self._lock:
                engine.reason = _describe(exc)
            return
        with self._lock:
            engine.up, engine.reason = True, ""
            engine.ready.notify_all()

    # -- bookkeeping (called with the lock held) ------------------------------------------------

    def _engine_failed(self, engine: _Engine, entry: _Entry, reason: str) -> list[_Entry]:
        """Mark ``engine`` down and put ``entry`` back at the front; the entries to fail instead."""
        if engine.up:
            engine.up = False
            engine.failures += 1
            self._engine_failures += 1
            self._probe_due.notify()
        engine.reason = reason
        entry.losses.append(f"{engine.name}: {reason}")
        if not self._any_up():  # nothing can take them: fail every waiting job now rather than hang
            doomed = [entry, *self._queue]
            self._queue.clear()
            self._room.notify_all()
            return doomed
        if len(entry.losses) >= MAX_ENGINE_LOSSES:
            return [entry]
        self._queue.appendleft(entry)
        self._requeued += 1
        engine.requeued += 1
        self._wake_workers()
        return []

    def _fail(self, entries: list[_Entry]) -> None:
        """Resolve ``entries`` with a sandbox-failure result that says why (called without the lock)."""
        if not entries:
            return
        with self._lock:
            self._failed += len(entries)
            reasons = self._reasons()
        for entry in entries:
            if len(entry.losses) >= MAX_ENGINE_LOSSES:
                message = (f"the job lost its engine {len(entry.losses)} times and was not run again ("
                           + "; ".join(entry.losses) + ")")
            else:
                message = (f"no sandbox engine is up ({reasons}); the pool tries them again every "
                           f"{self.probe_interval_s:g} s and runs later jobs once one answers")
            if entry.started or entry.future.set_running_or_notify_cancel():  # else cancelled: nothing to say
                entry.future.set_result(error_result("engines", message))

    def _wake_workers(self) -> None:
        for engine in self._engines:
            if engine.up:
                engine.ready.notify()

    def _note_done(self) -> None:
        if not self._queue and not self._in_flight:
            self._drained.notify_all()

    def _any_up(self) -> bool:
        return any(engine.up for engine in self._engines)

    def _reasons(self) -> str:
        return "; ".join(f"{engine.name}: {engine.reason}" for engine in self._engines if not engine.up)


def _describe(exc: BaseException) -> str:
    try:
        from .docker_backend import engine_error_text
        from .docker_container import engine_errors

        if isinstance(exc, engine_errors()):
            return engine_error_text(exc)
    except ImportError:  # no docker SDK: then it was not a docker error
        pass
    return str(exc) or type(exc).__name__
