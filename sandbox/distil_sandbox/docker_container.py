"""One sandbox container: its settings, and the supervisor protocol that runs jobs in it.

Each container runs :mod:`distil_sandbox.container_supervisor` as pid 1, attached over one socket
for its whole life. The host sends a job (files, stdin, limits) down that socket; the supervisor
writes the files into the ``/work`` tmpfs, runs the program as uid 65534 with its own pipes,
enforces the timeout and the output cap, kills everything the job started, empties the
writable places, and answers with framed stdout, stderr and a result. Files travel with the
job, so nothing is copied into a container from outside (``put_archive``) and a warm container
can take job after job; the job's stdin, stdout and stderr never touch the control channel.

Settings (:func:`container_settings`): no network, read-only root, the engine host's ``/usr``
bind-mounted read-only (the image itself is empty, see :mod:`distil_sandbox.image`), tmpfs
``/work`` and ``/tmp`` capped in size, memory limit with no swap, pids limit, one CPU, every
capability dropped, ``no-new-privileges``, user 65534, ulimits, no logging, and the labels
``distil-sandbox=1``, ``distil-sandbox.pid=<pid of the process that started it>`` and
``distil-sandbox.owner`` (that process, named so that a later one can tell it is gone: see
:func:`~._docker_owner.remove_orphans`).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ._common import SANDBOX_LANG, SANDBOX_PATH, WORK_DIR, CappedBuffer, Supervised, make_result, rlimits_for
from ._job import job_files, language_for, validate_job
from ._docker_owner import OWNER_LABEL, owner_of
from .image import IMAGE, LABEL, SANDBOX_UID
from .result import ExecResult, Job

STARTUP_GRACE_S = 30.0  # beyond the job's timeout: container start, file writing, clean-up
API_TIMEOUT_S = 60.0
SUPERVISOR_STDERR_LIMIT = 64 * 1024
PROGRAM_ENV = {"PATH": SANDBOX_PATH, "HOME": WORK_DIR, "LANG": SANDBOX_LANG}
_SUPERVISOR_SOURCE = Path(__file__).with_name("container_supervisor.py").read_bytes()
# pid 1's command line: read the supervisor's source (length-prefixed) from stdin and run it.
_BOOTSTRAP = """import os, struct
def take(n):
    got = b""
    while len(got) < n:
        part = os.read(0, n - len(got))
        if not part:
            raise SystemExit("distil-sandbox: no supervisor received")
        got += part
    return got
exec(compile(take(struct.unpack(">I", take(4))[0]), "container_supervisor.py", "exec"))
"""
# RLIMIT_NPROC counts every process of a uid on the whole engine host, and every container runs
# as uid 65534, so the pids cgroup limits processes instead. Memory is the memory cgroup's job.
_RLIMIT_NAMES = {resource.RLIMIT_CPU: "cpu", resource.RLIMIT_FSIZE: "fsize", resource.RLIMIT_NOFILE: "nofile",
                 resource.RLIMIT_CORE: "core", resource.RLIMIT_MSGQUEUE: "msgqueue"}


class SandboxBroken(RuntimeError):
    """The container stopped answering; it must not run another job."""


class EngineFailure(RuntimeError):
    """The Docker engine failed (unreachable, API errors, containers lost with it), not the job:
    the job has no result and may run elsewhere."""


@dataclass(frozen=True)
class ContainerLimits:
    """What is fixed when a container starts (per job for ``run``, per container in a Pool)."""

    memory_mb: int = 512
    max_processes: int = 64
    work_mb: int = 64
    tmp_mb: int = 64
    cpus: float = 1.0

    @classmethod
    def for_job(cls, job: Job, cpus: float = 1.0) -> "ContainerLimits":
        return cls(memory_mb=job.memory_mb, max_processes=job.max_processes, work_mb=job.work_mb,
                   tmp_mb=job.work_mb, cpus=cpus)

    def mismatch(self, job: Job) -> Optional[str]:
        """Why ``job`` cannot run under these container limits, or None when it can."""
        for name in ("memory_mb", "max_processes", "work_mb"):
            if getattr(job, name) != getattr(self, name):
                return (f"this pool's containers were started with {name}={getattr(self, name)} but the job asks "
                        f"for {getattr(job, name)}; container limits are per pool: make a Pool with {name}="
                        f"{getattr(job, name)}")
        return None


def container_settings(limits: ContainerLimits, image: str) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.create``: the whole security configuration."""
    import docker.types

    memory = f"{limits.memory_mb}m"
    return dict(
        image=image,
        command=["/usr/bin/python3", "-I", "-c", _BOOTSTRAP],
        user=f"{SANDBOX_UID}:{SANDBOX_UID}",
        working_dir="/work",
        environment=dict(PROGRAM_ENV),
        hostname="sandbox",
        stdin_open=True,
        network_mode="none",
        read_only=True,
        volumes={"/usr": {"bind": "/usr", "mode": "ro"}},
        tmpfs={
            "/work": f"size={limits.work_mb}m,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700",
            "/tmp": f"size={limits.tmp_mb}m,mode=1777",
        },
        shm_size="16m",
        mem_limit=memory,
        memswap_limit=memory,
        # the supervisor is one process of the container; the job gets max_processes of its own
        # (a cgroup takes at most the kernel's largest pid count, PID_MAX_LIMIT: 2**22)
        pids_limit=min(limits.max_processes + 1, 1 << 22),
        nano_cpus=int(limits.cpus * 1e9),
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        ulimits=[
            docker.types.Ulimit(name="core", soft=0, hard=0),
            docker.types.Ulimit(name="nofile", soft=1024, hard=1024),
            docker.types.Ulimit(name="fsize", soft=limits.work_mb << 20, hard=limits.work_mb << 20),
        ],
        log_config=docker.types.LogConfig(type="none"),
        # pid 1 ignores SIGTERM, so an engine stopping the container (or killing what it left
        # running when it died and started again) would otherwise wait 10 s before SIGKILL
        stop_signal="SIGKILL",
        # the pid tells whose containers they are; the owner, whether that process is gone
        labels={LABEL: "1", f"{LABEL}.pid": str(os.getpid()), OWNER_LABEL: owner_of(os.getpid())},
    )


