"""A memory cgroup per job, so that ``memory_mb`` bounds the whole job, not each process.

RLIMIT_AS caps one process's address space: a job that forks can hold ``memory_mb`` in every
process it may start (64 by default). A memory cgroup counts every page the job's processes
touch together (their memory, the tmpfs files and shared memory they write, page cache), and
the kernel's OOM killer ends a process of the job when the total would pass the limit. So
where one can be made, each job gets a cgroup of its own:

- cgroup v1: a child of this process's own ``memory`` cgroup, with ``memory.limit_in_bytes``
  and, where swap accounting exists, ``memory.memsw.limit_in_bytes`` (no swap beyond it);
- cgroup v2: a child of this process's own cgroup where the ``memory`` controller is enabled
  for its children (or can be), with ``memory.max`` and ``memory.swap.max = 0``.

The job's first process joins it before it execs anything (:meth:`JobCgroup.join`, writing
``0`` — "the writer" — to a ``cgroup.procs`` descriptor opened beforehand by this process), so
everything the job ever starts is inside. When the job is over, what is left inside is killed
and the cgroup removed. Where no cgroup can be made (no memory controller reachable, no write
access), :func:`support` says why, jobs keep only RLIMIT_AS per process, and
``distil-sandbox backends`` shows that.

A process killed outright (SIGKILL, the OOM killer) removes none of its groups. Each group's
name therefore holds the pid of the process that made it (``distil-job-<pid>-<random>``), and
the first time a process makes one it removes the empty groups beside it whose maker is gone
(:func:`remove_stale`).
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

PREFIX = "distil-job-"
REMOVE_WAIT_S = 5.0  # how long the job's last processes may take to leave before it is given up
STALE_S = 60.0  # an empty group unchanged this long, whose maker is gone, is a leftover


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, file system type, super options) of every cgroup mount."""
    found = []
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields, tail = left.split(), right.split()
                if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                    found.append((fields[4].replace("\\040", " "), tail[0], tail[2]))
    except OSError:
        pass
    return found


def _own_cgroups() -> tuple[Optional[str], Optional[str]]:
    """This process's v1 ``memory`` cgroup path and its v2 path (either None when absent)."""
    v1 = v2 = None
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                number, controllers, path = line.rstrip("\n").split(":", 2)
                if number == "0" and controllers == "":
                    v2 = path
                elif "memory" in controllers.split(","):
                    v1 = path
    except (OSError, ValueError):
        pass
    return v1, v2


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _find_parent() -> tuple[Optional[str], str, str]:
    """(directory to create job cgroups in, "v1" or "v2", why none when the directory is None)."""
    v1_path, v2_path = _own_cgroups()
    mounts = _mounts()
    reasons = []
    if v1_path is not None:
        for point, kind, options in mounts:
            if kind == "cgroup" and "memory" in options.split(","):
                parent = os.path.join(point, v1_path.lstrip("/"))
                if os.access(parent, os.W_OK):
                    return parent, "v1", ""
                reasons.append(f"{parent} is not writable")
                break
        else:
            reasons.append("the cgroup v1 memory controller is not mounted")
    if v2_path is not None:
        for point, kind, _ in mounts:
            if kind != "cgroup2":
                continue
            parent = os.path.join(point, v2_path.lstrip("/"))
            try:
                if "memory" not in _read(os.path.join(parent, "cgroup.controllers")).split():
                    reasons.append(f"cgroup v2 at {point}: no memory controller for {v2_path}")
                    continue
                if "memory" not in _read(os.path.join(parent, "cgroup.subtree_control")).split():
                    _write(os.path.join(parent, "cgroup.subtree_control"), "+memory")
                return parent, "v2", ""
            except OSError as exc:
                reasons.append(f"cgroup v2 at {point}: cannot enable memory for children of {v2_path} ({exc.strerror})")
    if v1_path is None and v2_path is None:
        reasons.append("this process is in no cgroup")
    return None, "", "; ".join(reasons)


