"""Shared by the human-plugin tests: entries, hand-written run directories, the `distil`
command with this plugin loaded, a pseudo-terminal driver and a store writer for subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import resource
import select
import shutil
import signal
import sys
import time
from typing import Optional

from distil_core.testing import distil_env
from distil_human.records import Correction
from distil_human.store import CorrectionStore


def response_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def entry(problem_id="sort-12", response="21", kind="correction", text="The digits must go up.", **extra):
    return Correction(problem_id=problem_id, response_hash=response_hash(response) if response else None,
                      kind=kind, text=text, **extra)


def rollout_record(problem_id, response, passed=False, step=1, group_index=0, reference="12"):
    return {
        "step": step, "problem_id": problem_id, "prompt": f"sort {problem_id.split('-')[-1]}",
        "reference": reference, "group_index": group_index, "response_text": response,
        "response_hash": response_hash(response), "finished": True,
        "verdict": {"score": float(passed), "passed": passed, "answer": response,
                    "details": {"expected": reference, "got": response}},
        "feedback": [] if passed else [{
            "source": "answer_check", "kind": "answer_check",
            "text": f"Your answer {response} is wrong. The expected answer is {reference}.",
        }],
    }


def write_run(run_dir, records) -> str:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "rollouts.jsonl"), "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return str(run_dir)


def distil_argv(*args: str) -> list[str]:
    exe = shutil.which("distil")
    return ([exe] if exe else [sys.executable, "-m", "distil_core.cli"]) + list(args)


def plugin_env(**extra: str) -> dict[str, str]:
    """The environment of a `distil` process that loads this plugin (and no other), with no
    corrections store inherited from the caller's environment."""
    env = distil_env(["human"], **extra)
    if "DISTIL_HUMAN_DB" not in extra:
        env.pop("DISTIL_HUMAN_DB", None)
    return env


class Terminal:
    """A command on a real pseudo-terminal; the test types on the master side and reads it.

    What the terminal shows includes the echo of what was typed. Carriage returns are dropped.
    ``max_file_size`` (bytes) makes every file the program writes fail beyond that size, as a
    full disk does: the kernel answers the write with EFBIG (SIGXFSZ is ignored, so the program
    sees the error instead of being killed).
    """

    def __init__(self, argv: list[str], env: dict[str, str], max_file_size: Optional[int] = None):
        pid, fd = pty.fork()
        if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
            try:
                # as a terminal gives its foreground program: Ctrl-C interrupts. (A test run
                # started in the background by a non-interactive shell inherits SIGINT ignored,
                # and an ignored signal stays ignored across exec.)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                if max_file_size is not None:
                    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                    resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_size, max_file_size))
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd, self.screen = pid, fd, ""
        self.status: Optional[int] = None

    def _read(self, deadline: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the program has ended and closed the terminal
            chunk = b""
        if not chunk:
            return False
        self.screen += chunk.decode("utf-8", "replace").replace("\r", "")
        return True

    def expect(self, text: str, timeout: float = 60.0) -> str:
        """Wait until ``text`` is shown; return what came before it (and consume both)."""
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            if time.monotonic() >= deadline:
                raise AssertionError(f"{text!r} never appeared; the terminal shows:\n{self.screen[-3000:]}")
            if not self._read(deadline):
                raise AssertionError(f"the program ended before showing {text!r}; it showed:\n{self.screen[-3000:]}")
        before, _, self.screen = self.screen.partition(text)
        return before

    def type(self, text: "str | bytes") -> None:
        """Type ``text`` (UTF-8 encoded), or exactly the bytes given."""
        os.write(self.fd, text if isinstance(text, bytes) else text.encode("utf-8"))

    def line(self, text: "str | bytes") -> None:
        self.type(text + (b"\r" if isinstance(text, bytes) else "\r"))  # the Enter key sends a carriage return

    def wait(self, timeout: float = 60.0) -> int:
        """Read to the end of the output and return the exit code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(deadline):
            pass
        for _ in range(int(timeout * 20)):
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"the program did not exit; the terminal shows:\n{self.screen[-3000:]}")


def write_entries(path: str, worker: int, count: int, barrier, errors) -> None:
    """A subprocess: open the store when every writer is ready, then add ``count`` entries."""
    try:
        barrier.wait()
        store = CorrectionStore(path, busy_timeout_s=60)
        for i in range(count):
            store.add(entry(problem_id=f"p{worker}", response=f"r{i}", text=f"writer {worker} entry {i}",
                            author=f"w{worker}"))
        store.close()
    except BaseException as exc:  # reported to the parent, which fails the test
        errors.put(f"writer {worker}: {type(exc).__name__}: {exc}")
        raise


def write_version_1_store(path) -> None:
    """A store in the version-1 layout, as an older distil-human wrote it, with one entry."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("CREATE TABLE corrections (id TEXT PRIMARY KEY, problem_id TEXT NOT NULL, response_hash TEXT, "
                     "kind TEXT NOT NULL, text TEXT NOT NULL, author TEXT NOT NULL, created_at TEXT NOT NULL, "
                     "run_dir TEXT, step INTEGER, response_text TEXT, verdict TEXT)")
        conn.execute("INSERT INTO corrections (id, problem_id, kind, text, author, created_at) VALUES "
                     "('a1', 'sort-12', 'solution', '12', 'ada', '2025-01-01T00:00:00.000000+00:00')")
    conn.close()


class WriteLockHolder:
    """Another process holding the store's write lock, as a long `distil corrections import`
    does: it opens the store, starts a write (``BEGIN IMMEDIATE``) and adds an entry with the
    text ``pending``, says ``locked`` on its output, and keeps the transaction open until its
    input is closed (:meth:`release`). Use it as a context manager."""

    def __init__(self, path: str):
        import subprocess

        code = (
            "import sys\n"
            "from distil_human.records import Correction\n"
            "from distil_human.schema import INSERT\n"
            "from distil_human.store import CorrectionStore\n"
            "store = CorrectionStore(sys.argv[1])\n"
            "with store._write() as db:\n"
            "    db.execute(INSERT, Correction(problem_id='sort-12', kind='correction', text='pending').to_row())\n"
            "    print('locked', flush=True)\n"
            "    sys.stdin.read()\n"
            "print('released', flush=True)\n"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        said = self.proc.stdout.readline()
        if said != "locked\n":
            self.proc.kill()
            raise AssertionError(f"the lock holder did not take the lock (it said {said!r})")

    def release(self) -> None:
        """Commit the pending entry and end the process."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            assert self.proc.stdout.readline() == "released\n"
        self.proc.wait(60)

    def __enter__(self) -> "WriteLockHolder":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None and self.proc.poll() is None:
            self.proc.kill()
        self.release()
