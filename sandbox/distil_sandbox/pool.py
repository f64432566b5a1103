"""Many jobs at once: a Pool of workers, with warm containers on the docker backend.

    from distil_sandbox.pool import Pool
    with Pool(workers=4, timeout_s=5) as pool:
        results = pool.map(["print(1)", "print(2)"])    # in order
        future = pool.submit("print(input())", stdin="x")

On ``docker`` the pool starts ``workers`` containers once (the same locked-down settings as a
single run) and runs each job in one of them, one job per container at a time. Starting a
container costs far more than a job, so this is the backend's fast path. Containers are reused
between jobs: after every job the container's supervisor kills all the job's processes and
empties ``/work``, ``/tmp``, ``/dev/shm``, ``/dev/mqueue`` and System V IPC, so the next job
sees neither its files nor its processes. What is set when a container starts is per container,
not per job: memory, pids and ``/work`` size limits come from the Pool's settings, and a job that
asks for different ones is refused. A container that dies, fails its clean-up or hits its memory
limit is replaced; a job whose container was lost before it could answer is run once more on a
fresh one.

On ``bwrap`` and ``process`` every job already gets a fresh sandbox, so the pool simply runs
``backend.run(job)`` on ``workers`` threads; on ``bwrap`` it also asks the backend to keep
``workers`` warm sandboxes of its jobs' shape ready (see :mod:`distil_sandbox.bwrap`).

Several Docker engines and local sandboxes behind one queue: :mod:`distil_sandbox.engines`.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Optional, Union

from ._job import validate_job
from .backends import Backend, BackendUnavailable, get_backend
from .result import ExecResult, Job


class Pool:
    """Run jobs concurrently on one backend; ``job_defaults`` are :class:`Job` fields for every job."""

    def __init__(self, backend: Union[str, Backend] = "auto", workers: int = 4, **job_defaults: Any) -> None:
        if workers < 1:
            raise ValueError("a Pool needs at least one worker")
        validate_job(Job(code="", **job_defaults))  # bad names or limits fail here, not at the first submit
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self.workers = workers
        self.job_defaults = dict(job_defaults)
        self._warm: Optional[WarmContainers] = None
        if hasattr(self.backend, "start_container"):
            self._warm = WarmContainers(self.backend, Job(code="", **job_defaults), workers)
        elif hasattr(self.backend, "keep_warm"):
            self.backend.keep_warm(Job(code="", **job_defaults), workers)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="distil-sandbox-pool")
        self._closed = False

    @property
    def containers_started(self) -> int:
        """How many containers this pool has started (``workers`` plus replacements); 0 off docker."""
        return self._warm.started if self._warm else 0

    def job(self, code: Union[str, Job], **overrides: Any) -> Job:
        """The Job that ``submit(code, **overrides)`` runs."""
        return make_job(code, self.job_defaults, overrides)

    def submit(self, code: Union[str, Job], **overrides: Any) -> "Future[ExecResult]":
        """Queue one job (source text plus Job fields, or a Job); the future holds its ExecResult."""
        if self._closed:
            raise RuntimeError("this Pool is closed")
        job = self.job(code, **overrides)
        validate_job(job)  # a bad job is the caller's ValueError now, not an exception in its future
        if self._warm is not None:
            self._warm.check(job)
            return self._executor.submit(self._warm.run, job)
        return self._executor.submit(self.backend.run, job)

    def map(self, jobs: Iterable[Union[str, Job]]) -> list[ExecResult]:
        """Run every job (source texts or Jobs) and return their results in the same order."""
        futures = [self.submit(job) for job in jobs]
        return [future.result() for future in futures]

    def close(self, cancel_pending: bool = False) -> None:
        """Wait for the jobs (or cancel those not started yet), then remove the pool's containers.

        Safe to call twice. Leaving a ``with`` block on an exception cancels what has not started.
        """
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=cancel_pending)
        if self._warm is not None:
            self._warm.close()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        self.close(cancel_pending=exc_type is not None)


def make_job(code: Union[str, Job], defaults: dict[str, Any], overrides: dict[str, Any]) -> Job:
    """The Job for source text (with a pool's ``defaults``) or a given Job, with ``overrides`` applied."""
    if isinstance(code, Job):
        return dataclasses.replace(code, **overrides) if overrides else code
    return Job(code=code, **{**defaults, **overrides})


class WarmContainers:
    """``workers`` started containers, each used by one job at a time and replaced when unfit."""

    def __init__(self, backend: Any, template: Job, workers: int) -> None:
        from .docker_container import ContainerLimits

        self.backend = backend
        self.limits = ContainerLimits.for_job(template, backend.cpus)
        self.started = 0
        self._lock = threading.Lock()
        self._live: set[Any] = set()
        self._orphans: set[str] = set()  # ids of containers a failed engine could not remove
        # None in the idle queue is a slot whose container will be started when a job needs it.
        self._idle: "queue.Queue[Any]" = queue.Queue()
        with ThreadPoolExecutor(max_workers=workers) as starter:
            attempts = [starter.submit(self._start) for _ in range(workers)]
        errors = [attempt.exception() for attempt in attempts if attempt.exception() is not None]
        for attempt in attempts:
            self._idle.put(attempt.result() if attempt.exception() is None else None)
        self._finalizer = weakref.finalize(self, _remove_all, self._live)
        if errors:
            self.close()
            raise BackendUnavailable(f"cannot start the pool's docker containers: {errors[0]}")

    def _start(self) -> Any:
        box = self.backend.start_container(self.limits)
        with self._lock:
            self.started += 1
            self._live.add(box)
        return box

    def _discard(self, box: Any) -> None:
        with self._lock:
            self._live.discard(box)
        container_id = box.container.id if box.container is not None else None
        if not box.close() and container_id:
            with self._lock:
                self._orphans.add(container_id)

    def check(self, job: Job) -> None:
        problem = self.limits.mismatch(job)
        if problem:
            raise ValueError(problem)

    def run(self, job: Job) -> ExecResult:
        """Run ``job`` in a warm container; a failed engine is reported in the result."""
        from .docker_backend import sandbox_failure
        from .docker_container import EngineFailure

        started = time.monotonic()
        try:
            return self.attempt(job)
        except EngineFailure as exc:
            return sandbox_failure(f"docker: {exc}", time.monotonic() - started)

    def attempt(self, job: Job) -> ExecResult:
        """Run ``job`` in a warm container (once more on a fresh one if the container is lost).

        Raises :class:`~.docker_container.EngineFailure` when the engine failed before the job
        answered: what the job did then is unknown, and it has no result.
        """
        from .docker_backend import engine_error_text, sandbox_failure
        from .docker_container import EngineFailure, SandboxBroken, engine_errors

        started = time.monotonic()
        box = self._idle.get()
        try:
            for _ in range(2):
                if box is None:
                    box = self._start()  # asks the engine first: a dead one raises here
                try:
                    return box.run(job)
                except SandboxBroken as exc:
                    self._discard(box)
                    box, lost = None, exc
            self.backend.client()  # two containers lost: blame the job only if the engine answers
            return sandbox_failure(f"docker: {lost}", time.monotonic() - started)
        except engine_errors() as exc:
            if box is not None:
                self._discard(box)
                box = None
            raise EngineFailure(f"engine {self.backend.engine_address()} failed: {engine_error_text(exc)}") from exc
        finally:
            if box is not None and not box.reusable:
                self._discard(box)
                box = None
            self._idle.put(box)

    def revive(self) -> None:
        """After an engine failure: remove what the engine lost, and prove it works again by starting
        a container (kept as a warm one). Raises the engine's error while it cannot."""
        import docker.errors

        client = self.backend.client()
        for container_id in list(self._orphans):
            try:
                client.api.remove_container(container_id, force=True)
            except docker.errors.APIError:
                pass  # gone already, or going
            self._orphans.discard(container_id)
        slots = []
        while True:  # the idle containers were the failed engine's: none is trusted again
            try:
                slots.append(self._idle.get_nowait())
            except queue.Empty:
                break
        fresh = None
        try:
            for box in slots:
                if box is not None:
                    self._discard(box)
            fresh = self._start()
        finally:
            if slots:
                self._idle.put(fresh)
                for _ in slots[1:]:
                    self._idle.put(None)
            elif fresh is not None:  # every slot is busy: keep the worker count, drop the proof
                self._discard(fresh)

    def close(self) -> None:
        self._finalizer()


def _remove_all(live: set[Any]) -> None:
    for box in list(live):
        box.close()
    live.clear()
