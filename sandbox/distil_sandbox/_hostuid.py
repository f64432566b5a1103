"""Per-job host uids, for jobs started by root.

A job started by root runs under a uid of its own, taken from a reserved range and held with
a file lock for the job's lifetime (so concurrent jobs, in one process or several, never
share one). A uid of its own makes three things both per-job and safe: RLIMIT_NPROC (counted
per uid), the final sweep that kills every process left with that uid (escapees that
double-fork and ``setsid()``), and the removal of files it left in world-writable directories.

The range sits above the uids that distributions and systemd hand out (regular users end at
60000, systemd's dynamic users at 65519) and below the ranges /etc/subuid allots from 100000
to container user namespaces. A uid that /etc/passwd names, or that already runs a process,
is skipped, and so is one whose killed processes wait, as zombies, for a slow init to reap
them: the kernel still counts them against the next job's RLIMIT_NPROC. So is one that owns
kernel keys, which would carry data from one job of the uid to the next (see :mod:`._keys`:
a job's keyrings are invalidated after it).

The sweep of the world-writable directories lists them whole, which costs time on a host
whose /tmp holds tens of thousands of entries (about 6 µs each). A directory whose change
time did not move during the job holds no new top-level entry, so only the directories that
changed are swept (:func:`changed_since`). For /tmp to stay unchanged, root makes the jobs'
work directories inside :data:`JOBS_DIR`, not in /tmp itself; that directory is swept after
every job, for a work directory a surviving process kept from being removed.

Any uid may also write into the world-writable directories below those (``/tmp/.X11-unix``, a
``1777`` directory a user made): those up to :data:`SWEEP_DEPTH` levels down, through
directories any uid may enter and not through links, are swept too, each when its own change
time moved since the job began. They are found by listing their parents, again only when a
parent changed (:func:`writable_subdirs`): a directory made world-writable later by a chmod,
its parent unchanged, is found at the parent's next change. Every directory is swept through
descriptors opened without following links, as root, so that another uid owning a directory on
the way cannot redirect the removal elsewhere.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import pwd
import random
import re
import signal
import stat
import subprocess
import time
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Iterator, Optional

from ._keys import clear_keys_of, owns_keys
from ._rmtree import remove_tree

JOB_UID_BASE = 70000
JOB_UID_COUNT = 1000
LOCK_DIR = "/run/distil-sandbox"
# Directories any uid may write to; what a job leaves at their top level is removed.
SHARED_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
# How far below those the world-writable directories are swept too.
SWEEP_DEPTH = 3
# Root's parent for jobs' work directories: every uid may enter it, none but root list or write it.
JOBS_DIR = "/tmp/distil-sandbox-jobs"
# A directory changed more recently than this before a job started may change again, during the
# job, within its timestamp's granularity (a clock tick; two seconds on the coarsest file systems):
# it is swept whatever its times say.
SETTLED_S = 3.0
# File systems whose directory times the local kernel sets; on any other the sweep always runs.
KERNEL_TIMED = frozenset({"tmpfs", "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "overlay", "zfs"})
_NEXT_SLOT = itertools.count(random.SystemRandom().randrange(JOB_UID_COUNT))


def tasks_of(uid: int, *, zombies: bool = False) -> list[int]:
    """Pids of processes whose real, effective or saved uid is ``uid``; zombies only if asked
    (they are dead, but count against RLIMIT_NPROC until their parent reaps them)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as fh:
                status = fh.read().decode("ascii", "replace")
        except OSError:
            continue
        if str(uid) not in _field(status, "Uid:").split()[:3]:
            continue
        if not zombies and _field(status, "State:").strip()[:1] in ("Z", "X"):
            continue
        found.append(int(entry.name))
    return found


def _field(status: str, name: str) -> str:
    """The value of one ``Name:`` line of a /proc/<pid>/status text ("" if absent)."""
    start = status.find("\n" + name)
    if start < 0:
        return ""
    start += len(name) + 1
    end = status.find("\n", start)
    return status[start:] if end < 0 else status[start:end]


def count_tasks_of(uid: int) -> int:
    """Tasks (threads and unreaped zombies included) of ``uid``: what RLIMIT_NPROC is
    compared with."""
    total = 0
    for pid in tasks_of(uid, zombies=True):
        try:
            total += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return total


def _kill_everything_signalable() -> None:
    os.kill(-1, signal.SIGKILL)


def kill_uid(uid: int, gid: int, *, attempts: int = 50) -> bool:
    """Kill every process of ``uid``; True once none is left.

    A helper process takes the uid and calls ``kill(-1, SIGKILL)``, which reaches every
    process that uid may signal in one pass the kernel does not let a fork slip through;
    /proc is scanned again until nothing is left. Needs root.
    """
    for attempt in range(attempts):
        if not tasks_of(uid):
            return True
        subprocess.run(
            ["/bin/true"],
            user=uid,
            group=gid,
            extra_groups=[],
            env={},
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_kill_everything_signalable,
            check=False,
        )
        time.sleep(0.002 * attempt)
    return not tasks_of(uid)


