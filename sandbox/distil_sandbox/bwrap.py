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
  environment of HOME=/work, PATH, LANG and PWD only, in that order;
- the job's rlimits, set on bubblewrap itself and so inherited by everything inside;
- a memory cgroup of its own (:mod:`._cgroup`) that bubblewrap joins before it starts, so
  ``memory_mb`` bounds every process of the job together (RLIMIT_AS still caps each one); where
  no cgroup can be made here, only RLIMIT_AS holds and ``distil-sandbox backends`` says so;
- the directories of the toolkit's own ``distil*`` packages, where installed under ``/usr``,
  covered by an empty read-only tmpfs (a task's dataset holds its reference solutions).

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

Warm sandboxes (:mod:`._warm`, :mod:`._warmer`) take bubblewrap's start-up off a job's path:
once a shape of job (language and limits) has run, a sandbox of that shape is kept started, its
init running a bootstrap that waits on stdin for the next job's files, and the next job of that
shape takes it while a replacement starts. The job sees what a sandbox started for it would
show (only the init's command line differs); ``wall_s`` and the timeout count from the
hand-over, and ``cpu_s`` includes the bootstrap's CPU time (3-4 ms: its shell and ``tar``).
A waiting sandbox holds its per-job uid. A sandbox found dead, or whose program never
started, is discarded and the job runs in a sandbox started for it. ``DISTIL_SANDBOX_WARM=0``
or ``BwrapBackend(warm=False)`` turns warm sandboxes off.
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
from contextlib import ExitStack
from functools import partial
from dataclasses import replace
from typing import Callable, Optional

from . import _cgroup
from ._common import (
    SANDBOX_LANG,
    SANDBOX_PATH,
    WORK_DIR,
    error_result,
    make_result,
    preexec_setting,
    rlimits_for,
    supervise,
)
from ._job import job_files, language_for, validate_job
from ._hostuid import count_tasks_of, job_uid
from .conversation import Conversation, conversation_job
from .conversation import start as start_conversation
from ._isolate import package_dirs
from ._keys import has_own_session_keyring, join_new_session
from ._warm import ENV, TAR, WarmSandbox, bootstrap_argv, launcher
from ._warmer import IDLE_S, Warmer
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
# A conversation's init: the shell starts the program on the job's pipes, then points its own
# descriptors at /dev/null before it waits, so that no process inside can take the conversation's
# stdin or stdout from the init (pidfd_getfd, /proc/1/fd) while the program serves requests.
# (An asynchronous command's stdin would be /dev/null: the pipe goes to it through descriptor 3.)
CONVERSATION_INIT = (
    "/bin/sh", "-c", 'exec 3<&0; "$@" <&3 3<&- & exec </dev/null >/dev/null 2>/dev/null 3<&-; wait $!', "sh"
)
# The program's environment, in this order, and bubblewrap adds PWD (the work directory) last:
# the order in which dash, as /bin/sh, exports these, so a warm sandbox's bootstrap can exec the
# program with them as they are (see _warm.bootstrap_argv).
SANDBOX_ENV = (("HOME", WORK_DIR), ("PATH", SANDBOX_PATH), ("LANG", SANDBOX_LANG))
# Descriptors bubblewrap needs open besides the files it copies in: RLIMIT_NOFILE leaves room.
BWRAP_FDS = 16
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


def _kill_job(proc: subprocess.Popen) -> None:
    """While bubblewrap runs, kill only the program: the init reaps it (and its CPU time) and
    exits, which ends the namespace. Once bubblewrap has exited, kill whatever is left of its
    group."""
    if not _kill_inside(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _exit_reported(status_r: int) -> bool:
    """Whether bubblewrap's JSON status reports an exit code: it does only once a program that
    got as far as exec has exited, so its absence after the end means the sandbox itself failed,
    and its presence before means the sandbox has ended."""
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
    """Runs each job in a fresh bubblewrap sandbox, started for it or warm; see the module docstring.

    ``warm``: keep sandboxes started ahead of time (default: on unless ``DISTIL_SANDBOX_WARM=0``);
    ``idle_s``: how long a shape's warm sandboxes wait unused before they are discarded.
    """

    name = "bwrap"

    def __init__(
        self, executable: Optional[str] = None, *, warm: Optional[bool] = None, idle_s: float = IDLE_S
    ) -> None:
        found = shutil.which("bwrap") or ("/usr/bin/bwrap" if os.path.exists("/usr/bin/bwrap") else "")
        self.executable = executable or found
        self._probe: Optional[tuple[bool, str]] = None
        self._probe_lock = threading.Lock()
        if warm is None:
            warm = os.environ.get("DISTIL_SANDBOX_WARM", "1").strip() != "0"
        warm = warm and all(os.access(tool, os.X_OK) for tool in ("/bin/sh", TAR, ENV))
        self._warmer = Warmer(self._start_warm, idle_s=idle_s, enabled=warm)
        # Every job would inherit this process's session keyring, and could leave keys there
        # for the next job to read: where it has one of its own, each job joins a new one.
        self._new_session_keyring = has_own_session_keyring()

    @property
    def warm(self) -> bool:
        """Whether this backend keeps warm sandboxes."""
        return self._warmer.enabled

    @property
    def stats(self) -> dict[str, int]:
        """Jobs run ``warm`` and ``cold``; warm sandboxes ``started`` and ``discarded`` unused."""
        return dict(self._warmer.stats)

    def guarantees(self) -> dict[str, str]:
        """How ``memory_mb`` holds here (whole job, or per process where no cgroup can be made)."""
        ok, where = _cgroup.support()
        return {"memory": f"whole job (memory cgroup, {where})" if ok else f"per process (RLIMIT_AS): {where}",
                "namespaces": "user, pid, mount, network, ipc, uts, cgroup"}

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
        job = Job(code="echo ok > probe && cat probe", language="bash", timeout_s=10)
        try:
            result = self._run_cold(job, job_files(job))
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
        box = self._warmer.take(job) if self._warmable(job, files) else None
        if box is not None:
            seen = box.hand_over(job, files, on_start=self._warmer.wake)
            self._warmer.done(job, warm=seen is not None, failed=seen is None)
            if seen is not None:
                return replace(make_result(self.name, seen, shell_style=True), memory_peak_bytes=box.memory_peak_bytes)
        else:
            self._warmer.done(job, warm=False)
        return self._run_cold(job, files)

    def converse(self, job: Job) -> Conversation:
        """Start ``job`` in a sandbox of its own whose stdin and stdout are a
        :class:`~.conversation.Conversation` (see there); ``job.stdin`` must be None."""
        files = conversation_job(job)
        return start_conversation(lambda talk: self._run_cold(job, files, talk), job.output_limit, self.name)

    def keep_warm(self, job: Job, count: int = 1, wait_s: float = 0.0) -> bool:
        """Keep ``count`` warm sandboxes of ``job``'s shape (its language and limits) ready, and
        wait up to ``wait_s`` for them; True once they are. False when warm sandboxes are off."""
        validate_job(job)
        if not self.executable or not self._warmable(job, job_files(job)):
            return False
        return self._warmer.keep_warm(job, count, wait_s)

    def close(self) -> None:
        """Kill the warm sandboxes and stop warming; later jobs run in sandboxes started for them."""
        self._warmer.close()

    @staticmethod
    def _warmable(job: Job, files: dict[str, bytes]) -> bool:
        """Whether ``job`` may run warm: its bootstrap forks ``tar`` (a process more than the
        init), and its RLIMIT_NOFILE must not depend on how many files a cold start copies in."""
        return job.max_processes >= 2 and job.max_open_files >= len(files) + len(ETC_FILES) + BWRAP_FDS

    def _run_cold(self, job: Job, files: dict[str, bytes], talk: Optional[Conversation] = None) -> ExecResult:
        """Run ``job`` in a sandbox started for it (its stdin and stdout ``talk`` when given)."""
        status_r, status_w = os.pipe()
        cgroup = None
        try:
            with job_uid(contained=True) as owner, _cgroup.job_cgroup(job.memory_mb) as cgroup:
                started = time.monotonic()
                try:
                    proc = self._spawn(job, status_w, owner, files, cgroup, piped=talk is not None)
                except (OSError, subprocess.SubprocessError) as exc:
                    return error_result(self.name, f"could not start bwrap: {exc}")
                finally:
                    os.close(status_w)  # bubblewrap holds its copy: EOF once it has exited
                stdin = job.stdin.encode("utf-8") if isinstance(job.stdin, str) else job.stdin
                if talk is not None:
                    talk.attach(partial(_kill_job, proc))
                seen = supervise(
                    proc,
                    stdin=stdin,
                    output_limit=job.output_limit,
                    timeout_s=job.timeout_s,
                    kill=partial(_kill_job, proc),
                    started=started,
                    stdout=talk.output() if talk is not None else None,
                    conversation=talk,
                )
                program_ran = _exit_reported(status_r)
                peak = cgroup.peak_bytes() if cgroup is not None else None
        finally:
            os.close(status_r)
        error = None
        if not seen.timed_out and not program_ran:
            error = "bwrap could not set up the sandbox: " + (seen.stderr.text.strip() or "no reason given")
        return replace(make_result(self.name, seen, shell_style=True, error=error), memory_peak_bytes=peak)

    def _start_warm(self, job: Job) -> WarmSandbox:
        """Start a sandbox of ``job``'s shape whose bootstrap waits for a job (see :mod:`._warm`)."""
        with ExitStack() as holding:
            status_r, status_w = os.pipe()
            holding.callback(os.close, status_r)
            try:
                owner = holding.enter_context(job_uid(contained=True))
                cgroup = holding.enter_context(_cgroup.job_cgroup(job.memory_mb))
                proc = self._spawn(job, status_w, owner, None, cgroup)
            finally:
                os.close(status_w)  # bubblewrap holds its copy
            # the sandbox holds its uid and cgroup until it is used or discarded
            release = holding.pop_all().close
        return WarmSandbox(
            proc, kill=partial(_kill_job, proc), exited=partial(_exit_reported, status_r), release=release,
            memory_peak=cgroup.peak_bytes if cgroup is not None else None,
        )

    def _spawn(
        self,
        job: Job,
        status_w: int,
        owner: Optional[tuple[int, int]],
        files: Optional[dict[str, bytes]],
        cgroup: Optional[_cgroup.JobCgroup] = None,
        piped: bool = False,
    ) -> subprocess.Popen:
        """Start bubblewrap for ``job``, in ``cgroup`` when given. The job's ``files`` travel as
        memfds it copies in; without them, the sandbox is warm: its bootstrap waits for them on
        stdin, always a pipe (``piped``: a pipe in any case)."""
        fds: list[int] = []
        try:
            file_fds = {rel: _remember(fds, _memfd("job-file", data)) for rel, data in (files or {}).items()}
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
            room = len(fds) + BWRAP_FDS
            limits = [
                (res, max(soft, room), max(hard, room)) if res == resource.RLIMIT_NOFILE else (res, soft, hard)
                for res, soft, hard in rlimits_for(job, nproc=nproc)
            ]
            argv = language_for(job.language).argv
            program = argv if files is not None else bootstrap_argv(argv, (*SANDBOX_ENV, ("PWD", WORK_DIR)))
            command = self._arguments(job, status_w, file_fds, etc_fds, program, conversation=piped)
            prefix = launcher(limits, owner) if files is None and not self._new_session_keyring else None
            if prefix:
                if cgroup is not None:  # the shell joins the cgroup, then execs the launcher
                    prefix = ["/bin/sh", "-c", 'printf 0 > "$0" && exec "$@"', cgroup.procs_path, *prefix]
                command, started_as = prefix + command, {}
            else:
                started_as = {"preexec_fn": _joining(cgroup, preexec_setting(limits), self._new_session_keyring),
                              **identity}
            return subprocess.Popen(
                command,
                env={},
                cwd="/",
                stdin=subprocess.DEVNULL if files is not None and job.stdin is None and not piped else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                pass_fds=[status_w, *fds],
                **started_as,
            )
        finally:
            for fd in fds:
                os.close(fd)

    def _arguments(
        self,
        job: Job,
        status_fd: int,
        file_fds: dict[str, int],
        etc_fds: dict[str, int],
        program: tuple[str, ...],
        conversation: bool = False,
    ) -> list[str]:
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
            *(arg for name, value in SANDBOX_ENV for arg in ("--setenv", name, value)),
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
        for path in _hidden_under_usr():
            args += ["--perms", "0555", "--tmpfs", path, "--remount-ro", path]
        init = CONVERSATION_INIT if conversation else INIT
        args += ["--remount-ro", "/", "--chdir", WORK_DIR, "--", *init, *program]
        return args


def _joining(
    cgroup: Optional[_cgroup.JobCgroup], then: Callable[[], None], new_session_keyring: bool = False
) -> Callable[[], None]:
    """A ``preexec_fn`` that joins ``cgroup`` (when there is one) and, if asked, a new session
    keyring (after the job's uid is taken: it is the job's, :mod:`._keys`), then calls ``then``."""
    if cgroup is None and not new_session_keyring:
        return then

    def join_then() -> None:
        if cgroup is not None:
            cgroup.join()
        if new_session_keyring:
            join_new_session()
        then()

    return join_then


_HIDDEN: Optional[list[str]] = None


def _hidden_under_usr() -> list[str]:
    """The toolkit's package directories that the read-only ``/usr`` would show (found once)."""
    global _HIDDEN
    if _HIDDEN is None:
        _HIDDEN = sorted(path for path in package_dirs() if path.startswith("/usr/"))
    return _HIDDEN


BACKEND_CLASS = BwrapBackend
