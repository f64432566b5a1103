"""The run directory: made (or checked) before anything slow starts, and locked for the run.

A run's directory is created, or refused in one line saying why, before any model is built: a
path that cannot be one, a directory that holds another run (unless ``--resume`` or
``--overwrite`` says what to do with it), one holding a user's own files under the names a run
writes, or one another process is writing (:mod:`~distil_core.training.runlock`). Rank 0 alone
prepares and locks it under ``torchrun``; every rank raises the same error.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator, Optional

from distil_core.errors import ConfigError, DistilError
from distil_core.run_files import check_resumable, holds_run, written_paths
from distil_core.training.distributed import World
from distil_core.training.runlock import RunLock

DIR_MODE = 0o750
"""A run directory's permissions (less the umask): its logs hold the task's reference answers
and its config.yaml any key given in an expert's options, so others get no access; the group
may look in, and read what the owner shares."""


def prepare_run_dir(path: str, reuse: str = "refuse") -> tuple[bool, RunLock]:
    """Create the run directory (``DIR_MODE``) and take its lock (:mod:`~distil_core.training.runlock`),
    or say in one line why it cannot be one; True when this call created it (so a run that fails
    before writing anything can take it away), and the lock, held until the run ends.

    A directory another process is writing is refused first, naming that process. One that already
    holds a run is refused unless ``reuse`` is ``resume`` (continue
    it) or ``overwrite`` (the old run's files go, once the new run is set up): a second run
    never mixes into or silently replaces the first. A directory that holds no run but files
    with the names a run writes (someone's own ``config.yaml``, ``mlruns/``) is refused for a new
    run, ``--overwrite`` or not: the run would write over them; the leftovers of a write a kill cut
    short (``.tmp-*``) are not such files, and the new run removes them. Refusing changes nothing on
    disk."""
    created = not os.path.lexists(path)
    if reuse == "resume" and not os.path.isdir(path):
        check_resumable(path)  # nothing to continue: refused before anything is created
    lock = RunLock.acquire(path, create=False) if os.path.isdir(path) else None
    try:
        _check_run_dir(path, reuse)
        lock = lock or RunLock.acquire(path, create=True)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    lock.record()
    return created, lock


def _check_run_dir(path: str, reuse: str) -> None:
    """:func:`prepare_run_dir`'s refusals, and the directory made."""
    if reuse == "resume":
        check_resumable(path)
    held = holds_run(path)
    if reuse == "refuse" and held:
        raise ConfigError(f"run directory {path!r} already holds a run. Continue it with --resume, replace it "
                          "with --overwrite (its logs and checkpoints are deleted), or choose another --output-dir.")
    taken = [os.path.relpath(p, path) for p in written_paths(path)] if reuse != "resume" and not held else []
    if taken:
        raise ConfigError(
            f"run directory {path!r} holds {', '.join(taken[:6])}{' …' if len(taken) > 6 else ''}: names a run "
            "writes, but no run (no step log, summary.json or checkpoint), so they are taken for your own files, "
            "which a new run would write over" + (" and --overwrite would delete" if reuse == "overwrite" else "")
            + ". Move them, or choose another --output-dir.")
    try:
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    except OSError as exc:
        raise DistilError(f"run directory {path!r} (--output-dir / train.output_dir) cannot be created: "
                          f"{exc.strerror or exc}. Choose a directory you can write to.") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DistilError(f"run directory {path!r} (--output-dir / train.output_dir) is not writable. "
                          "Choose a directory you can write to.")


@contextlib.contextmanager
def removed_if_unused(path: str, created: bool, lock: Optional[RunLock] = None) -> Iterator[None]:
    """A run that fails while it is being set up (a bad plugin option, a missing model) leaves no
    empty run directory behind it: only one this run created, and only while still empty (its lock
    file aside, which goes with it). The lock is given up either way."""
    try:
        yield
    except BaseException:
        if lock is not None:
            lock.release(remove=created)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # refuses a directory that holds anything
        raise


def shared_run_dir(world: World, path: str, reuse: str = "refuse") -> tuple[str, bool, RunLock]:
    """Rank 0's ``path``, prepared and locked by rank 0 (:func:`prepare_run_dir`), whether rank 0
    created it (False on the other ranks), and the lock (held by rank 0 alone, the one rank that
    writes the run: an empty one elsewhere); when it cannot be, every
    rank raises the same one-line error (none is left waiting for the others). Collective."""
    path = world.gather(path)[0]
    problem, created, lock = None, False, RunLock()
    if world.main:
        try:
            created, lock = prepare_run_dir(path, reuse)
        except DistilError as exc:
            problem = (isinstance(exc, ConfigError), str(exc))
    problem = world.gather(problem)[0]
    if problem:
        raise (ConfigError if problem[0] else DistilError)(problem[1])
    return path, created, lock


def default_run_dir(method: str) -> str:
    return os.path.join("runs", f"{method}-{time.strftime('%Y%m%d-%H%M%S')}")


__all__ = ["DIR_MODE", "prepare_run_dir", "removed_if_unused", "shared_run_dir", "default_run_dir"]
