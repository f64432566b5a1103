"""Backend-neutral machinery: rlimits, pipes, results (what a job may be: :mod:`._job`).

Every backend builds on these pieces, so their behaviour stays the same where it can:

- :func:`rlimits_for` / :func:`preexec_setting` — resource limits for a ``preexec_fn``
  (:func:`within_hard_limits`: as far as this process may set them);
- :class:`CappedBuffer` / :func:`supervise` — capped, never-blocking output collection with a
  wall-clock deadline and a kill callback;
- :func:`split_exit_code`, :func:`signal_name`, :func:`make_result` — an :class:`ExecResult`.
"""

from __future__ import annotations

import errno
import math
import os
import resource
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from .result import ExecResult, Job

if TYPE_CHECKING:
    from .conversation import Conversation

WORK_DIR = "/work"  # where backends with their own filesystem put the job's files
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
SANDBOX_LANG = "C.UTF-8"
KILL_GRACE_S = 1.0  # how long output may keep flowing after the job is killed or has exited


# ---------------------------------------------------------------------------------- limits


def rlimits_for(job: Job, *, nproc: Optional[int] = None) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) triples for ``job``: CPU, address space, processes, file size,
    open files, no core dumps and no POSIX message queues. ``nproc`` overrides RLIMIT_NPROC (it
    counts every task of the real uid, threads included, so callers sharing a uid with other
    work raise it).

    Why no message queues (``mq_open`` fails with EMFILE): a queue outlives the process that
    made it, and nothing else a job leaves is as hard to see. bwrap mounts no ``/dev/mqueue``,
    the process backend's own IPC namespace has none mounted, and without root its jobs share
    the host's: a queue one job left could carry data to the next one under the same uid, or
    in the same sandbox (code_exec grades several rollouts in one), unseen."""
    cpu = math.ceil(job.timeout_s) + 1
    procs = job.max_processes if nproc is None else nproc
    return [
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU first, SIGKILL a second later
        (resource.RLIMIT_AS, job.memory_mb << 20, job.memory_mb << 20),
        (resource.RLIMIT_NPROC, procs, procs),
        (resource.RLIMIT_FSIZE, job.max_file_mb << 20, job.max_file_mb << 20),
        (resource.RLIMIT_NOFILE, job.max_open_files, job.max_open_files),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_MSGQUEUE, 0, 0),
    ]


def within_hard_limits(limits: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """``limits`` lowered where they would raise this process's hard limits."""
    out = []
    for res, soft, hard in limits:
        _, current_hard = resource.getrlimit(res)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        out.append((res, soft, hard))
    return out


def preexec_setting(limits: list[tuple[int, int, int]]) -> Callable[[], None]:
    """A ``preexec_fn`` that applies ``limits``; it only makes getrlimit and setrlimit calls, so
    it is as safe as a ``preexec_fn`` can be in a threaded parent. Limits never raise a hard
    limit (:func:`within_hard_limits`)."""

    def apply() -> None:
        for res, soft, hard in within_hard_limits(limits):
            resource.setrlimit(res, (soft, hard))

    return apply


# ---------------------------------------------------------------------------------- output


class CappedBuffer:
    """Keeps the first ``limit`` bytes fed to it and notes whether anything was dropped."""

    def __init__(self, limit: int):
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.truncated = False

    def feed(self, data: bytes) -> None:
        room = self.limit - self._size
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        if data:
            self._chunks.append(data)
            self._size += len(data)

    @property
    def data(self) -> bytes:
        return b"".join(self._chunks)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass
class Supervised:
    """What :func:`supervise` saw: the raw wait status, resource usage and the output."""

    wait_status: Optional[int]  # None only if the process could not be reaped
    timed_out: bool
    wall_s: float
    cpu_s: float
    stdout: CappedBuffer
    stderr: CappedBuffer


