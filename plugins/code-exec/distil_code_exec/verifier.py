"""Verifier ``code_exec``: run a response's code against its problem's tests in the sandbox.

Grading is out of band: nothing the code under test prints, returns or exits with is taken
at its word.

1. A trusted harness (``harness.py``, standard library only) is the sandbox's main program.
   Its stdin carries a fresh random key and nonce, then the tests with their expected values.
   It makes itself non-dumpable (no ptrace, no /proc/<pid>/mem or fd access by the same uid),
   reads all of stdin, and loads modules only from directories the solution cannot write.
2. The solution runs in a child interpreter started by a new exec (``child.py``): it holds
   neither the key nor any expected value, and talks to the harness over a pipe pair. Its
   own stdout and stderr go to pipes the harness reads, not to the sandbox's stdout.
3. The harness does the checking. Function calls go to the child as (name, literal args) and
   come back as ``repr`` text that only a literal parser reads, so a returned object with a
   rigged ``__eq__`` is not a literal and fails. Assert statements run in the harness, with
   each solution function a proxy for such a call. Whole programs get the test's stdin and
   the harness compares the stdout it captured. Timeouts kill the child; the next test gets
   a new one.
4. Each result leaves as ``DISTIL-RESULT <hmac-sha256(key, payload)> <payload>``; the payload
   names the test and the run's nonce. Here only lines whose HMAC verifies, for this run's
   nonce, count, the first per test; a test without one has failed. The exit code and the
   rest of stdout are ignored.

``verify`` is a coroutine, so the engine grades a step's rollouts concurrently; ``grade`` does
one synchronously and ``verify_many`` a batch, each rollout in a job of its own.
``verify_batch`` (what the trainer calls once per step) grades several rollouts per sandbox job
and each distinct one once, forking their children from one clean interpreter per job (see
``batch.py``); its verdicts are the ones ``verify`` gives. Verdicts of identical (code, tests) pairs are
cached for the life of the verifier. With ``engines``, grading runs are spread over several Docker
engines and local sandboxes by a :class:`distil_sandbox.EnginePool`: a run whose engine dies is
run again on another, and each rollout still gets exactly one verdict.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import threading
from collections import OrderedDict
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import distil_sandbox
from distil_core import Problem, Rollout, Verdict
from distil_sandbox.engines import parse_engines

from . import batch, options
from .sessions import SessionPool
from .spec import CodeTests, extract_code
from .verdicts import build_verdict, read_signed, refused_verdict

SOLUTION_FILE = "solution.py"
CHILD_FILE = "distil_child.py"
_HERE = Path(__file__).resolve().parent
START_UP_S = 3.0
"""Of a grading job's default time limit, the part set aside for starting its sandbox and harness."""
MAX_CODE_BYTES = distil_sandbox.Job(code="").max_file_mb << 20
"""The largest code a grading run takes: a sandbox job's file may be no larger. Larger code gets a
failed verdict that says so (a sandbox would refuse the job, and ``verify_batch`` raise)."""


def script(name: str) -> str:
    """The source of one of the in-sandbox scripts shipped with this package."""
    return (_HERE / name).read_text(encoding="utf-8")


@dataclass
class _Run:
    """One grading run, ready to hand to the sandbox."""

    tests: CodeTests
    key: bytes
    nonce: str
    job: dict[str, Any]
    cache_key: str
    spec: dict[str, Any]  # the harness's run, without the key
    code: str  # the solution's source
    refused: Optional[str] = None  # why it is not run at all (its verdict says so)