def remove_files_of(uid: int, directories=SHARED_WRITABLE_DIRS) -> None:
    """Remove what ``uid`` owns at the top level of ``directories``. Each directory is reached
    from ``/`` and everything below it is removed through descriptors, never following a link,
    however deep it is nested (:func:`~._rmtree.remove_tree`)."""
    for directory in directories:
        fd = _open_without_links(directory)
        if fd is None:
            continue
        try:
            for entry in list(os.scandir(fd)):
                try:
                    if entry.stat(follow_symlinks=False).st_uid == uid:
                        remove_tree(fd, entry.name)  # however deep the job nested it
                except OSError:
                    continue
        finally:
            os.close(fd)


def _open_without_links(path: str) -> Optional[int]:
    """A descriptor of directory ``path``, each component opened without following a link
    (the shared directories and :data:`JOBS_DIR` are root's: where links, they are resolved
    first); None if it cannot be opened so."""
    try:
        real = os.path.realpath(path) if path in (*SHARED_WRITABLE_DIRS, JOBS_DIR) else path
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    for part in PurePosixPath(real).parts[1:]:
        try:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            inner = None
        os.close(fd)
        if inner is None:
            return None
        fd = inner
    return fd


# directory -> (its device, inode and change time; its subdirectories others may enter, and
# whether others may write to each)
_CHILDREN: dict[str, tuple[tuple[int, int, int], list[tuple[str, bool]]]] = {}


def writable_subdirs(directories=SHARED_WRITABLE_DIRS, depth: int = SWEEP_DEPTH) -> list[str]:
    """The world-writable directories below ``directories``, at most ``depth`` levels down,
    through directories any uid may enter, links not followed. What a directory holds is listed
    again only when its change time moved (and had stood still for :data:`SETTLED_S` when it was
    last listed), so an unchanged /tmp costs one ``stat`` per directory kept."""
    found: list[str] = []
    level = [os.path.realpath(d) for d in directories]
    for _ in range(depth):
        children = [child for parent in level for child in _children(parent)]
        found += [path for path, writable in children if writable]
        level = [path for path, _ in children]
    return found


def _children(directory: str) -> list[tuple[str, bool]]:
    now = time.time_ns()
    try:
        st = os.lstat(directory)
    except OSError:
        return []
    state = (st.st_dev, st.st_ino, st.st_ctime_ns)
    kept = _CHILDREN.get(directory)
    if kept is not None and kept[0] == state:
        return kept[1]
    children = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        try:
            mode = entry.stat(follow_symlinks=False).st_mode if entry.is_dir(follow_symlinks=False) else 0
        except OSError:
            continue
        if mode & stat.S_IXOTH:
            children.append((entry.path, bool(mode & stat.S_IWOTH)))
    if now - st.st_ctime_ns >= SETTLED_S * 1e9:  # else it may change again within the same tick
        _CHILDREN[directory] = (state, children)
    return children


def changed_below(started_ns: int, directories=SHARED_WRITABLE_DIRS) -> list[str]:
    """The world-writable directories below ``directories`` (:func:`writable_subdirs`) that may
    have gained an entry since ``started_ns`` (``time.time_ns()``): changed less than
    :data:`SETTLED_S` before it or later, or on a file system whose times are not the kernel's."""
    below = writable_subdirs(directories)
    trusted = kernel_timed(below) if below else set()
    changed = []
    for directory in below:
        try:
            if directory in trusted and os.lstat(directory).st_ctime_ns < started_ns - SETTLED_S * 1e9:
                continue
        except OSError:
            continue
        changed.append(directory)
    return changed


def settled_states(directories=SHARED_WRITABLE_DIRS) -> dict[str, tuple[int, int, int]]:
    """What identifies the present state of each of ``directories`` whose status last changed
    at least :data:`SETTLED_S` ago, on a file system whose times the local kernel sets
    (:data:`KERNEL_TIMED`): its device, inode and change time (ctime, in ns). The others are
    left out, so :func:`changed_since` names them.

    The change time, not the modification time: making, renaming or removing an entry moves
    both to the present, but the modification time may be set back afterwards (root's cleaners
    do: systemd-tmpfiles restores a directory's times after removing old entries), while the
    change time moves again whenever anything is set and cannot be set back at all."""
    now, found = time.time_ns(), {}
    trusted = kernel_timed(directories)
    for directory in directories:
        try:
            st = os.stat(directory)
        except OSError:
            continue
        if directory in trusted and now - st.st_ctime_ns >= SETTLED_S * 1e9:
            found[directory] = (st.st_dev, st.st_ino, st.st_ctime_ns)
    return found