class JobCgroup:
    """One job's memory cgroup: join it from the job's first process, then :meth:`remove` it."""

    def __init__(self, path: str, version: str) -> None:
        self.path = path
        self.version = version
        self.procs_fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)

    @property
    def procs_path(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    def join(self) -> None:
        """Move the calling process into the cgroup: safe in a ``preexec_fn`` (one write to a
        descriptor opened by the parent, which keeps working after the uid changed)."""
        os.write(self.procs_fd, b"0")

    def peak_bytes(self) -> Optional[int]:
        """The most memory the job held at once, where the kernel reports it."""
        name = "memory.max_usage_in_bytes" if self.version == "v1" else "memory.peak"
        try:
            return int(_read(os.path.join(self.path, name)))
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        """How many of the job's processes the OOM killer ended for passing the limit."""
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        try:
            for line in _read(os.path.join(self.path, name)).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def pids(self) -> list[int]:
        try:
            return [int(pid) for pid in _read(self.procs_path).split()]
        except (OSError, ValueError):
            return []

    def remove(self) -> bool:
        """Kill what is left inside and remove the cgroup; True once it is gone. Processes that
        have been killed leave it as they exit, which :data:`REMOVE_WAIT_S` gives them."""
        try:
            os.close(self.procs_fd)
        except OSError:
            pass
        deadline = time.monotonic() + REMOVE_WAIT_S
        pause = 0.0005
        while True:
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    _LEFT_BEHIND.add(self.path)
                    return False
            time.sleep(pause)  # the kernel is still tearing the killed processes down
            pause = min(pause * 2, 0.05)


_LEFT_BEHIND: set[str] = set()
_parent: Optional[tuple[Optional[str], str, str]] = None
_parent_lock = threading.Lock()


def _parent_info() -> tuple[Optional[str], str, str]:
    global _parent
    with _parent_lock:
        if _parent is None:
            _parent = _find_parent()
            if _parent[0] is not None:
                remove_stale(_parent[0])
        return _parent


def remove_stale(parent: str) -> list[str]:
    """Remove the job groups under ``parent`` left by processes that are gone; the paths removed.

    A group goes only when the pid in its name (``distil-job-<pid>-<random>``) is no live process
    here, it holds no process, and it was made :data:`STALE_S` ago or more (its modification
    time, which the kernel sets when the group is made): a live maker may be about to move a
    job into a group it just made. A group named before names held a pid (``distil-job-<random>``)
    has no known maker and goes on the last two conditions. The kernel refuses to remove a group
    that still holds a process in any case.
    """
    removed = []
    try:
        names = [name for name in os.listdir(parent) if name.startswith(PREFIX)]
    except OSError:
        return removed
    now = time.time()
    for name in names:
        path = os.path.join(parent, name)
        maker, _, rest = name[len(PREFIX):].partition("-")
        if rest and (not maker.isdigit() or int(maker) == os.getpid() or os.path.exists(f"/proc/{maker}")):
            continue  # made by a live process (or not a name of ours)
        try:
            if now - os.stat(path).st_mtime < STALE_S or _read(os.path.join(path, "cgroup.procs")).strip():
                continue
            os.rmdir(path)
        except OSError:
            continue
        removed.append(path)
    return removed


def create(memory_mb: int) -> tuple[Optional[JobCgroup], str]:
    """A new cgroup limited to ``memory_mb`` (memory and swap together), or (None, why not)."""
    parent, version, why = _parent_info()
    if parent is None:
        return None, why
    for path in list(_LEFT_BEHIND):  # cgroups whose last processes took long to leave
        try:
            os.rmdir(path)
            _LEFT_BEHIND.discard(path)
        except FileNotFoundError:
            _LEFT_BEHIND.discard(path)
        except OSError:
            pass
    path = os.path.join(parent, f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
    limit = str(memory_mb << 20)
    try:
        os.mkdir(path, 0o755)
    except OSError as exc:
        return None, f"cannot create a cgroup under {parent}: {exc.strerror}"
    try:
        if version == "v1":
            _write(os.path.join(path, "memory.limit_in_bytes"), limit)
            memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                _write(memsw, limit)
        else:
            _write(os.path.join(path, "memory.max"), limit)
            swap = os.path.join(path, "memory.swap.max")
            if os.path.exists(swap):
                _write(swap, "0")
        return JobCgroup(path, version), ""
    except OSError as exc:
        try:
            os.rmdir(path)
        except OSError:
            pass
        return None, f"cannot set the memory limit of a cgroup under {parent}: {exc.strerror}"


@contextmanager
def job_cgroup(memory_mb: int) -> Iterator[Optional[JobCgroup]]:
    """A memory cgroup for one job (None where none can be made), removed afterwards."""
    group, _ = create(memory_mb)
    try:
        yield group
    finally:
        if group is not None:
            group.remove()


def support() -> tuple[bool, str]:
    """Whether jobs get a memory cgroup here, and if not, why (they keep RLIMIT_AS per process)."""
    group, why = create(16)
    if group is None:
        return False, why
    group.remove()
    return True, f"cgroup {group.version} under {os.path.dirname(group.path)}"
