"""The ``bwrap`` backend: bubblewrap namespaces plus resource limits, the default on Linux.

Inside the sandbox the program sees:

- every namespace new (user, pid, network, ipc, uts, cgroup): no network but its own
  loopback, no host process, hostname ``sandbox``; it cannot create user namespaces itself;
- ``/usr`` read-only (with the ``/bin``, ``/lib``... links or directories of the host), a
  minimal ``/etc`` holding only ``passwd`` and ``group``, its own ``/proc``, a minimal ``/dev``,
  and a read-only root: nothing else of the host's filesystem;
- private, size-capped tmpfs mounts for ``/work`` (the job's files, the working directory),
  ``/tmp`` and ``/dev/shm`` — the only writable places, all gone when it ends;
- uid/gid 65534, no capabilities, a new session (no controlling terminal), and an
  environment of PATH, HOME=/work and LANG only;
- the job's rlimits, set on bubblewrap itself and so inherited by everything inside.

bubblewrap starts with an empty environment (its own is readable from inside through
``/proc``) and dies with its parent. Started by root, it runs under a per-job host uid (see
:mod:`._hostuid`): as root, the sandbox user would map to host root and own the host's
device nodes bound into ``/dev``.

The namespace's init (pid 1) is coreutils' ``timeout 0``, which runs the program as its only
child (so the program behaves as under any shell: signals it sends itself work), waits for
it and exits with its status. bubblewrap waits for the init directly, so the program's CPU
time (and that of the children it waited for) reaches :attr:`ExecResult.cpu_s`. When the
program ends — by itself, or killed at the timeout — the init exits and the kernel kills
every process left in the namespace.

Exit statuses come through bubblewrap as shells report them: a program that exits with
128 + n is reported as killed by signal n.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from typing import Optional

from ._common import (
    SANDBOX_LANG,
    SANDBOX_PATH,
    WORK_DIR,
    error_result,
    job_files,
    language_for,
    make_result,
    preexec_setting,
    rlimits_for,
    supervise,
    validate_job,
)
from ._hostuid import count_tasks_of, job_uid
from .result import ExecResult, Job

SANDBOX_UID = 65534
SHM_MB = 16
ETC_FILES = {
    "/etc/passwd": f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:{WORK_DIR}:/bin/sh\n",
    "/etc/group": f"sandbox:x:{SANDBOX_UID}:\n",
}
# Top-level host paths that merged-/usr systems make links into /usr, others directories.
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The namespace's init (pid 1): it runs the program as its only child, waits for it, and exits
# with its status (128 + n for death by signal n), printing nothing. A duration of 0 never
# times out; the wall-clock limit is enforced from outside.
INIT = ("/usr/bin/timeout", "0")
INSTALL_HINT = "bwrap not found: install bubblewrap (apt-get install bubblewrap)"


def _system_paths() -> list[str]:
    """Arguments that show /usr read-only and the top-level links (or dirs) that lead into it."""
    args = ["--ro-bind", "/usr", "/usr"]
    for path in SYSTEM_LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _remember(fds: list[int], fd: int) -> int:
    fds.append(fd)
    return fd


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(child) for child in fh.read().split()]
    except (OSError, ValueError):
        return []


def _kill_child(parent: int, child: int) -> bool:
    """SIGKILL ``child`` if it is still ``parent``'s child. The pid is held through a pidfd
    and its parent checked after the pidfd is open, so a recycled pid is never signalled."""
    try:
        pidfd = os.pidfd_open(child)
    except OSError:
        return False
    try:
        with open(f"/proc/{child}/stat", "rb") as fh:
            if int(fh.read().rsplit(b")", 1)[1].split()[1]) != parent:
                return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except (OSError, ValueError, IndexError):
        return False
    finally:
        os.close(pidfd)


def _kill_inside(bwrap_pid: int) -> bool:
    """SIGKILL the program (or, failing that, the namespace's init); True if one was signalled.

    Killing the program lets the init reap it and exit, and bubblewrap reap the init, so the
    program's CPU time is counted; the init's exit then kills everything else inside.
    """
    for init in _children(bwrap_pid):
        if any(_kill_child(init, program) for program in _children(init)) or _kill_child(bwrap_pid, init):
            return True
    return False


def _program_started(status_r: int) -> bool:
    """Whether bubblewrap's JSON status reports an exit code: it does only for a program that
    got as far as exec, so its absence means the sandbox itself failed."""
    os.set_blocking(status_r, False)
    data = b""
    try:
        while chunk := os.read(status_r, 4096):
            data += chunk
    except BlockingIOError:
        pass
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            if "exit-code" in json.loads(line):
                return True
        except ValueError:
            continue
    return False


class BwrapBackend:
    """Runs each job in a fresh bubblewrap sandbox; see the module docstring."""

    name = "bwrap"

    def __init__(self, executable: Optional[str] = None) -> None:
        found = shutil.which("bwrap") or ("/usr/bin/bwrap" if os.path.exists("/usr/bin/bwrap") else "")
        self.executable = executable or found
        self._probe: Optional[tuple[bool, str]] = None
        self._probe_lock = threading.Lock()

    def available(self) -> tuple[bool, str]:
        """Whether a trivial sandbox starts here (checked once, then remembered)."""
        with self._probe_lock:
            if self._probe is None:
                self._probe = self._run_probe()
            return self._probe

    def _run_probe(self) -> tuple[bool, str]:
        if not self.executable or not os.access(self.executable, os.X_OK):
            return False, INSTALL_HINT
        if not os.access(INIT[0], os.X_OK):
            return False, f"{INIT[0]} (GNU coreutils) not found: the bwrap backend runs programs under it"
        if not hasattr(os, "memfd_create") or not hasattr(os, "pidfd_open"):
            return False, "the bwrap backend needs Linux >= 5.3 and Python >= 3.9 (memfd_create, pidfd_open)"
        try:
            result = self.run(Job(code="echo ok > probe && cat probe", language="bash", timeout_s=10))
        except Exception as exc:  # the probe reports; it never raises
            return False, f"bwrap could not start a sandbox: {type(exc).__name__}: {exc}"
        if result.ok and result.stdout == "ok\n":
            return True, ""
        reason = result.error or f"a trivial job failed: {result.stderr.strip() or result.exit_code}"
        if any(word in reason for word in ("namespace", "uid map", "Operation not permitted")):
            reason += (
                " (unprivileged user namespaces may be off: see sysctl user.max_user_namespaces,"
                " kernel.unprivileged_userns_clone or kernel.apparmor_restrict_unprivileged_userns)"
            )
        return False, reason

    def run(self, job: Job) -> ExecResult:
        validate_job(job)
        files = job_files(job)
        if not self.executable:
            return error_result(self.name, INSTALL_HINT)
        status_r, status_w = os.pipe()
        try:
            with job_uid(contained=True) as owner:
                started = time.monotonic()
                try:
                    proc = self._start(job, files, status_w, owner)
                except (OSError, subprocess.SubprocessError) as exc:
                    return error_result(self.name, f"could not start bwrap: {exc}")
                finally:
                    os.close(status_w)  # bubblewrap holds its copy: EOF once it has exited

                def kill() -> None:
                    # While bubblewrap runs, kill only the program: the init reaps it (and its
                    # CPU time) and exits, which ends the namespace. Once bubblewrap has
                    # exited, kill whatever is left of its group.
                    if not _kill_inside(proc.pid):
                        try:
                            os.killpg(proc.pid, signal.SIGKILL)
                        except (ProcessLookupError, PermissionError):
                            pass

                stdin = job.stdin.encode("utf-8") if isinstance(job.stdin, str) else job.stdin
                seen = supervise(
                    proc,
                    stdin=stdin,
                    output_limit=job.output_limit,
                    timeout_s=job.timeout_s,
                    kill=kill,
                    started=started,
                )
                program_ran = _program_started(status_r)
        finally:
            os.close(status_r)
        error = None
        if not seen.timed_out and not program_ran:
            error = "bwrap could not set up the sandbox: " + (seen.stderr.text.strip() or "no reason given")
        return make_result(self.name, seen, shell_style=True, error=error)

    def _start(
        self, job: Job, files: dict[str, bytes], status_w: int, owner: Optional[tuple[int, int]]
    ) -> subprocess.Popen:
        """Start bubblewrap for ``job``; the job's files travel as memfds it copies in."""
        fds: list[int] = []
        try:
            file_fds = {rel: _remember(fds, _memfd("job-file", data)) for rel, data in files.items()}
            etc_fds = {path: _remember(fds, _memfd("etc", text.encode())) for path, text in ETC_FILES.items()}
            # RLIMIT_NPROC is also checked against all tasks of the uid bubblewrap runs as:
            # with a uid of its own, those are the program's plus bubblewrap and the init;
            # with the caller's uid, the limit must leave room for the caller's other tasks.
            if owner:
                nproc = job.max_processes + 2
                identity = {"user": owner[0], "group": owner[1], "extra_groups": []}
            else:
                nproc = count_tasks_of(os.getuid()) + job.max_processes + 2
                identity = {}
            # bubblewrap itself holds the job files open until it has copied them.
            room = len(fds) + 16
            limits = [
                (res, max(soft, room), max(hard, room)) if res == resource.RLIMIT_NOFILE else (res, soft, hard)
                for res, soft, hard in rlimits_for(job, nproc=nproc)
            ]
            return subprocess.Popen(
                self._arguments(job, status_w, file_fds, etc_fds),
                env={},
                cwd="/",
                stdin=subprocess.DEVNULL if job.stdin is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                pass_fds=[status_w, *fds],
                preexec_fn=preexec_setting(limits),
                **identity,
            )
        finally:
            for fd in fds:
                os.close(fd)

    def _arguments(self, job: Job, status_fd: int, file_fds: dict[str, int], etc_fds: dict[str, int]) -> list[str]:
        work_bytes = str(job.work_mb << 20)
        args = [
            self.executable,
            "--json-status-fd", str(status_fd),
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--as-pid-1",
            "--cap-drop", "ALL",
            "--hostname", "sandbox",
            "--uid", str(SANDBOX_UID),
            "--gid", str(SANDBOX_UID),
            "--clearenv",
            "--setenv", "PATH", SANDBOX_PATH,
            "--setenv", "HOME", WORK_DIR,
            "--setenv", "LANG", SANDBOX_LANG,
            *_system_paths(),
            "--proc", "/proc",
            "--dev", "/dev",
            "--perms", "1777", "--size", str(min(job.work_mb, SHM_MB) << 20), "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev",
            "--perms", "1777", "--size", work_bytes, "--tmpfs", "/tmp",
            "--perms", "0755", "--size", work_bytes, "--tmpfs", WORK_DIR,
        ]
        for path, fd in etc_fds.items():
            args += ["--perms", "0644", "--ro-bind-data", str(fd), path]
        for rel, fd in file_fds.items():
            args += ["--perms", "0644", "--file", str(fd), f"{WORK_DIR}/{rel}"]
        args += ["--remount-ro", "/", "--chdir", WORK_DIR, "--", *INIT, *language_for(job.language).argv]
        return args


BACKEND_CLASS = BwrapBackend
