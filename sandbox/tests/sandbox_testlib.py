"""Helpers for the sandbox tests: which backends to run, host-side checks, hostile programs."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from typing import Optional

import pytest
from distil_sandbox import AUTO_ORDER, BackendUnavailable, Job, get_backend

BACKENDS = list(AUTO_ORDER)
REQUIRED = {name.strip() for name in os.environ.get("DISTIL_SANDBOX_REQUIRE", "").split(",") if name.strip()}
AS_ROOT = os.geteuid() == 0
DEFAULT_JOB = Job(code="")

_reasons: dict[str, str] = {}


def unavailable_reason(name: str) -> str:
    """"" when backend ``name`` works here, else why not (asked once per session)."""
    if name not in _reasons:
        try:
            get_backend(name)
            _reasons[name] = ""
        except BackendUnavailable as exc:
            _reasons[name] = str(exc)
        except Exception as exc:  # a backend that cannot even be asked is unavailable
            _reasons[name] = f"sandbox backend {name!r} could not be asked: {type(exc).__name__}: {exc}"
    return _reasons[name]


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
    time.sleep(0.05)
    return proc