class CodeExecVerifier:
    """Runs the response's code against the problem's tests in the sandbox; score = fraction passed.
    Its verdicts carry no answer to vote on (``gives_answers``), so no maj@n is reported.

    Options: ``backend`` (a distil_sandbox backend, ``auto`` by default), ``timeout_s`` (for the
    whole run; by default the per-test limits summed plus start-up), ``memory_mb`` (per sandbox
    job where the backend gives it a memory cgroup, else per process), ``max_output_bytes`` (of each program's stdout/stderr kept for checking),
    ``workers`` (sandbox jobs at once; default one per CPU), ``cache_size`` (verdicts remembered,
    least recently used dropped first; 0 turns caching off) and ``batch_size`` (rollouts one
    sandbox job grades in ``verify_batch``; 1 gives each its own job). ``batch: false`` makes
    ``verify_batch`` grade each rollout in a job of its own, as ``verify`` does (for comparison).
    ``sessions`` (default true; ``bwrap`` and ``process``): keep the batch jobs' harnesses
    running across ``verify_batch`` calls and send each step's batches to them (``sessions.py``).
    ``engines`` (instead of ``backend``): engine specs for an :class:`~distil_sandbox.EnginePool`,
    e.g. ``["docker:unix:///run/d1.sock*4", "docker:tcp://10.0.0.2:2375*8", "bwrap*2"]``, where
    ``workers`` is the count for a spec without ``*N``; ``max_pending``: runs queued at most
    (grading waits for room; default twice all workers).
    """

    run_options = frozenset({"backend", "engines", "workers", "cache_size", "max_pending", "batch_size", "batch",
                             "sessions"})
    """Options that change how grading runs, not its verdicts (every backend grades alike,
    docs/sandbox.md): left out of the tiny base's cache key, so moving grading to another backend
    does not pretrain a second base."""

    gives_answers = False  # a program is graded by its tests, not by an answer to vote on

    def __init__(
        self,
        backend: str = "auto",
        timeout_s: Optional[float] = None,
        memory_mb: int = 512,
        max_output_bytes: int = 1 << 20,
        workers: Optional[int] = None,
        cache_size: int = 4096,
        engines: Optional[list[str]] = None,
        max_pending: Optional[int] = None,
        batch_size: int = 32,
        batch: bool = True,
        sessions: bool = True,
    ):
        if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                                      or not 0 < timeout_s <= distil_sandbox.MAX_TIMEOUT_S):
            raise ValueError("code_exec: timeout_s must be a number of seconds above 0 and at most "
                             f"{distil_sandbox.MAX_TIMEOUT_S} (or null: the tests' limits summed) {options.got(timeout_s)}")
        memory_mb = options.memory_mb(memory_mb)
        options.whole_number("max_output_bytes", max_output_bytes, least=1)
        workers = options.whole_number("workers", workers, least=1, none="one per CPU, at most 32")
        options.whole_number("cache_size", cache_size, least=0)
        options.whole_number("batch_size", batch_size, least=1)
        options.whole_number("max_pending", max_pending, least=1, none="twice all workers")
        self.batch_size, self.batch = batch_size, options.flag("batch", batch)
        sessions = options.flag("sessions", sessions)
        workers = workers or min(32, os.cpu_count() or 4)
        self.engines: Optional[list[str]] = None
        if engines is not None:
            if backend != "auto":
                raise ValueError(f"code_exec: give either backend ({backend!r}) or engines, not both; engines may "
                                 'list local sandboxes too, e.g. ["docker:unix:///run/d1.sock*4", "bwrap*2"]')
            try:
                self.engines = [spec.name + f"*{spec.workers}" for spec in parse_engines(engines, workers)]
            except ValueError as exc:
                raise ValueError(f"code_exec: {exc}") from None
            self.backend = "engines"  # engines are reached when the first run is graded
        elif max_pending is not None:
            raise ValueError("code_exec: max_pending bounds the queue of an engine pool; give engines too")
        else:
            self.backend = options.available_backend(backend)  # unavailable: fails here, with the reason
        self.max_pending = max_pending
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self.max_output_bytes, self.workers, self.cache_size = max_output_bytes, workers, cache_size
        self._cache: "OrderedDict[str, Verdict]" = OrderedDict()
        self._lock = threading.Lock()
        # What grading cost: sandbox jobs sent, verdicts reused, rollouts graded inside a batch
        # job, rollouts a batch job left ungraded (graded again in a job of their own), and the
        # solutions' processes a batch job forked from its fork server instead of starting anew.
        self.counts = {"sandbox_runs": 0, "cache_hits": 0, "batched_runs": 0, "batch_fallbacks": 0,
                       "forked_children": 0, "sessions_started": 0, "session_batches": 0, "session_failures": 0}
        self._pool: Any = None
        self.sessions = sessions and self.engines is None
        self.session_pool: Optional[SessionPool] = None
        self.harness_source, self.child_source = script("harness.py"), script("child.py")

    # -- the three ways in ---------------------------------------------------------------------

    async def verify(self, problem: Problem, rollout: Rollout) -> Verdict:
        run = self._prepare(problem, rollout)
        cached = self._cached(run.cache_key)
        if cached is not None:
            return cached
        if run.refused:
            return self.refuse(run)
        result = await asyncio.wrap_future(self._submit(run))
        return self._finish(run, result)

    def grade(self, problem: Problem, rollout: Rollout) -> Verdict:
        """``verify``, synchronously."""
        return self.verify_many([(problem, rollout)])[0]

    def verify_many(self, pairs: Iterable[tuple[Problem, Rollout]]) -> list[Verdict]:
        """Grade many (problem, rollout) pairs concurrently; verdicts in the same order."""
        runs = [self._prepare(problem, rollout) for problem, rollout in pairs]
        cached = [self._cached(run.cache_key) for run in runs]
        cached = [self.refuse(run) if v is None and run.refused else v for run, v in zip(runs, cached)]
        futures = {i: self._submit(run) for i, run in enumerate(runs) if cached[i] is None}
        return [v if v is not None else self._finish(runs[i], futures[i].result()) for i, v in enumerate(cached)]

    def verify_batch(self, problems: list[Problem], rollouts: list[Rollout]) -> list[Verdict]:
        """A whole step at once: ``rollouts[i]`` against ``problems[i]``, several rollouts to a
        sandbox job, identical ones graded once; the same verdicts as ``verify``."""
        if not self.batch:
            return self.verify_many(zip(problems, rollouts))
        return batch.verify_batch(self, problems, rollouts)

    @contextmanager
    def counting(self) -> Iterator[dict[str, int]]:
        """``counts``, held under the verifier's lock while the block updates it."""
        with self._lock:
            yield self.counts

    def grading_job(self, problem: Problem, rollout: Rollout) -> dict[str, Any]:
        """The sandbox job one grading run executes: ``distil_sandbox.run(**job)`` arguments.

        Each call makes a fresh key and nonce. For benchmarks and debugging; ``verify`` runs it.
        """
        return dict(self._prepare(problem, rollout).job)

    @property
    def stats(self) -> dict[str, Any]:
        """The engine pool's counters (runs per engine, requeued, engine failures, engines up and
        down; see :attr:`distil_sandbox.EnginePool.stats`); empty without ``engines`` or before
        the first run."""
        pool = self._pool
        return pool.stats if isinstance(pool, distil_sandbox.EnginePool) else {}

    def close(self) -> None:
        """Stop the worker pool (warm containers on docker). The verifier can still be used."""
        pool, self._pool = self._pool, None
        sessions, self.session_pool = self.session_pool, None
        if sessions is not None:
            sessions.close()
        if pool is not None:
            (pool.close if hasattr(pool, "close") else pool.shutdown)()

    # -- one run -----------------------------------------------------------------------------

    def _prepare(self, problem: Problem, rollout: Rollout) -> _Run:
        tests = CodeTests.from_reference(problem.reference, problem.id)
        code = extract_code(rollout.response_text)
        timeout = tests.timeout_s
        import_timeout = max(3.0, timeout)
        overall = self.timeout_s or START_UP_S + import_timeout + 1.1 * timeout * len(tests.cases)
        key, nonce = secrets.token_bytes(32), secrets.token_hex(16)
        spec = {
            "nonce": nonce,
            "kind": tests.kind,
            "tests": [c.model_dump(mode="json") if hasattr(c, "model_dump") else c for c in tests.cases],
            "setup": tests.setup,
            "entry_point": tests.entry_point,
            "timeout_s": timeout,
            "import_timeout_s": import_timeout,
            "rel_tol": tests.rel_tol,
            "max_output_bytes": self.max_output_bytes,
            "solution": SOLUTION_FILE,
            "child": CHILD_FILE,
        }
        job = {
            "code": self.harness_source,
            "stdin": key.hex() + "\n" + json.dumps(spec),
            "files": {SOLUTION_FILE: code, CHILD_FILE: self.child_source},
            "timeout_s": overall,
            "memory_mb": self.memory_mb,
            "output_limit": (64 << 10) + (24 << 10) * len(tests.cases),
        }
        identity = json.dumps(
            [code, tests.model_dump(mode="json"), self.backend, overall, self.memory_mb, self.max_output_bytes],
            sort_keys=True,
        )
        size = len(code.encode("utf-8"))
        refused = (f"the code is {size} bytes of UTF-8, more than the {MAX_CODE_BYTES} ({MAX_CODE_BYTES >> 20} MiB) "
                   "a grading run takes; it was not run" if size > MAX_CODE_BYTES else None)
        return _Run(tests, key, nonce, job, hashlib.sha256(identity.encode()).hexdigest(), spec, code, refused)

    def _submit(self, run: _Run) -> "Future[distil_sandbox.ExecResult]":
        return self.submit_job(run.job)

    def submit_job(self, job: dict[str, Any]) -> "Future[distil_sandbox.ExecResult]":
        """Queue one sandbox job on the verifier's pool (started on first use)."""
        with self._lock:
            self.counts["sandbox_runs"] += 1
            if self._pool is None and self.engines is not None:
                self._pool = distil_sandbox.EnginePool(self.engines, max_pending=self.max_pending,
                                                       memory_mb=self.memory_mb)
            elif self._pool is None:
                self._pool = _make_pool(self.backend, self.workers, self.memory_mb)
            pool = self._pool
        if isinstance(pool, ThreadPoolExecutor):
            return pool.submit(lambda: distil_sandbox.run(backend=self.backend, **job))
        return pool.submit(job["code"], **{k: v for k, v in job.items() if k != "code"})

    def submit_batch(
        self, job: dict[str, Any], key: bytes, batch: dict[str, Any]
    ) -> "Future[distil_sandbox.ExecResult]":
        """Queue one batch (``batch.batch_job``'s job, key and batch): to a grading session where
        the backend keeps one (see ``sessions.py``), else to the pool as a sandbox job."""
        with self._lock:
            if self.session_pool is None and self.sessions:
                self.session_pool = SessionPool(self)
            sessions = self.session_pool
        if sessions is not None and sessions.usable(job):
            return sessions.submit(batch, key, job["timeout_s"])
        return self.submit_job(job)

    def _finish(self, run: _Run, result: distil_sandbox.ExecResult) -> Verdict:
        verdict = build_verdict(run.tests, result, read_signed(result.stdout, run.key, run.nonce, len(run.tests.cases)))
        if result.error is None:
            self._remember(run.cache_key, verdict)
        return verdict

    def finish(self, run: _Run, result: distil_sandbox.ExecResult) -> Verdict:
        """The verdict of a finished run (remembered in the cache unless the sandbox failed)."""
        return self._finish(run, result)

    def refuse(self, run: _Run) -> Verdict:
        """The failed verdict of a run that is not run at all (``run.refused`` says why), remembered."""
        verdict = refused_verdict(run.tests, run.refused or "", self.backend)
        self._remember(run.cache_key, verdict)
        return verdict

    def prepare(self, problem: Problem, rollout: Rollout) -> _Run:
        """One grading run: its tests, key, nonce, sandbox job and cache key."""
        return self._prepare(problem, rollout)

    def cached(self, key: str) -> Optional[Verdict]:
        """The remembered verdict for a run's cache key (a copy), or None."""
        return self._cached(key)

    # -- cache -------------------------------------------------------------------------------

    def _cached(self, key: str) -> Optional[Verdict]:
        with self._lock:
            verdict = self._cache.get(key)
            if verdict is None:
                return None
            self._cache.move_to_end(key)
            self.counts["cache_hits"] += 1
        return verdict.model_copy(deep=True)

    def _remember(self, key: str, verdict: Verdict) -> None:
        if self.cache_size <= 0:
            return
        with self._lock:
            self._cache[key] = verdict.model_copy(deep=True)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)


def _make_pool(backend: str, workers: int, memory_mb: int) -> Any:
    try:
        from distil_sandbox.pool import Pool
    except ImportError:
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="distil-code-exec")
    return Pool(backend=backend, workers=workers, memory_mb=memory_mb)