def supervisor_request(job: Job) -> bytes:
    """The bytes that hand ``job`` to the supervisor (see its protocol); ValueError for a bad job."""
    validate_job(job)
    files = job_files(job)
    stdin = None if job.stdin is None else job.stdin.encode() if isinstance(job.stdin, str) else bytes(job.stdin)
    rlimits = {_RLIMIT_NAMES[which]: [soft, hard] for which, soft, hard in rlimits_for(job) if which in _RLIMIT_NAMES}
    header = json.dumps({
        "argv": list(language_for(job.language).argv),
        "files": [[name, len(data)] for name, data in files.items()],
        "stdin_size": None if stdin is None else len(stdin),
        "timeout_s": job.timeout_s,
        "output_limit": job.output_limit,
        "rlimits": rlimits,
        "env": PROGRAM_ENV,
    }).encode()
    return b"".join([struct.pack(">I", len(header)), header, *files.values(), stdin or b""])


class _Frames:
    """Decodes Docker's multiplexed attach stream, then the supervisor's frames inside stdout."""

    def __init__(self) -> None:
        self._docker = bytearray()
        self._control = bytearray()
        self.supervisor_stderr = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._docker += data
        while len(self._docker) >= 8:
            stream, size = struct.unpack(">BxxxL", self._docker[:8])
            if len(self._docker) < 8 + size:
                break
            payload = bytes(self._docker[8:8 + size])
            del self._docker[:8 + size]
            if stream == 1:
                self._control += payload
            elif len(self.supervisor_stderr) < SUPERVISOR_STDERR_LIMIT:
                self.supervisor_stderr += payload[:SUPERVISOR_STDERR_LIMIT - len(self.supervisor_stderr)]
        frames = []
        while len(self._control) >= 5:
            kind, size = self._control[:1], struct.unpack(">I", self._control[1:5])[0]
            if len(self._control) < 5 + size:
                break
            frames.append((bytes(kind), bytes(self._control[5:5 + size])))
            del self._control[:5 + size]
        return frames


