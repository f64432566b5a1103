"""One writer per run directory: an exclusive lock, held for the whole run by the process that writes it.

Two trainers writing one run directory (a ``--resume`` started while the run still trains, a
rank 0 left running by an earlier ``torchrun`` whose launcher was killed) interleave the step
logs and write over each other's checkpoints. So the process that writes a run (the only one:
rank 0 under ``torchrun``; the other ranks write nothing there) takes an exclusive ``flock`` on
``<run>/.distil-lock`` before it checks the directory and holds it until the run ends. A second
``distil train`` on that directory (``--resume``, ``--overwrite`` or a new run) finds it taken
and is refused in one line naming the holder, whose pid and host the file records (not its
command line, where a ``--set`` may hold a secret: ``ps -p PID`` shows it to whoever may see it).

The kernel drops a ``flock`` with the process that held it, however that process ends (``kill
-9`` included), so a lock is never stale: the file stays behind naming its last holder, and
locks nothing. A file system without ``flock`` (some network mounts) leaves the run unlocked.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import socket
import time
from typing import Any, Optional

from distil_core.errors import DistilError
from distil_core.training.distributed import launched_rank

try:
    import fcntl
except ImportError:  # not a POSIX system: nothing to lock with
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".distil-lock"
"""The lock file in a run directory; never one of the run's files (``--overwrite`` keeps it)."""

UNLOCKABLE = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL)
"""What ``flock`` raises on a file system that has no such locks."""


class RunLock:
    """The lock on one run directory, held while ``fd`` is open (None: not held, or nothing to hold)."""

    def __init__(self, path: str = "", fd: Optional[int] = None):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, run_dir: str, *, create: bool) -> Optional["RunLock"]:
        """The lock of ``run_dir``, taken now; None where ``create`` is False and there is no lock
        file to take (or none that can be opened: the directory's own checks say why). A lock
        another process holds is a DistilError naming it."""
        path = os.path.join(run_dir, LOCK_NAME)
        collected = False
        for _ in range(100):  # another holder may remove the file between our open and our lock
            try:
                fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
            except OSError as exc:
                if not create:
                    return None
                raise DistilError(f"run directory {run_dir!r}: its lock file {path} cannot be created "
                                  f"({exc.strerror or exc}). Free some space there, or choose a directory you can "
                                  "write to.") from None
            if fcntl is None:
                return cls(path, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_holder(fd)
                os.close(fd)
                if _ours(holder) and not collected:  # a Trainer of this process, dropped but not yet collected
                    collected = True
                    gc.collect()
                    continue
                raise DistilError(busy(run_dir, path, holder)) from None
            except OSError as exc:
                if exc.errno not in UNLOCKABLE:
                    os.close(fd)
                    raise
                return cls(path, fd)  # a file system without flock: the run goes on unlocked
            if _same_file(fd, path):
                return cls(path, fd)
            os.close(fd)  # locked a file its holder had just removed: take the one there now
        raise DistilError(f"run directory {run_dir!r}: its lock file {path} keeps being replaced; "
                          "stop the other processes using the directory, then try again.")

    @property
    def held(self) -> bool:
        return self.fd is not None

    def record(self) -> None:
        """Write who holds the lock into the file, for a process it refuses to name. Best effort:
        a disk too full for these few bytes leaves the lock held and the holder unnamed."""
        if self.fd is None:
            return
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError:
            pass

    def release(self, *, remove: bool = False) -> None:
        """Give the lock up (idempotent); ``remove``: take the file away first, while still holding
        it (a run directory this run created, and removes again because its setup failed)."""
        if self.fd is None:
            return
        if remove:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        fd, self.fd = self.fd, None
        os.close(fd)  # the flock goes with the last descriptor of the open file

    def __del__(self) -> None:  # a Trainer dropped without fit(): its lock goes with it
        try:
            self.release()
        except Exception:  # noqa: BLE001 - the interpreter is shutting down: the process ends the lock
            pass


def check_free(run_dir: str) -> None:
    """A DistilError naming the process that holds ``run_dir``'s lock, if one does: for a command
    that reads the directory before it takes the lock (``--resume`` reads its config.yaml, which a
    run still being set up has not written yet).

    Under ``torchrun`` only rank 0, the process that will take the lock, looks: checking takes the
    lock for a moment, and another rank doing so could refuse rank 0 (or, a moment later, be
    refused by the rank 0 of its own run). Rank 0's refusal ends the run: torchrun stops the
    other ranks when one fails."""
    if launched_rank() != 0:
        return
    lock = RunLock.acquire(run_dir, create=False)
    if lock is not None:
        lock.release()


def _ours(holder: dict[str, Any]) -> bool:
    """Whether ``holder`` is this process (a lock it took for a run it has since dropped)."""
    return holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still exists (True where that cannot be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process exists; a number no process has
        return True
    return True


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def read_holder(fd: int) -> dict[str, Any]:
    """What the holder wrote into the lock file (:meth:`RunLock.record`); {} when nothing readable."""
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return _as_written(holder)


def _as_written(holder: Any) -> dict[str, Any]:
    """Only what :meth:`RunLock.record` could have written: a process number, a host name and a
    time, short and on one line. Anyone who can write the directory can write the file, and its
    pid and host go into the refusal's ``kill`` advice."""
    if not isinstance(holder, dict):
        return {}
    kept: dict[str, Any] = {}
    pid = holder.get("pid")
    if isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31:
        kept["pid"] = pid
    for key, limit, spaces in (("host", 255, False), ("since", 40, True)):
        value = holder.get(key)
        if (isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()
                and (spaces or not any(c.isspace() for c in value))):
            kept[key] = value
    return kept


def busy(run_dir: str, path: str, holder: dict[str, Any]) -> str:
    """The one line refusing a run directory whose lock ``holder`` (as :func:`read_holder` read
    it: only what a holder writes) holds."""
    pid, host = holder.get("pid"), holder.get("host")
    if _ours(holder):
        who = "this process (a run it started there has not ended)"
        stop = "let that run finish first (Trainer.fit)"
    elif pid is None:
        who = "another process (it has not written its name yet)"
        stop = "wait for it to end, or stop it"
    elif host == socket.gethostname() and not _alive(pid):  # the file names an earlier holder
        who = f"a process that has not written its name yet (the one the lock file names, {pid}, has ended)"
        stop = "wait for it to end, or stop it"
    else:
        since = f" (since {holder['since']})" if holder.get("since") else ""
        who = f"process {pid} on host {host}{since}"
        stop = f"wait for it to end, or stop it (kill {pid}{'' if host == socket.gethostname() else f' on {host}'})"
    return (f"run directory {run_dir!r} is in use: {who} holds its lock ({path}), and two processes writing one "
            f"run would interleave its logs and checkpoints. {stop[0].upper() + stop[1:]}, then run this again, "
            "or choose another --output-dir.")


__all__ = ["LOCK_NAME", "RunLock", "busy", "check_free", "read_holder"]
