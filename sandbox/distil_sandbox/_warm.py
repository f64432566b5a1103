"""Warm bubblewrap sandboxes: started ahead of time, each waiting for one job.

A warm sandbox is the bwrap backend's usual sandbox whose program, until a job arrives, is a
bootstrap (:data:`BOOTSTRAP`, run by ``/bin/sh``) that the namespace's init runs as its only
child. It first writes :data:`READY` to stdout, which tells that bubblewrap has set everything
up. Everything else comes down the program's stdin pipe, in this order:

1. the job's files, which ``tar`` (started with the bootstrap, blocked reading stdin) unpacks
   into ``/work``: an uncompressed archive (:func:`job_archive`) of directories 0755 and files
   0644, the modes bubblewrap's ``--file`` gives them; ``tar`` reads exactly up to the archive's
   end and leaves nothing else behind;
2. one line: ``pipe`` (the job has stdin, which follows) or ``null`` (stdin becomes
   ``/dev/null``);
3. the job's stdin, if any, read by the program itself.

The bootstrap then writes one byte, :data:`ACK`, to stdout and execs the program, with the
environment a sandbox started for the job has, in the same order (if ``/bin/sh`` would change
it, through ``env -i``). So the program starts with the same pid (2), parent, cwd,
environment, argv, files, fds and limits; only the init's command line shows the bootstrap.
The ack precedes everything the program writes, so its absence proves the program never
started, and the job can run in a new sandbox instead (:meth:`WarmSandbox.hand_over`).

Bubblewrap is started through util-linux's ``prlimit`` and ``setpriv`` (:func:`launcher`),
which set the job's rlimits and uid as a ``preexec_fn`` would, without forking the Python
process: a warm sandbox starts while a job runs, and such a fork would hold that job up.
"""

from __future__ import annotations

import functools
import io
import os
import resource
import signal
import subprocess
import tarfile
import time
import weakref
from pathlib import PurePosixPath
from typing import Callable, Mapping, Optional

from ._common import KILL_GRACE_S, WORK_DIR, CappedBuffer, Supervised, supervise, within_hard_limits
from .result import Job

READY = b"r"
ACK = b"s"
TAR = "/usr/bin/tar"
ENV = "/usr/bin/env"
# The bootstrap, ending with the exec of its arguments (the program's argv, or env -i's).
BOOTSTRAP = (
    f"printf {READY.decode()} && {TAR} -x -m -p -o -C {WORK_DIR} -f - && read -r stdin && "
    "case $stdin in null) exec </dev/null;; esac && "
    f'printf {ACK.decode()} && exec "$@"'
)


