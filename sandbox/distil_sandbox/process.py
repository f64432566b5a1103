"""The ``process`` backend: the weakest isolation, for machines with neither bwrap nor docker.

The program runs as an ordinary child process with:

- resource limits (CPU time, address space, processes, file size, open files, no core);
- its own session and process group, killed on timeout and again once it has exited;
- an empty environment except PATH, HOME (the work directory) and LANG;
- a fresh work directory under the system temp directory, removed afterwards.

Started by root, each job also gets a host uid of its own (see :mod:`._hostuid`): the
program cannot touch root's files or processes, RLIMIT_NPROC counts only the job, every
process left with that uid afterwards is killed (so escapees that double-fork and
``setsid()`` do not survive) and the files it left at the top of /tmp, /var/tmp, /dev/shm
and /run/lock are removed.

What it cannot do, root or not: keep the program off the network, hide world-readable files
or other processes (``/proc``), or cap the total size of what it writes (only each file's
size). Not started by root, the program runs as the calling user, so it can also read and
write everything that user can, signal that user's processes, and leave escapees running;
RLIMIT_NPROC then has to leave room for the user's other processes. Use ``bwrap`` or
``docker`` for code you do not trust.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Optional

from ._common import (
    SANDBOX_LANG,
    SANDBOX_PATH,
    error_result,
    job_files,
    language_for,
    make_result,
    preexec_setting,
    rlimits_for,
    supervise,
    validate_job,
    write_files,
)
from ._hostuid import count_tasks_of, job_uid, kill_uid
from .result import ExecResult, Job


class ProcessBackend:
    """Runs jobs as limited child processes; see the module docstring for what that leaves open."""

    name = "process"

    def __init__(self) -> None:
        self._probe: Optional[tuple[bool, str]] = None
        self._probe_lock = threading.Lock()

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
        files = job_files(job)
        argv = list(language_for(job.language).argv)
        with job_uid() as owner:
            # Under its own uid the program must be able to reach its work directory.
            work = tempfile.mkdtemp(prefix="distil-sandbox-", dir="/tmp" if owner else None)
            try:
                if owner:
                    os.chown(work, *owner)
                write_files(work, files, owner=owner)
                return self._run_in(job, argv, work, owner)
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def _run_in(self, job: Job, argv: list[str], work: str, owner: Optional[tuple[int, int]]) -> ExecResult:
        if owner:
            nproc = job.max_processes
            identity = {"user": owner[0], "group": owner[1], "extra_groups": []}
        else:  # RLIMIT_NPROC counts all of this user's tasks: leave room for them
            nproc = count_tasks_of(os.getuid()) + job.max_processes
            identity = {}
        stdin = job.stdin.encode("utf-8") if isinstance(job.stdin, str) else job.stdin
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=work,
                env={"PATH": SANDBOX_PATH, "HOME": work, "LANG": SANDBOX_LANG},
                stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                preexec_fn=preexec_setting(rlimits_for(job, nproc=nproc)),
                **identity,
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

        seen = supervise(
            proc, stdin=stdin, output_limit=job.output_limit, timeout_s=job.timeout_s, kill=kill, started=started
        )
        return make_result(self.name, seen)


BACKEND_CLASS = ProcessBackend