class SandboxContainer:
    """One started container with the supervisor as pid 1, ready to run jobs one at a time."""

    def __init__(self, client: Any, limits: ContainerLimits, image: str = IMAGE) -> None:
        self.client = client
        self.limits = limits
        self.image = image
        self.container: Any = None
        self._socket: Any = None
        self._raw: Optional[socket.socket] = None
        self.reusable = False

    def start(self) -> "SandboxContainer":
        self.container = self.client.containers.create(**container_settings(self.limits, self.image))
        try:
            self._socket = self.client.api.attach_socket(
                self.container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            # a SocketIO around the socket on plain connections, the TLS socket itself otherwise
            self._raw = getattr(self._socket, "_sock", self._socket)
            self.container.start()
            self._raw.settimeout(API_TIMEOUT_S)
            self._raw.sendall(struct.pack(">I", len(_SUPERVISOR_SOURCE)) + _SUPERVISOR_SOURCE)
        except BaseException:
            self.close()
            raise
        self.reusable = True
        return self

    def run(self, job: Job) -> ExecResult:
        """Run ``job`` in this container; :class:`SandboxBroken` when the container is lost first."""
        if not self.reusable:
            raise SandboxBroken("this container cannot run another job")
        request = supervisor_request(job)
        started = time.monotonic()
        deadline = started + job.timeout_s + STARTUP_GRACE_S
        frames = _Frames()
        output = {b"1": CappedBuffer(job.output_limit), b"2": CappedBuffer(job.output_limit)}

        def result(report: dict[str, Any]) -> ExecResult:
            for kind, flag in ((b"1", "stdout_truncated"), (b"2", "stderr_truncated")):
                output[kind].truncated = output[kind].truncated or bool(report.get(flag))
            seen = Supervised(wait_status=report.get("wait_status"), timed_out=bool(report.get("timed_out")),
                              wall_s=float(report.get("wall_s") or time.monotonic() - started),
                              cpu_s=float(report.get("cpu_s") or 0.0), stdout=output[b"1"], stderr=output[b"2"])
            return make_result("docker", seen, error=report.get("error"))

        self.reusable = False  # until the supervisor reports a clean finish
        try:
            self._raw.settimeout(max(deadline - time.monotonic(), 0.001))
            self._raw.sendall(request)
            while True:
                self._raw.settimeout(max(deadline - time.monotonic(), 0.001))
                data = self._raw.recv(1 << 16)
                if not data:
                    break
                for kind, payload in frames.feed(data):
                    if kind == b"R":
                        report = json.loads(payload)
                        self.reusable = bool(report.get("clean")) and not report.get("oom")
                        return result(report)
                    output[kind].feed(payload)
        except socket.timeout:
            waited = job.timeout_s + STARTUP_GRACE_S
            if not self.kill():  # no engine to kill it: the engine, not the job, stopped answering
                raise SandboxBroken(f"the sandbox did not answer within {waited:.0f} s and its engine could not "
                                    "be reached to kill it")
            return result({"timed_out": True, "error": f"the sandbox did not answer within {waited:.0f} s; "
                                                       "its container was killed"})
        except OSError:
            pass  # the connection broke: the container's state below says why
        # The container ended before the supervisor reported. Nothing inside can stop the
        # supervisor except the kernel's OOM killer; anything else happened from outside.
        state = self._state()
        if not state.get("OOMKilled"):
            why = self._describe(state, frames)
            raise SandboxBroken(f"the sandbox container stopped before the job finished ({why})")
        return result({"wait_status": signal.SIGKILL.value})

    def _state(self) -> dict[str, Any]:
        try:
            self.container.reload()
            if self.container.attrs["State"].get("Running"):
                self.container.wait(timeout=5)
                self.container.reload()
            return dict(self.container.attrs["State"])
        except (KeyError, *engine_errors()):  # removed already; the caller reports what it can
            return {}

    @staticmethod
    def _describe(state: dict[str, Any], frames: _Frames) -> str:
        parts = [f"exit code {state.get('ExitCode')}" if state else "state unknown"]
        if frames.supervisor_stderr:
            parts.append(bytes(frames.supervisor_stderr).decode("utf-8", "replace").strip()[-500:])
        return "; ".join(parts)

    def kill(self) -> bool:
        """Kill the container; False when its engine could not be reached to do it."""
        import docker.errors

        self.reusable = False
        try:
            self.container.kill()
        except docker.errors.APIError:
            pass  # not running any more, or removed; close() removes whatever is left
        except engine_errors():
            return False
        return True

    def close(self) -> bool:
        """Kill and remove the container; safe to call twice, and it never raises.

        False when the engine could not be asked to remove it (a pool remembers it for later).
        """
        self.reusable = False
        for stream in (self._socket, self._raw):  # closing the SocketIO alone leaves the socket open
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._socket = self._raw = None
        removed = True
        if self.container is not None:
            import docker.errors

            try:
                self.container.remove(force=True)
            except docker.errors.APIError:
                pass  # already removed (404) or being removed (409)
            except engine_errors():
                removed = False  # the engine is gone, the container perhaps not
            self.container = None
        return removed


def engine_errors() -> tuple[type[BaseException], ...]:
    """Everything that means "no engine here": the SDK's errors and plain transport errors."""
    import docker.errors

    errors: list[type[BaseException]] = [docker.errors.DockerException, OSError]
    try:
        import requests.exceptions

        errors.append(requests.exceptions.RequestException)
    except ImportError:
        pass
    try:
        import urllib3.exceptions

        errors.append(urllib3.exceptions.HTTPError)
    except ImportError:
        pass
    return tuple(errors)
