"""The docker backend: every job in a fresh, locked-down container.

How a container is set up and how jobs reach it: :mod:`distil_sandbox.docker_container`. The
:class:`~distil_sandbox.pool.Pool` keeps such containers warm to run many jobs. The Docker SDK
is imported only when this backend is used (``pip install docker``). The engine is
``DockerBackend(base_url=...)`` (``unix:///run/d1.sock``, ``tcp://10.0.0.2:2375``, ...) when given, so
several engines can be used from one process (see :mod:`distil_sandbox.engines`); otherwise
``DOCKER_HOST`` and the other ``docker.from_env`` variables choose it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Optional

from ._common import error_result
from .docker_container import (
    API_TIMEOUT_S,
    ContainerLimits,
    SandboxBroken,
    SandboxContainer,
    engine_errors,
    supervisor_request,
)
from ._docker_owner import remove_orphans
from .image import IMAGE, ensure_image
from .result import ExecResult, Job

PROBE_TIMEOUT_S = 5.0


class DockerBackend:
    """Runs each job in a fresh container, removed afterwards (settings: :mod:`.docker_container`).

    ``base_url``: the engine's address; None means the environment's (``DOCKER_HOST``).
    """

    name = "docker"

    def __init__(self, image: str = IMAGE, cpus: float = 1.0, base_url: Optional[str] = None) -> None:
        self.image = image
        self.cpus = cpus
        self.base_url = base_url
        self._client: Any = None
        self._image_ready = False
        self._checked = False
        self._swept = False
        self._lock = threading.Lock()

    def engine_address(self) -> str:
        """The engine this backend talks to: ``base_url``, else ``DOCKER_HOST``, else the local socket."""
        return self.base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    def guarantees(self) -> dict[str, str]:
        """How ``memory_mb`` holds: the container's memory cgroup, for the whole job."""
        return {"memory": "whole job (the container's memory cgroup, no swap)",
                "namespaces": "the container's: pid, mount, network (none), ipc, uts"}

    def available(self) -> tuple[bool, str]:
        try:
            import docker.errors  # noqa: F401  (is the SDK installed?)
        except ImportError:
            return False, "the docker Python SDK is not installed: pip install docker (or distil-sandbox[docker])"
        unreachable = engine_errors()
        try:
            client = self.client()
        except unreachable as exc:
            return False, self.unreachable(exc)
        try:
            self._ensure_image(client)
        except unreachable as exc:
            return False, (f"the sandbox image {self.image} is missing and could not be built ({_short(exc)}); "
                           "run `distil-sandbox image build`")
        if not self._checked:
            # One real job proves what a ping cannot: the engine host has /usr/bin/python3 to
            # bind-mount, and it accepts these security settings.
            trial = self.run(Job(code="print('ok')", timeout_s=30, memory_mb=128))
            if trial.stdout != "ok\n":
                why = trial.error or trial.stderr.strip()[-300:] or f"exit {trial.exit_code}, signal {trial.signal}"
                return False, f"a trivial job failed in a sandbox container: {why}"
            self._checked = True
        return True, ""

    def unreachable(self, exc: BaseException) -> str:
        """Why the engine could not be reached (``exc``, what :meth:`client` raised), and what to do."""
        cause = _root_cause(exc)
        hint = " (is this user allowed to use the Docker socket?)" if isinstance(cause, PermissionError) else ""
        fix = "start dockerd there or correct the address" if self.base_url else \
            "start dockerd or point DOCKER_HOST at a running engine"
        return f"cannot reach the Docker engine at {self.engine_address()}: {_short(cause)}{hint}; {fix}"

    def client(self) -> Any:
        """A connected Docker client (raises the SDK's or the socket's error when there is none)."""
        import docker

        with self._lock:
            if self._client is not None:
                try:
                    self._client.ping()
                    return self._client
                except engine_errors():
                    self._client = None
                    self._image_ready = False
            if self.base_url:
                client = docker.DockerClient(base_url=self.base_url, timeout=PROBE_TIMEOUT_S)
            else:
                client = docker.from_env(timeout=PROBE_TIMEOUT_S)
            client.ping()
            client.api.timeout = API_TIMEOUT_S
            self._client = client
            return client

    def _ensure_image(self, client: Any) -> None:
        if not self._image_ready:
            ensure_image(client, self.image)
            self._image_ready = True

    def start_container(self, limits: ContainerLimits) -> SandboxContainer:
        """A started container for ``limits``, for callers (the Pool) that run several jobs in it."""
        import docker.errors

        client = self.client()
        if not self._swept:  # the containers of processes killed before they could remove them
            self._swept = True
            remove_orphans(client)
        self._ensure_image(client)
        try:
            return SandboxContainer(client, limits, self.image).start()
        except docker.errors.ImageNotFound:  # removed since it was checked: build it again
            self._image_ready = False
            self._ensure_image(client)
            return SandboxContainer(client, limits, self.image).start()

    def run(self, job: Job) -> ExecResult:
        supervisor_request(job)  # a bad job is the caller's ValueError, before any container starts
        started = time.monotonic()
        box = None
        try:
            box = self.start_container(ContainerLimits.for_job(job, self.cpus))
            return box.run(job)
        except (SandboxBroken, *engine_errors()) as exc:
            return sandbox_failure(f"docker: {_short(exc, 500)}", time.monotonic() - started)
        finally:
            if box is not None:
                box.close()


def sandbox_failure(message: str, wall_s: float = 0.0) -> ExecResult:
    """The result of a job the sandbox could not run."""
    return error_result("docker", message, wall_s=wall_s)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost error behind ``exc`` (the SDK wraps requests, which wraps urllib3, which
    wraps the socket's error), which is the one that says what went wrong."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or exc.__context__ or getattr(exc, "reason", None)
        if inner is None and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def engine_error_text(exc: BaseException) -> str:
    """What went wrong with an engine, in one short line: the engine's own message when it answered
    (an API error), else the innermost transport error (e.g. ``[Errno 111] Connection refused``)."""
    import docker.errors

    return _short(exc if isinstance(exc, docker.errors.APIError) else _root_cause(exc))


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


BACKEND_CLASS = DockerBackend