def bootstrap_argv(argv: tuple[str, ...], env: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """The command a warm sandbox's init runs, given the environment it is started with: the
    bootstrap, which ends by exec'ing ``argv`` with exactly that environment, in that order."""
    if _shell_keeps(env):
        return ("/bin/sh", "-c", BOOTSTRAP, "sh", *argv)
    return ("/bin/sh", "-c", BOOTSTRAP, "sh", ENV, "-i", *(f"{name}={value}" for name, value in env), *argv)


@functools.lru_cache(maxsize=None)
def _shell_keeps(env: tuple[tuple[str, str], ...]) -> bool:
    """Whether ``/bin/sh`` execs a program with exactly ``env``, in its order. A shell exports
    the variables it was given in an order of its own (dash: by hash bucket), and some add to
    them (bash: SHLVL); where it does, the bootstrap execs through ``env -i``, at about a
    millisecond per job. ``PWD`` is tried as ``/``, the directory the check runs in."""
    given = [(name, "/" if name == "PWD" else value) for name, value in env]
    try:
        shown = subprocess.run(
            ["/bin/sh", "-c", f"exec {ENV}"], env=dict(given), cwd="/", capture_output=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return shown.decode("utf-8", "replace").splitlines() == [f"{name}={value}" for name, value in given]


PRLIMIT, SETPRIV = "/usr/bin/prlimit", "/usr/bin/setpriv"
PRLIMIT_OPTIONS = {
    resource.RLIMIT_CPU: "--cpu",
    resource.RLIMIT_AS: "--as",
    resource.RLIMIT_NPROC: "--nproc",
    resource.RLIMIT_FSIZE: "--fsize",
    resource.RLIMIT_NOFILE: "--nofile",
    resource.RLIMIT_CORE: "--core",
    resource.RLIMIT_MSGQUEUE: "--msgqueue",
}


def launcher(limits: list[tuple[int, int, int]], owner: Optional[tuple[int, int]]) -> Optional[list[str]]:
    """The command prefix that sets ``limits`` as :func:`preexec_setting` would, and becomes the
    uid and gid ``owner`` with no supplementary groups as ``Popen(user=..., group=...,
    extra_groups=[])`` would; None where prlimit or setpriv is missing."""
    if not all(os.access(tool, os.X_OK) for tool in (PRLIMIT, SETPRIV)):
        return None
    args = [PRLIMIT]
    args += [f"{PRLIMIT_OPTIONS[res]}={soft}:{hard}" for res, soft, hard in within_hard_limits(limits)]
    args.append("--")
    if owner:
        args += [SETPRIV, f"--reuid={owner[0]}", f"--regid={owner[1]}", "--clear-groups", "--"]
    return args


def job_archive(files: Mapping[str, bytes]) -> bytes:
    """``files`` (from :func:`job_files`) as an uncompressed tar: each missing parent directory
    first (0755), then the file (0644). Names are written as their bytes, never transcoded."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        made: set[str] = set()
        for rel, data in files.items():
            parts = PurePosixPath(rel).parts
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    made.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(rel)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _write_what_fits(fd: int, data: bytes) -> int:
    """Write as much of ``data`` as the pipe ``fd`` takes now; how much that was (all of it if
    the reader is gone: there is nothing to deliver then)."""
    os.set_blocking(fd, False)
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError:
        return len(data)


class _StdoutAfterAck(CappedBuffer):
    """A warm sandbox's stdout: the bootstrap's ``expected`` bytes (its :data:`ACK`, after
    :data:`READY` if that was not read yet), then the program's output. ``on_ack()`` is called
    when the ack arrives."""

    def __init__(self, limit: int, expected: bytes, on_ack: Callable[[], None]) -> None:
        super().__init__(limit)
        self._expected = expected
        self._on_ack = on_ack
        self.acked: Optional[bool] = None  # None until all expected bytes, or another, arrived

    def feed(self, data: bytes) -> None:
        while self.acked is None and data:
            if data[:1] != self._expected[:1]:
                self.acked = False
                break
            data, self._expected = data[1:], self._expected[1:]
            if not self._expected:
                self.acked = True
                self._on_ack()
        super().feed(data)


class WarmSandbox:
    """A started sandbox whose bootstrap waits on stdin for its job.

    ``kill`` ends what runs inside (safe to call repeatedly), ``exited`` says whether bubblewrap
    has reported its init's exit, and ``release`` gives back what the sandbox holds (its uid).
    """

    def __init__(
        self,
        proc: subprocess.Popen,
        *,
        kill: Callable[[], None],
        exited: Callable[[], bool],
        release: Callable[[], None],
        memory_peak: Optional[Callable[[], Optional[int]]] = None,
    ) -> None:
        self.proc = proc
        self._memory_peak = memory_peak
        self.memory_peak_bytes: Optional[int] = None  # the job's, read when it is over
        self._kill = kill
        self._exited = exited
        self._release = release
        self.started_at = time.monotonic()
        self.set_up = False  # whether READY was read: bubblewrap has set everything up
        _SANDBOXES.add(self)

    def read_ready(self) -> bool:
        """Read :data:`READY` from stdout, which has something to read; False on anything else."""
        self.set_up = os.read(self.proc.stdout.fileno(), 1) == READY
        return self.set_up

    def alive(self) -> bool:
        """Whether bubblewrap and the bootstrap still run (a sandbox killed or failed is not)."""
        return self.proc.poll() is None and not self._exited()

    def hand_over(
        self, job: Job, files: Mapping[str, bytes], on_start: Callable[[], None] = lambda: None
    ) -> Optional[Supervised]:
        """Run ``job`` here, timed from now, and release the sandbox; ``on_start()`` is called
        once the program has started (the bootstrap's ack arrived). None if it never started
        (the sandbox died or its bootstrap failed): the job may then run elsewhere."""
        stdin = job.stdin.encode("utf-8") if isinstance(job.stdin, str) else job.stdin
        payload = job_archive(files) + (b"null\n" if stdin is None else b"pipe\n") + (stdin or b"")
        stdout = _StdoutAfterAck(job.output_limit, ACK if self.set_up else READY + ACK, on_start)
        try:
            started = time.monotonic()
            written = _write_what_fits(self.proc.stdin.fileno(), payload)
            seen = supervise(
                self.proc,
                stdin=memoryview(payload)[written:],
                output_limit=job.output_limit,
                timeout_s=job.timeout_s,
                kill=self._kill,
                started=started,
                stdout=stdout,
            )
            if self._memory_peak is not None:
                self.memory_peak_bytes = self._memory_peak()
        finally:
            self._release()
        return seen if stdout.acked or seen.timed_out else None

    def discard(self) -> None:
        """End the sandbox unused and release what it holds. Closing its stdin ends the bootstrap
        (once bubblewrap has set it up) and so bubblewrap, cleanly; what takes longer than
        :data:`KILL_GRACE_S` is killed. (Killing bubblewrap while it sets up could leave its child
        waiting forever for a signal from it.)"""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                self._kill()
                try:
                    self.proc.wait(timeout=KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    self.proc.wait()
        self.forget()

    def forget(self) -> None:
        """Close this process's ends of the sandbox's pipes and release what it holds."""
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        self._release()

    def drop_pipes_after_fork(self, devnull: int) -> None:
        """In a forked child: point this copy of the pipes at ``devnull``, with plain system calls
        (another thread of the parent may have held a lock of the stream objects)."""
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                os.dup2(devnull, stream.fileno(), inheritable=False)
            except (OSError, ValueError):  # closed already
                pass


_SANDBOXES: "weakref.WeakSet[WarmSandbox]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child drops its copies of every warm sandbox's pipes (waiting, starting or running
    a job), so that a program in the parent's sandbox still sees the end of its stdin."""
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for box in list(_SANDBOXES):
            box.drop_pipes_after_fork(devnull)
    finally:
        os.close(devnull)


os.register_at_fork(after_in_child=_after_fork_in_child)