def _exited_unreaped(pid: int) -> bool:
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def supervise(
    proc: subprocess.Popen,
    *,
    stdin: Optional[bytes],
    output_limit: int,
    timeout_s: float,
    kill: Callable[[], None],
    started: Optional[float] = None,
    stdout: Optional[CappedBuffer] = None,
    conversation: Optional["Conversation"] = None,
) -> Supervised:
    """Feed ``stdin``, collect capped stdout/stderr and reap ``proc``, within ``timeout_s``.

    ``proc`` must have been started with ``stdout=PIPE, stderr=PIPE``, ``stdin=PIPE`` when
    ``stdin`` is not None, and ``start_new_session=True``. Output past ``output_limit`` is read
    and dropped so the job never blocks on a full pipe. ``kill()`` must end every process of
    the job and be safe to call repeatedly; it is called at the deadline and again once the
    main process has exited but before it is reaped (so its pid, and its process group id,
    cannot have been reused). If the process survives ``kill()`` for
    :data:`KILL_GRACE_S`, its process group is killed. Output still flowing that long after
    exit is abandoned. ``started`` is the ``time.monotonic()`` taken just before the spawn (or
    the hand-over of the job); ``stdout`` is a buffer to collect stdout into, a
    :class:`CappedBuffer` of ``output_limit`` bytes by default. With a ``conversation``
    (:mod:`.conversation`), stdin stays open after ``stdin``: what the conversation queues is
    written as it comes, until it closes its input (``proc`` needs ``stdin=PIPE``).
    """
    started = time.monotonic() if started is None else started
    deadline = started + timeout_s
    out = CappedBuffer(output_limit) if stdout is None else stdout
    err = CappedBuffer(output_limit)
    sel = selectors.DefaultSelector()
    readers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    for fd in readers:
        sel.register(fd, selectors.EVENT_READ, "out")
    pending = memoryview(stdin or b"")
    writing = False
    if proc.stdin is not None:
        if pending or conversation is not None:
            os.set_blocking(proc.stdin.fileno(), False)
        if pending:
            sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "in")
            writing = True
        elif conversation is None:
            proc.stdin.close()
    if conversation is not None and proc.stdin is not None:
        sel.register(conversation.wake_fd, selectors.EVENT_READ, "wake")
    try:
        pidfd = os.pidfd_open(proc.pid)
        sel.register(pidfd, selectors.EVENT_READ, "exit")
    except (AttributeError, OSError):
        pidfd = None  # older kernels: poll for the exit instead

    timed_out = False
    exited_at: Optional[float] = None
    killed_at: Optional[float] = None
    status: Optional[int] = None
    cpu_s = 0.0
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and not timed_out and now >= deadline:
                timed_out, killed_at = True, now
                kill()
            if exited_at is None and killed_at is not None and now >= killed_at + KILL_GRACE_S:
                _killpg(proc.pid)
                killed_at = now  # and keep waiting: SIGKILL cannot be ignored
            if exited_at is None and _exited_unreaped(proc.pid):
                kill()
                try:
                    _, status, usage = os.wait4(proc.pid, 0)
                    cpu_s = usage.ru_utime + usage.ru_stime
                    proc.returncode = os.waitstatus_to_exitcode(status)
                except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): status unknown
                    proc.returncode = -signal.SIGKILL
                exited_at = time.monotonic()
                if pidfd is not None:
                    sel.unregister(pidfd)
            if exited_at is not None and not readers:
                break
            if exited_at is not None and time.monotonic() >= exited_at + KILL_GRACE_S:
                break
            if exited_at is not None:
                wait = exited_at + KILL_GRACE_S - now
            elif killed_at is not None:
                wait = killed_at + KILL_GRACE_S - now
            else:
                wait = deadline - now
            if pidfd is None and exited_at is None:
                wait = min(wait, 0.02)
            for key, _ in sel.select(max(wait, 0.0)):
                if key.data == "out":
                    try:
                        chunk = os.read(key.fd, 1 << 16)
                    except OSError as exc:
                        if exc.errno == errno.EAGAIN:
                            continue
                        chunk = b""
                    if chunk:
                        readers[key.fd].feed(chunk)
                    else:
                        sel.unregister(key.fd)
                        del readers[key.fd]
                elif key.data == "in":
                    try:
                        pending = pending[os.write(key.fd, pending[: 1 << 16]):]
                    except BlockingIOError:
                        continue
                    except OSError:  # the program closed its stdin
                        pending = pending[:0]
                        conversation = _hang_up(sel, conversation)
                    if not pending:
                        sel.unregister(key.fd)
                        writing = False
                        if conversation is None:
                            _close_quietly(proc.stdin)
                elif key.data == "wake" and conversation is not None:
                    more, closing = conversation.take_input()
                    pending = memoryview(bytes(pending) + more)
                    if pending and not writing:
                        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "in")
                        writing = True
                    if closing:
                        conversation = _hang_up(sel, conversation)
                        if not pending:
                            _close_quietly(proc.stdin)
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            _close_quietly(stream)
        if exited_at is None:  # an exception above: never leave the job behind
            kill()
            _killpg(proc.pid)
            proc.wait()
    end = exited_at if exited_at is not None else time.monotonic()
    return Supervised(status, timed_out, end - started, cpu_s, out, err)


