"""Removing what a job left, however deep it nested its directories, never following a link.

``shutil.rmtree`` and ``os.fwalk`` recurse once per level: a job that nests directories a few
thousand deep (a loop of ``mkdir`` and ``chdir``) makes them raise RecursionError, and what it
left stays for the next job. Paths that deep are also longer than ``PATH_MAX``, and a descriptor
per level could pass ``RLIMIT_NOFILE``. So :func:`remove_tree` walks one level at a time, by names
relative to the one descriptor it holds, the directory it is in; it goes back up through ``..``
and checks that it came back to the directory it left (device and inode), so a directory moved
away meanwhile ends the walk instead of leading it elsewhere. Each directory is listed once, so
a process still writing cannot keep it going forever: what appears after the listing stays, and
the removal says it did not finish.
"""

from __future__ import annotations

import os
import stat
from typing import Callable, Optional

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_path(path: str) -> bool:
    """Remove ``path`` and everything below it (see :func:`remove_tree`); True when all of it
    went (or it was not there). Never raises OSError."""
    try:
        parent = os.open(os.path.dirname(os.path.abspath(path)) or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return not os.path.lexists(path)
    try:
        return remove_tree(parent, os.path.basename(os.path.abspath(path)))
    finally:
        os.close(parent)


def remove_tree(parent_fd: int, name: str) -> bool:
    """Remove entry ``name`` of the directory ``parent_fd`` and, for a directory, everything
    below it, however deep; links are removed, never followed. True when all of it went (or it
    was not there); never raises OSError.

    Not started by root, each directory is first made ``0700``: a job may have left one it made
    unreadable or unwritable (root needs no permission)."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return _removed(os.unlink, parent_fd, name)
    fd = _enter(parent_fd, name)
    if fd is None:
        return False
    ok = True
    try:
        # per level: its name in its parent, its entries still to remove, its parent's identity
        levels = [(name, _names(fd), _identity(parent_fd))]
        while True:
            here, pending, parent = levels[-1]
            if pending is None:  # could not be listed
                ok, pending = False, []
            if not pending:
                if len(levels) == 1:
                    break
                up = _back_up(fd, parent)
                if up is None:
                    return False
                os.close(fd)
                fd = up
                levels.pop()
                ok = _removed(os.rmdir, fd, here) and ok
                continue
            entry = pending.pop()
            try:
                inner = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError:
                ok = False
                continue
            if not stat.S_ISDIR(inner.st_mode):
                ok = _removed(os.unlink, fd, entry) and ok
                continue
            below = _enter(fd, entry)
            if below is None:
                ok = False
                continue
            levels.append((entry, _names(below), _identity(fd)))
            os.close(fd)
            fd = below
    except OSError:
        return False
    finally:
        os.close(fd)
    return _removed(os.rmdir, parent_fd, name) and ok


def _enter(parent_fd: int, name: str) -> Optional[int]:
    if os.geteuid() != 0:
        try:
            os.chmod(name, 0o700, dir_fd=parent_fd)  # a directory: stat said so, without following links
        except OSError:
            pass
    try:
        return os.open(name, _DIRECTORY, dir_fd=parent_fd)
    except OSError:
        return None


def _back_up(fd: int, expected: tuple[int, int]) -> Optional[int]:
    """A descriptor of the directory above ``fd`` if it is still the one with identity
    ``expected``, else None."""
    try:
        up = os.open("..", _DIRECTORY, dir_fd=fd)
    except OSError:
        return None
    if _identity(up) != expected:
        os.close(up)
        return None
    return up


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _names(fd: int) -> Optional[list[str]]:
    try:
        return os.listdir(fd)
    except OSError:
        return None


def _removed(remove: Callable[..., None], fd: int, name: str) -> bool:
    """``remove(name, dir_fd=fd)`` (``os.unlink`` or ``os.rmdir``): whether ``name`` is gone."""
    try:
        remove(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True
