"""The kernel keys of a job's uid, for jobs started by root (the ``process`` backend), and the
session keyring every job would inherit (``process`` and ``bwrap``).

Keys belong to a uid, not to a process: what a job adds to its user keyring, its user-session
keyring or its persistent keyring (``add_key``, ``keyctl``; no file, no IPC object) stays in the
kernel after the job, for the next job of that uid to read (jobs take uids from a pool of 1000
in turn, :mod:`._hostuid`). So:

- after the job, if its uid owns keys (:func:`owns_keys`, from /proc/key-users), a helper process
  that takes the uid invalidates those three keyrings (:func:`clear_keys_of`): no lookup finds
  them or what is linked only under them any more, and the kernel frees them shortly after; a
  uid whose keyrings cannot be invalidated stays held, like one whose processes survive;
- a uid that owns keys when a job would take it (left by a process that died before its clean-up,
  or not yet freed) is passed over, and invalidated for the next time round;
- where the caller has a session keyring of its own (a login session's, a systemd service's),
  which every job would otherwise inherit and could write to for the next job to read, the
  job's first process joins a new one (:func:`join_new_session`), which dies with the job's
  processes.

Jobs in a user namespace of their own (bwrap) need only the last: their user and persistent
keyrings belong to the namespace and go with it, but they inherit the caller's session keyring.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import subprocess

# keyctl(2)'s system call number (glibc has no wrapper), by machine.
KEYCTL_SYSCALL = {
    "x86_64": 250, "aarch64": 219, "arm64": 219, "riscv64": 219, "loongarch64": 219, "i386": 288, "i686": 288,
    "armv7l": 311, "ppc64le": 271, "ppc64": 271, "s390x": 280,
}
GET_KEYRING_ID, JOIN_SESSION_KEYRING, INVALIDATE, GET_PERSISTENT = 0, 1, 21, 22
THREAD_KEYRING, SESSION_KEYRING, USER_KEYRING, USER_SESSION_KEYRING = -1, -3, -4, -5

_libc = ctypes.CDLL(None, use_errno=True)
_NUMBER = KEYCTL_SYSCALL.get(platform.machine())


def _keyctl(*args: int) -> int:
    """keyctl(2); a negative errno when it fails."""
    if _NUMBER is None:
        return -errno.ENOSYS
    result = _libc.syscall(_NUMBER, *(ctypes.c_long(a) for a in args))
    return result if result >= 0 else -ctypes.get_errno()


def owns_keys(uid: int) -> bool:
    """Whether ``uid`` owns a kernel key now (a line of /proc/key-users, in this process's user
    namespace; no such file: a kernel without keys, where no job can own one)."""
    try:
        with open("/proc/key-users", "rb") as fh:
            lines = fh.read().decode("ascii", "replace").splitlines()
    except OSError:
        return False
    return any(line.split(":", 1)[0].strip() == str(uid) for line in lines)


def has_own_session_keyring() -> bool:
    """Whether this process has a session keyring of its own, which its children inherit (not the
    per-uid fallback a process without one uses)."""
    session = _keyctl(GET_KEYRING_ID, SESSION_KEYRING, 0)
    return session >= 0 and session != _keyctl(GET_KEYRING_ID, USER_SESSION_KEYRING, 0)


def join_new_session() -> None:
    """Give the calling process a new, empty session keyring (in a ``preexec_fn``, after the uid
    changed: it then belongs to the job). Fails only where keys cannot be used at all."""
    result = _keyctl(JOIN_SESSION_KEYRING, 0)
    if result < 0 and -result not in (errno.ENOSYS, errno.EPERM):  # EPERM: refused by a seccomp filter
        raise OSError(-result, f"cannot join a new session keyring: {os.strerror(-result)}")


def _invalidate_own_keyrings() -> None:
    """In a helper process running as the job's uid: invalidate its user, user-session and
    persistent keyrings. Each is found by its serial number first, so that none is made anew by
    a later lookup; the persistent keyring is linked into the helper's own thread keyring, which
    dies with the helper. A user keyring that cannot be found (the lookup makes one where there
    is none) is one the job took its own permissions from: that is a failure."""
    user = [_keyctl(GET_KEYRING_ID, USER_KEYRING, 0), _keyctl(GET_KEYRING_ID, USER_SESSION_KEYRING, 0)]
    if user[0] == -errno.ENOSYS:
        return  # a kernel without keys
    persistent = _keyctl(GET_PERSISTENT, -1, THREAD_KEYRING)
    if persistent in (-errno.ENOKEY, -errno.EOPNOTSUPP):  # a kernel without persistent keyrings
        persistent = None
    for serial in [*user, persistent]:
        result = serial if serial is None or serial < 0 else _keyctl(INVALIDATE, serial)
        if result is not None and result < 0:
            raise OSError(-result, f"cannot invalidate a keyring: {os.strerror(-result)}")


def clear_keys_of(uid: int, gid: int) -> bool:
    """Make every kernel key ``uid`` owns unreachable; True once none can be reached. Needs root.

    Nothing to do for a uid that owns none (the usual case: one read of /proc/key-users). Else a
    helper process running as ``uid`` invalidates its user, user-session and persistent keyrings:
    no lookup finds an invalidated key or anything linked only under it, and the kernel frees
    them shortly after (keys that only the job's exited processes held go the same way). False
    where the helper cannot: the job took away its own permission to, or keyctl is refused."""
    if not owns_keys(uid):
        return True
    try:
        subprocess.run(
            ["/bin/true"], user=uid, group=gid, extra_groups=[], env={}, cwd="/", stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_invalidate_own_keyrings, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True
