"""What the ``process`` backend adds, when started by root, to a plain child process.

The job's first process, between ``fork`` and ``exec`` (a ``preexec_fn``: only system calls on
memory and descriptors prepared by the parent), in this order:

1. joins the job's memory cgroup (:mod:`._cgroup`), so ``memory_mb`` bounds the whole job;
2. enters a new IPC namespace: System V shared memory, semaphores and message queues and POSIX
   message queues made by the job are invisible to everything else and are destroyed by the
   kernel when the job's last process exits (otherwise they outlive it, holding memory, and a
   later job under another uid could read them);
3. enters a new mount namespace, private from the host's, in which every top-level directory
   but those the system needs to run programs (:data:`VISIBLE`) and the directories of the
   installed ``distil*`` packages are covered by an empty, read-only tmpfs: a task's dataset
   and its reference solutions, the toolkit's run directories and home directories are not
   there to read, whatever their permissions; ``/dev/shm`` becomes a private, size-capped
   tmpfs (POSIX shared memory is files there);
4. drops to the job's uid and gid with no supplementary groups (as ``Popen(user=...)`` would,
   but after the steps above, which need root);
5. where this process has a session keyring of its own, joins a new one (:mod:`._keys`): the
   job would otherwise share this process's, where it could leave keys for the next job to read;
6. sets the job's rlimits.

Namespaces need CAP_SYS_ADMIN: where ``unshare`` is refused (a container without it), jobs run
without steps 2 and 3 and :func:`isolation` says why; where no cgroup can be made, without
step 1 (RLIMIT_AS still caps each process).
"""

from __future__ import annotations

import ctypes
import errno
import os
import pkgutil
import resource
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import _cgroup
from ._keys import has_own_session_keyring, join_new_session

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
# Top-level directories a job sees as the host has them; every other one is covered.
VISIBLE = frozenset({"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev", "proc", "sys", "tmp"})
HIDDEN_PACKAGE_PREFIX = "distil"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]


def package_dirs(prefix: str = HIDDEN_PACKAGE_PREFIX) -> set[str]:
    """Real paths of the directories of importable packages named ``prefix*`` (the toolkit's own,
    with the tasks' datasets), whether installed normally or in place."""
    found: set[str] = set()
    for name, module in list(sys.modules.items()):
        if name.split(".")[0].startswith(prefix):
            found.update(getattr(module, "__path__", None) or [])
    try:
        for info in pkgutil.iter_modules():
            if info.ispkg and info.name.startswith(prefix) and hasattr(info.module_finder, "path"):
                found.add(os.path.join(info.module_finder.path, info.name))
    except Exception:  # a broken path entry must not stop the others
        pass
    return {os.path.realpath(path) for path in found if os.path.isdir(path)}


def hidden_paths() -> list[str]:
    """What a process-backend job finds empty: top-level directories outside :data:`VISIBLE` and
    the toolkit's package directories inside them (links are left alone: they lead to one or
    the other)."""
    paths = []
    for entry in sorted(os.scandir("/"), key=lambda e: e.name):
        if entry.name not in VISIBLE and entry.is_dir(follow_symlinks=False):
            paths.append(entry.path)
    for path in sorted(package_dirs()):
        if path.split("/")[1:2] and path.split("/")[1] in VISIBLE:
            paths.append(path)
    return paths


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _namespaces(hidden: list[bytes], shm_options: bytes) -> Callable[[], None]:
    """The namespace steps (2 and 3 of the module docstring) as a function for a child process."""

    def enter() -> None:
        _check(_libc.unshare(CLONE_NEWIPC | CLONE_NEWNS), "unshare")
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
        for path in hidden:
            if _libc.mount(b"none", path, b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=4k,mode=0555"):
                if ctypes.get_errno() != errno.ENOENT:  # gone since: nothing to hide
                    _check(-1, f"covering {path.decode(errors='replace')}")
        if _libc.mount(b"none", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV, shm_options):
            if ctypes.get_errno() != errno.ENOENT:
                _check(-1, "mounting a private /dev/shm")

    return enter


@dataclass
class Isolation:
    """What this host allows: a memory cgroup per job, and the namespaces."""

    cgroups: bool
    memory: str  # how memory_mb holds, for people
    namespaces: bool
    why_not: str = ""  # why there are no namespaces
    hidden: list[str] = field(default_factory=list)
    new_session_keyring: bool = False  # this process has a session keyring of its own: jobs join a new one

    def entering(
        self,
        owner: tuple[int, int],
        limits: list[tuple[int, int, int]],
        cgroup: Optional[_cgroup.JobCgroup],
        *,
        shm_bytes: int,
    ) -> Callable[[], None]:
        """The ``preexec_fn`` of one job: the steps of the module docstring, for this host."""
        uid, gid = owner
        namespaces = (
            _namespaces([p.encode() for p in self.hidden], b"size=%d,mode=1777" % shm_bytes)
            if self.namespaces
            else None
        )

        def enter() -> None:
            if cgroup is not None:
                cgroup.join()
            if namespaces is not None:
                namespaces()
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            if self.new_session_keyring:
                join_new_session()
            for res, soft, hard in limits:
                resource.setrlimit(res, (soft, hard))

        return enter


_plan: Optional[Isolation] = None
_plan_lock = threading.Lock()


def isolation() -> Isolation:
    """What jobs started by root get on this host (checked once: a cgroup is made and removed,
    and a trivial process enters the namespaces)."""
    global _plan
    with _plan_lock:
        if _plan is None:
            cgroups, where = _cgroup.support()
            memory = f"whole job (memory cgroup, {where})" if cgroups else f"per process (RLIMIT_AS): {where}"
            hidden = hidden_paths()
            try:
                subprocess.run(
                    ["/bin/true"], preexec_fn=_namespaces([p.encode() for p in hidden], b"size=4k"),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                )
                namespaces, why = True, ""
            except (OSError, subprocess.SubprocessError) as exc:
                namespaces, why = False, f"cannot enter new ipc and mount namespaces: {exc}"
            _plan = Isolation(cgroups, memory, namespaces, why, hidden, has_own_session_keyring())
        return _plan
