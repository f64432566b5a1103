"""The ``process`` backend: the weakest isolation, for machines with neither bwrap nor docker.

The program runs as an ordinary child process with:

- resource limits (CPU time, address space, processes, file size, open files, no core);
- its own session and process group, killed on timeout and again once it has exited;
- an empty environment except PATH, HOME (the work directory) and LANG;
- a fresh work directory under the system temp directory, removed afterwards.

Started by root, each job also gets a host uid of its own (see :mod:`._hostuid`): the
program cannot touch root's files or processes, RLIMIT_NPROC counts only the job, every
process left with that uid afterwards is killed (so escapees that double-fork and
``setsid()`` do not survive), the files it left at the top of /tmp, /var/tmp, /dev/shm
and /run/lock and in the world-writable directories below them are removed, and its kernel
keyrings are invalidated (:mod:`._keys`). Started by root, it also gets (:mod:`._isolate`):

- a memory cgroup of its own (:mod:`._cgroup`), so ``memory_mb`` bounds all its processes
  together, not each one; where none can be made, only RLIMIT_AS per process holds;
- a new IPC namespace: System V shared memory, semaphores and message queues and POSIX message
  queues are its own and vanish with it; and a private tmpfs ``/dev/shm`` (POSIX shared memory);
- a new mount namespace in which every top-level directory but the system's (``/usr``,
  ``/bin``, ``/lib*``, ``/sbin``, ``/etc``, ``/dev``, ``/proc``, ``/sys``, ``/tmp``) is an empty
  read-only tmpfs, and so are the directories of the installed ``distil*`` packages (a task's
  dataset, with its reference solutions, must not be readable by the code being graded).

What it cannot do, root or not: keep the program off the network, hide other processes
(``/proc``) or the world-readable files in the system directories it sees, or cap the total
size of what it writes to its work directory (only each file's size). Not started by root, the
program runs as the calling user with none of the above but the rlimits, so it can also read and
write everything that user can, signal that user's processes, and leave escapees running;
RLIMIT_NPROC then has to leave room for the user's other processes. Use ``bwrap`` or
``docker`` for code you do not trust.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Iterator, Optional

from ._cgroup import JobCgroup, job_cgroup
from .conversation import Conversation, conversation_job
from .conversation import start as start_conversation
from ._common import (
    SANDBOX_LANG,
    SANDBOX_PATH,
    error_result,
    make_result,
    preexec_setting,
    rlimits_for,
    supervise,
    within_hard_limits,
)
from ._job import job_files, language_for, validate_job, write_files
from ._hostuid import count_tasks_of, job_uid, jobs_dir, kill_uid
from ._isolate import isolation
from ._rmtree import remove_path
from .result import ExecResult, Job

SHM_MB = 16  # the private /dev/shm's size cap (at most the work directory's)


class ProcessBackend:
    """Runs jobs as limited child processes; see the module docstring for what that leaves open."""

    name = "process"

    def __init__(self) -> None:
        self._probe: Optional[tuple[bool, str]] = None
        self._probe_lock = threading.Lock()

    def guarantees(self) -> dict[str, str]:
        """What holds for jobs here beyond the rlimits, and where it does not, why."""
        if os.geteuid() != 0:
            reason = "not started by root: the job runs as the caller, with rlimits only"
            return {"memory": "per process (RLIMIT_AS): " + reason, "namespaces": "none: " + reason}
        plan = isolation()
        return {
            "memory": plan.memory,
            "namespaces": "ipc, mount (system directories only)" if plan.namespaces else "none: " + plan.why_not,
        }

    def available(self) -> tuple[bool, str]:
        with self._probe_lock:
            if self._probe is None:
                self._probe = self._run_probe()
            return self._probe

    def _run_probe(self) -> tuple[bool, str]:
        if os.name != "posix" or not os.path.isdir("/proc"):
            return False, "the process backend needs Linux (/proc, rlimits, sessions)"
        try:
            result = self.run(Job(code="echo ok", language="bash", timeout_s=10))
        except Exception as exc:  # the probe reports; it never raises
            return False, f"a trivial job could not start: {exc}"
        if result.error or result.stdout != "ok\n":
            return False, f"a trivial job failed: {result.error or result.stderr.strip() or result.exit_code}"
        return True, ""

    def run(self, job: Job) -> ExecResult:
        validate_job(job)
        return self._run(job, job_files(job), None)

    def converse(self, job: Job) -> Conversation:
        """Start ``job`` with a :class:`~.conversation.Conversation` for its stdin and stdout (see
        there); ``job.stdin`` must be None."""
        files = conversation_job(job)
        return start_conversation(lambda talk: self._run(job, files, talk), job.output_limit, self.name)

    def _run(self, job: Job, files: dict[str, bytes], talk: Optional[Conversation]) -> ExecResult:
        argv = list(language_for(job.language).argv)
        with job_uid() as owner:
            # Under its own uid the program must be able to reach its work directory.
            work = tempfile.mkdtemp(prefix="distil-sandbox-", dir=jobs_dir() if owner else None)
            try:
                if owner:
                    os.chown(work, *owner)
                write_files(work, files, owner=owner)
                return self._run_in(job, argv, work, owner, talk)
            finally:
                remove_path(work)  # iteratively: the job may have nested directories thousands deep

    def _run_in(
        self, job: Job, argv: list[str], work: str, owner: Optional[tuple[int, int]], talk: Optional[Conversation]
    ) -> ExecResult:
        if not owner:  # RLIMIT_NPROC counts all of this user's tasks: leave room for them
            nproc = count_tasks_of(os.getuid()) + job.max_processes
            return self._supervise(job, argv, work, None, preexec_setting(rlimits_for(job, nproc=nproc)), None, talk)
        plan = isolation()
        with job_cgroup(job.memory_mb) if plan.cgroups else _nothing() as cgroup:
            limits = within_hard_limits(rlimits_for(job, nproc=job.max_processes))
            enter = plan.entering(owner, limits, cgroup, shm_bytes=min(job.work_mb, SHM_MB) << 20)
            return self._supervise(job, argv, work, owner, enter, cgroup, talk)

    def _supervise(
        self,
        job: Job,
        argv: list[str],
        work: str,
        owner: Optional[tuple[int, int]],
        preexec: Callable[[], None],
        cgroup: Optional[JobCgroup],
        talk: Optional[Conversation] = None,
    ) -> ExecResult:
        """Start the program (``preexec`` sets its limits, namespaces and uid) and supervise it
        (its stdin and stdout ``talk`` when given)."""
        stdin = job.stdin.encode("utf-8") if isinstance(job.stdin, str) else job.stdin
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=work,
                env={"PATH": SANDBOX_PATH, "HOME": work, "LANG": SANDBOX_LANG},
                stdin=subprocess.DEVNULL if stdin is None and talk is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                preexec_fn=preexec,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return error_result(self.name, f"could not start {argv[0]}: {exc}")

        def kill() -> None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if owner:
                kill_uid(*owner)

        if talk is not None:
            talk.attach(kill)
        seen = supervise(
            proc, stdin=stdin, output_limit=job.output_limit, timeout_s=job.timeout_s, kill=kill, started=started,
            stdout=talk.output() if talk is not None else None, conversation=talk,
        )
        result = make_result(self.name, seen)
        if cgroup is not None:
            result = replace(result, memory_peak_bytes=cgroup.peak_bytes())
        return result


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


BACKEND_CLASS = ProcessBackend