def _hang_up(sel: selectors.BaseSelector, conversation: Optional["Conversation"]) -> None:
    """Stop taking input from ``conversation``: its input closed, or the program's stdin did."""
    if conversation is not None:
        conversation.stop_input()
        try:
            sel.unregister(conversation.wake_fd)
        except (KeyError, ValueError):
            pass
    return None


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _close_quietly(stream) -> None:
    if stream is None:
        return
    try:
        stream.close()
    except OSError:
        pass


# ---------------------------------------------------------------------------------- results


def signal_name(number: int) -> str:
    """"SIGSEGV" for 11; real-time signals as "SIGRTMIN+n"; unknown numbers as "SIG<n>"."""
    try:
        return signal.Signals(number).name
    except ValueError:
        pass
    if signal.SIGRTMIN < number < signal.SIGRTMAX:
        return f"SIGRTMIN+{number - signal.SIGRTMIN}"
    return f"SIG{number}"


def split_exit_code(code: int, *, shell_style: bool = False) -> tuple[Optional[int], Optional[str]]:
    """(exit_code, signal name) from a ``Popen.returncode``-style number (negative: signal).

    ``shell_style``: the code came through a runner that reports death by signal n as 128 + n
    (bubblewrap, container engines); such codes are read as signals. A program that exits
    with 128 + n itself is then reported as killed by signal n.
    """
    if code < 0:
        return None, signal_name(-code)
    if shell_style and 128 < code <= 128 + signal.SIGRTMAX:
        return None, signal_name(code - 128)
    return code, None


def make_result(
    backend: str,
    supervised: Supervised,
    *,
    shell_style: bool = False,
    error: Optional[str] = None,
) -> ExecResult:
    """The :class:`ExecResult` for what :func:`supervise` saw. A timed-out job is reported as
    killed by SIGKILL, whatever status its runner passed on."""
    if supervised.wait_status is None:
        exit_code, sig = None, None
    else:
        exit_code, sig = split_exit_code(os.waitstatus_to_exitcode(supervised.wait_status), shell_style=shell_style)
    if supervised.timed_out:
        exit_code, sig = None, "SIGKILL"
    return ExecResult(
        exit_code=exit_code,
        signal=sig,
        timed_out=supervised.timed_out,
        stdout=supervised.stdout.text,
        stderr=supervised.stderr.text,
        stdout_truncated=supervised.stdout.truncated,
        stderr_truncated=supervised.stderr.truncated,
        wall_s=round(supervised.wall_s, 4),
        cpu_s=round(supervised.cpu_s, 4),
        backend=backend,
        stdout_bytes=supervised.stdout.data,
        stderr_bytes=supervised.stderr.data,
        error=error,
    )


def error_result(backend: str, message: str, *, wall_s: float = 0.0) -> ExecResult:
    """An :class:`ExecResult` for a sandbox that failed before or around the program."""
    return ExecResult(
        exit_code=None,
        signal=None,
        timed_out=False,
        stdout="",
        stderr="",
        stdout_truncated=False,
        stderr_truncated=False,
        wall_s=round(wall_s, 4),
        cpu_s=0.0,
        backend=backend,
        error=message,
    )