def changed_since(settled: dict[str, tuple[int, int, int]], directories=SHARED_WRITABLE_DIRS) -> list[str]:
    """Those of ``directories`` that may have gained an entry since :func:`settled_states`
    gave ``settled``: every one it left out, and every one whose device, inode or change time
    is not what it was."""
    changed = []
    for directory in directories:
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino, st.st_ctime_ns) == settled.get(directory):
                continue
        except OSError:
            pass
        changed.append(directory)
    return changed


def kernel_timed(directories) -> set[str]:
    """Those of ``directories`` that sit on a local file system (:data:`KERNEL_TIMED`, from
    /proc/self/mounts): there the local kernel stamps every change with its own clock. On a
    network or FUSE file system the server's clock and caching decide, and the sweep runs."""
    try:
        with open("/proc/self/mounts", "rb") as fh:
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return set()
    unescape = re.compile(r"\\([0-7]{3})")  # the table writes a space in a mount point as \040
    mounts = [(unescape.sub(lambda m: chr(int(m.group(1), 8)), fields[1]), fields[2])
              for fields in (line.split() for line in lines) if len(fields) >= 3]
    trusted = set()
    for directory in directories:
        real = os.path.realpath(directory)
        best = ""
        kind = ""
        for point, fstype in mounts:
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):  # the last of equal mounts is the one on top
                best, kind = point, fstype
        if kind in KERNEL_TIMED:
            trusted.add(directory)
    return trusted


def jobs_dir() -> str:
    """Where root makes a job's work directory: :data:`JOBS_DIR` (made on first use, mode 0711,
    so a job reaches its own work directory by name but cannot list the others'), or /tmp
    itself if that path is not a directory of root's with that mode (someone else made it)."""
    try:
        os.mkdir(JOBS_DIR, 0o700)
        os.chmod(JOBS_DIR, 0o711)  # after mkdir, whatever the umask
    except FileExistsError:
        pass
    except OSError:
        return "/tmp"
    try:
        st = os.lstat(JOBS_DIR)
    except OSError:
        return "/tmp"
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or stat.S_IMODE(st.st_mode) != 0o711:
        return "/tmp"
    return JOBS_DIR


def _lock_dir() -> str:
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    st = os.lstat(LOCK_DIR)
    if st.st_uid != 0 or st.st_mode & 0o022 or not os.path.isdir(LOCK_DIR) or os.path.islink(LOCK_DIR):
        raise RuntimeError(f"{LOCK_DIR} must be a directory owned by root and writable only by it")
    return LOCK_DIR


def _uid_is_named(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


@contextmanager
def job_uid(*, contained: bool = False) -> Iterator[Optional[tuple[int, int]]]:
    """Hold a free (uid, gid) for one job when running as root; yield None otherwise.

    On exit every process of the uid is killed, its files in the shared writable
    directories and the world-writable directories below them that changed during the job
    (:func:`changed_since`, :func:`changed_below`) and in :data:`JOBS_DIR` removed, and its
    kernel keyrings invalidated (:func:`~._keys.clear_keys_of`), before the uid is released. If
    a process survives, or the keyrings cannot be invalidated, the uid stays held (and unused)
    until this process ends.

    ``contained=True`` is for jobs whose processes all live in a pid namespace of their own
    and that cannot write to host directories (bwrap): the kernel kills every process of the
    namespace when its init exits, so the /proc scans on taking and releasing the uid are
    skipped. A uid that owns kernel keys is passed over for every job alike: keys left by an
    earlier ``process`` job of that uid would be readable from a bwrap job running as it. The kernel may still be tearing down the last job's tasks (a fork bomb's) when its
    uid is released; the round robin keeps that uid out of use for the next 999 jobs.
    """
    if os.geteuid() != 0:
        yield None
        return
    directory = _lock_dir()
    # Round robin from a random start: a uid just released is the last to be taken again,
    # which gives the kernel time to finish tearing down what its last job left behind.
    first = next(_NEXT_SLOT)
    for slot in range(first, first + JOB_UID_COUNT):
        uid = JOB_UID_BASE + slot % JOB_UID_COUNT
        fd = os.open(f"{directory}/{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if _uid_is_named(uid) or (not contained and tasks_of(uid, zombies=True)) or _keeps_keys(uid):
            os.close(fd)
            continue
        break
    else:
        raise RuntimeError(f"all {JOB_UID_COUNT} sandbox uids from {JOB_UID_BASE} are in use")
    clean = False
    started_ns = time.time_ns()
    settled = {} if contained else settled_states()
    try:
        yield uid, uid
    finally:
        try:
            if contained:
                clean = True
            else:
                clean = kill_uid(uid, uid)
                remove_files_of(uid, [*changed_since(settled), JOBS_DIR, *changed_below(started_ns)])
                clean = clear_keys_of(uid, uid) and clean
        finally:
            if clean:
                os.close(fd)


def _keeps_keys(uid: int) -> bool:
    """Whether ``uid`` owns kernel keys: then it is passed over, and its keyrings invalidated for
    the next time round (:mod:`._keys`)."""
    if not owns_keys(uid):
        return False
    clear_keys_of(uid, uid)
    return True
