"""The backend registry: names, availability probes, ``auto`` selection."""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

from .result import ExecResult, Job

AUTO_ORDER = ("bwrap", "docker", "process")
_MODULES = {"bwrap": "distil_sandbox.bwrap", "docker": "distil_sandbox.docker_backend", "process": "distil_sandbox.process"}


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine; the message says why and what to do."""


@runtime_checkable
class Backend(Protocol):
    name: str

    def available(self) -> tuple[bool, str]:
        """(True, "") or (False, a one-line reason a user can act on)."""

    def run(self, job: Job) -> ExecResult:
        """Run one job to completion; kill everything it started before returning."""


_instances: dict[str, Backend] = {}


def _instance(name: str) -> Backend:
    if name not in _MODULES:
        raise ValueError(f"unknown sandbox backend {name!r}; choose one of auto, {', '.join(_MODULES)}")
    if name not in _instances:
        module = importlib.import_module(_MODULES[name])
        _instances[name] = module.BACKEND_CLASS()
    return _instances[name]


def get_backend(name: str = "auto") -> Backend:
    """The backend called ``name`` if it is available, or the first available for ``auto``."""
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            backend = _instance(candidate)
            ok, why = backend.available()
            if ok:
                return backend
            reasons.append(f"{candidate}: {why}")
        raise BackendUnavailable("no sandbox backend is available here (" + "; ".join(reasons) + ")")
    backend = _instance(name)
    ok, why = backend.available()
    if not ok:
        raise BackendUnavailable(f"sandbox backend {name!r} is unavailable: {why}")
    return backend


def available_backends() -> dict[str, str]:
    """Every backend with "" when it is available, else the reason it is not."""
    out = {}
    for name in AUTO_ORDER:
        ok, why = _instance(name).available()
        out[name] = "" if ok else why
    return out
