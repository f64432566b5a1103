"""Helpers for the sandbox tests: which backends to run, host-side checks, hostile programs."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import pytest
from distil_sandbox import AUTO_ORDER, Backend, BackendUnavailable, ExecResult, Job, get_backend
from distil_sandbox._job import validate_job
from distil_sandbox.bwrap import BwrapBackend

# Every backend, and "bwrap-cold": the bwrap backend with warm sandboxes off. On "bwrap" every job
# runs in a warm sandbox (see run_job); DISTIL_SANDBOX_REQUIRE=bwrap requires both.
BACKENDS = [AUTO_ORDER[0], "bwrap-cold", *AUTO_ORDER[1:]]
REQUIRED = {name.strip() for name in os.environ.get("DISTIL_SANDBOX_REQUIRE", "").split(",") if name.strip()}
AS_ROOT = os.geteuid() == 0
DEFAULT_JOB = Job(code="")

_reasons: dict[str, str] = {}
_sandboxes: dict[str, Backend] = {}


def backend_name(test_backend: str) -> str:
    """The backend a test backend is ("bwrap" for "bwrap-cold")."""
    return "bwrap" if test_backend == "bwrap-cold" else test_backend


def required(test_backend: str) -> bool:
    return backend_name(test_backend) in REQUIRED


def sandbox(test_backend: str) -> Backend:
    """The backend instance behind a test backend name (one per session)."""
    if test_backend not in _sandboxes:
        if test_backend in ("bwrap", "bwrap-cold"):
            _sandboxes[test_backend] = BwrapBackend(warm=test_backend == "bwrap")
        else:
            _sandboxes[test_backend] = get_backend(test_backend)
    return _sandboxes[test_backend]


def unavailable_reason(name: str) -> str:
    """"" when test backend ``name`` works here, else why not (asked once per session)."""
    if name not in _reasons:
        try:
            if name in ("bwrap", "bwrap-cold"):
                ok, why = sandbox(name).available()
                if not ok:
                    raise BackendUnavailable(f"sandbox backend 'bwrap' is unavailable: {why}")
                if name == "bwrap" and not sandbox(name).warm:
                    raise BackendUnavailable("the bwrap backend cannot keep warm sandboxes here (no /usr/bin/tar?)")
            else:
                sandbox(name)
            _reasons[name] = ""
        except BackendUnavailable as exc:
            _reasons[name] = str(exc)
        except Exception as exc:  # a backend that cannot even be asked is unavailable
            _reasons[name] = f"sandbox backend {name!r} could not be asked: {type(exc).__name__}: {exc}"
    return _reasons[name]


def run(test_backend: str, code: str, **job_fields) -> ExecResult:
    """What ``distil_sandbox.run(code, **job_fields)`` returns on ``test_backend``."""
    job = Job(code=code, **job_fields)
    validate_job(job)
    return run_job(test_backend, job)


def run_job(test_backend: str, job: Job) -> ExecResult:
    """Run ``job`` on ``test_backend``; on "bwrap", in a warm sandbox (asserted)."""
    backend = sandbox(test_backend)
    if test_backend != "bwrap":
        return backend.run(job)
    assert backend.keep_warm(job, wait_s=10), "no warm sandbox of this job's shape could be started"
    warm_before = backend.stats["warm"]
    result = backend.run(job)
    assert backend.stats["warm"] > warm_before, "the job did not run in a warm sandbox"
    return result


def warm_up(test_backend: str, job: Job, count: int) -> None:
    """On "bwrap", have ``count`` warm sandboxes of ``job``'s shape waiting (for jobs run at once)."""
    if test_backend == "bwrap":
        assert sandbox(test_backend).keep_warm(job, count, wait_s=10)


def weakness(request, backend: str, reason: str, *, on=("process",), when: bool = True) -> None:
    """Mark this test as a known hole of the ``on`` backends: it must fail there (strict xfail)."""
    if backend in on and when:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def new_marker() -> str:
    return "distil-marker-" + secrets.token_hex(8)


def marked(code: str, marker: str) -> str:
    """Python source that first re-executes itself with ``marker`` in its command line, so that
    it and every process it forks can be found from the host afterwards."""
    prologue = (
        "import os, sys\n"
        f"if sys.argv[1:] != [{marker!r}]:\n"
        f"    os.execv(sys.executable, [sys.executable, sys.argv[0], {marker!r}])\n"
    )
    return prologue + code


def processes_with(marker: str) -> list[int]:
    """Host pids of live processes whose command line contains ``marker``."""
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if needle in fh.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process on the host."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def host_sleeper(marker: Optional[str] = None) -> subprocess.Popen:
    """A process on the host that a job will try to find or kill; the caller stops it."""
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    if marker:
        argv.append(marker)
    proc = subprocess.Popen(argv)
    expected = b"\0".join(arg.encode() for arg in argv) + b"\0"
    deadline = time.monotonic() + 30
    while _cmdline(proc.pid) != expected:  # until it runs (and shows) its own command line
        assert proc.poll() is None, f"the host sleeper exited with {proc.returncode}"
        assert time.monotonic() < deadline, "the host sleeper did not start"
        time.sleep(0.01)
    return proc


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


@contextmanager
def cgroup_of_its_own() -> Iterator[tuple[str, Callable[[], None]]]:
    """A new cgroup beside this process's jobs' memory cgroups, and a ``preexec_fn`` that moves a
    child process into it: the groups that child's jobs make are then inside it, apart from this
    process's own. Skips where no job cgroup can be made; removed afterwards, with what is left."""
    from distil_sandbox import _cgroup

    probe, why = _cgroup.create(16)
    if probe is None:
        pytest.skip(f"no memory cgroup can be made here: {why}")
    probe.remove()
    path = os.path.join(os.path.dirname(probe.path), "distil-test-" + secrets.token_hex(6))
    os.mkdir(path)
    procs = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
    try:
        yield path, lambda: os.write(procs, b"0")
    finally:
        os.close(procs)
        deadline = time.monotonic() + 30
        for inner in [*(e.path for e in os.scandir(path) if e.is_dir()), path]:
            while os.path.isdir(inner):
                try:
                    os.rmdir(inner)
                except OSError:  # busy while its last processes leave
                    assert time.monotonic() < deadline, f"{inner} could not be removed"
                    time.sleep(0.01)
