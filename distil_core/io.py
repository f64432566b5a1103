"""Atomic writes: a file or directory appears at its path only once complete.

Every writer in the toolkit that must not leave a half-written file behind (checkpoints, run
summaries, plots, caches, the corrections export) goes through here. Torch-free, so that
lightweight plugins such as the API expert's cache can use it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from typing import Any, BinaryIO, Iterator, Optional

TEMPORARY_PREFIX = ".tmp-"
"""What an atomic write names its file or folder until it is complete (then renamed into place);
one left behind belongs to a process killed mid-write and is never read."""

__all__ = ["TEMPORARY_PREFIX", "atomic_file", "atomic_directory", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "staged_writes", "StagedWrites", "weights_fingerprint"]


@contextlib.contextmanager
def atomic_file(path: str, *, mode: Optional[int] = None) -> Iterator[BinaryIO]:
    """A binary file handle whose content appears at ``path`` only once complete.

    Writes go to a temporary file in the same directory, which is fsynced and renamed over
    ``path`` when the block exits normally; on an exception (a full disk included) it is
    removed and ``path`` keeps its old content. The file gets the permissions a plain
    ``open(path, "w")`` would give (the old file's, else 0666 less the umask), or with ``mode``
    that mode less the umask, as ``os.open(path, flags, mode)`` gives a new file — for what
    only its owner should read (logs holding reference answers, configs holding keys).

    Through a symbolic link the file it names is replaced and the link stays. A ``path`` that
    is neither a file nor a directory (a terminal, a pipe, a device: ``/dev/stdout``) has
    nothing to replace, and is written straight through; renaming over it would put a file
    where the device was.
    """
    try:
        kind = os.stat(path).st_mode  # through links
    except FileNotFoundError:
        kind = None
    if kind is not None and not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
        with open(path, "wb") as stream:
            yield stream
        return
    path = os.path.realpath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _mode_for(path) if mode is None else mode & ~_umask())
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


@contextlib.contextmanager
def atomic_directory(path: str, *, replace: bool = True, durable: bool = True) -> Iterator[str]:
    """A temporary directory that becomes ``path`` when the block exits normally.

    Its files are fsynced before it is renamed into place, so a machine that loses power just
    after cannot show a complete-looking directory of empty files. An existing ``path`` is
    moved aside first and deleted only once the new one is in place: a failure in between puts
    it back, and a crash in between leaves it whole under ``.old-<name>-*`` beside ``path``.
    With ``replace=False`` an existing ``path`` (another process got there first, even while
    this one synced) is kept and the new copy discarded. ``durable=False`` skips the fsyncs, for a directory nobody needs
    after a crash (weights handed to an inference server every step).
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TEMPORARY_PREFIX, dir=parent)
    try:
        yield tmp
        if os.path.exists(path) and not replace:
            return
        if durable:
            fsync_tree(tmp)
        if not replace:
            place_new(tmp, path)
        else:
            replace_directory(tmp, path)
        if durable:
            fsync_directory(parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def place_new(tmp: str, path: str) -> None:
    """Rename ``tmp`` to ``path`` unless another process put a directory there meanwhile (the
    fsyncs take a while): then that one is kept, and ``tmp`` is left to be removed."""
    try:
        os.rename(tmp, path)  # onto a directory with files: refused, never replaced
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise


def replace_directory(tmp: str, path: str) -> None:
    """Rename ``tmp`` to ``path``, moving an existing ``path`` aside first and deleting it only
    once ``tmp`` is in place; a failure in between puts it back."""
    if not os.path.exists(path):
        os.replace(tmp, path)
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory, so not replaced by one; remove it", path)
    parent = os.path.dirname(os.path.abspath(path))
    aside = tempfile.mkdtemp(prefix=f".old-{os.path.basename(path)}-", dir=parent)
    try:
        os.replace(path, aside)  # onto the empty directory just made: an unused name
    except BaseException:
        os.rmdir(aside)
        raise
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)


UNSYNCABLE = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES, errno.EPERM, errno.EISDIR)
"""What opening or fsyncing a directory raises where the file system does not sync directories
(some network, FUSE and shared-folder mounts) or the directory cannot be opened for reading."""


def fsync_directory(directory: str) -> None:
    """Make the names just created or renamed in ``directory`` durable, where the platform and
    file system can sync a directory. The rename has already happened when this runs, so a file
    system that cannot is no failure of the write (SQLite treats it the same way); an I/O error
    still is."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in UNSYNCABLE:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in UNSYNCABLE:
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """fsync every file and directory under ``root`` (a model written by a library that does
    not sync its own files)."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(directory)


def _mode_for(path: str) -> int:
    """The permissions a plain ``open(path, "w")`` would give: the old file's, else 0666 less
    the umask. (``mkstemp`` creates 0600 files; renamed into place they would otherwise change
    who can read an export or a summary.)"""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def atomic_write_bytes(path: str, data: bytes, *, mode: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` atomically (fsynced, then renamed into place); ``mode`` as in
    :func:`atomic_file`."""
    with atomic_file(path, mode=mode) as fh:
        fh.write(data)


class StagedWrites:
    """New contents for several files, each written whole (and fsynced) to a temporary file beside
    its target before any target changes; see :func:`staged_writes`."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, str]] = []  # (temporary, target)
        self.removals: list[str] = []

    def write(self, path: str, data: bytes, *, mode: Optional[int] = None) -> None:
        """Stage ``data`` as ``path``'s new content; ``mode`` as in :func:`atomic_file`."""
        path = os.path.realpath(path)
        fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=os.path.dirname(path))
        self.pending.append((tmp, path))
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _mode_for(path) if mode is None else mode & ~_umask())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def remove(self, path: str) -> None:
        """Stage the removal of ``path`` (done after every staged file is in place)."""
        self.removals.append(path)

    def discard(self) -> None:
        for tmp, _path in self.pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.pending, self.removals = [], []

    def commit(self) -> None:
        for tmp, path in self.pending:
            os.replace(tmp, path)
        for path in self.removals:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for directory in {os.path.dirname(p) for _tmp, p in self.pending} | {os.path.dirname(p) for p in self.removals}:
            fsync_directory(directory)
        self.pending, self.removals = [], []


@contextlib.contextmanager
def staged_writes() -> Iterator[StagedWrites]:
    """Files rewritten together: every new content is written to a temporary file first, and only
    once all are written are they renamed into place (and staged removals done). A write the disk
    refuses (full: ``OSError``) or any other exception in the block removes the temporaries and
    leaves every file as it was, so several files cut by one rule (a resumed run's logs) are never
    left half cut. Renames need no space; a crash among them leaves each file old or new, whole."""
    staged = StagedWrites()
    try:
        yield staged
    except BaseException:
        staged.discard()
        raise
    staged.commit()


def atomic_write_json(path: str, obj: Any, *, mode: Optional[int] = None) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), mode=mode)


def atomic_write_text(path: str, text: str, encoding: str = "utf-8", *, mode: Optional[int] = None) -> None:
    atomic_write_bytes(path, text.encode(encoding), mode=mode)


def weights_fingerprint(path: str) -> Optional[str]:
    """The first 12 hex digits of a sha256 over a local model directory's ``*.safetensors`` files
    (sorted by name), or None when ``path`` holds none (a hub name, a GGUF file).

    A tiny base is pretrained on the machine that first needs it, and two machines can build
    different weights from one recipe: a run's summary records this fingerprint of the weights
    it started from, and the bench report prints it, so two reports can be told apart.
    """
    if not os.path.isdir(path):
        return None
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for name in files:
        with open(os.path.join(path, name), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]
