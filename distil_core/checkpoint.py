"""Atomic checkpoints: a run killed at any moment leaves the last complete one intact.

Layout inside a run directory::

    checkpoints/step-000020.pt      model, optimizer, scheduler, expert state, RNG, progress
    checkpoints/latest              the file name of the newest complete checkpoint
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from typing import Any, BinaryIO, Iterator, Optional

import torch

LATEST = "latest"


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
    """A binary file handle whose content appears at ``path`` only once complete.

    Writes go to a temporary file in the same directory, which is fsynced and renamed over
    ``path`` when the block exits normally; on an exception it is removed and ``path`` keeps
    its old content.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str, *, replace: bool = True) -> Iterator[str]:
    """A temporary directory that becomes ``path`` when the block exits normally.

    With ``replace=False`` an existing ``path`` (another process got there first) is kept and
    the new copy discarded.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        yield tmp
        if os.path.exists(path):
            if not replace:
                return
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str, step: int, state: dict[str, Any], keep: int = 2) -> str:
    """Write ``state`` for ``step`` atomically, point ``latest`` at it, prune old ones."""
    directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
    name = f"step-{step:06d}.pt"
    with atomic_file(os.path.join(directory, name)) as fh:
        torch.save(state, fh)
    atomic_write_bytes(os.path.join(directory, LATEST), name.encode())
    existing = sorted(f for f in os.listdir(directory) if f.startswith("step-") and f.endswith(".pt"))
    for old in existing[:-keep] if keep > 0 else []:
        if old != name:
            os.unlink(os.path.join(directory, old))
    return os.path.join(directory, name)


def latest_checkpoint(run_dir: str) -> Optional[str]:
    pointer = os.path.join(run_dir, "checkpoints", LATEST)
    if not os.path.exists(pointer):
        return None
    with open(pointer) as fh:
        name = fh.read().strip()
    path = os.path.join(run_dir, "checkpoints", name)
    return path if os.path.exists(path) else None


def load_checkpoint(path: str) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)
