"""Atomic checkpoints: a run killed at any moment leaves the last complete one intact.

Layout inside a run directory::

    checkpoints/step-000020.pt      model, optimizer, scheduler, expert state, RNG, progress
    checkpoints/latest              the file name of the newest complete checkpoint
"""

from __future__ import annotations

import os
import random
from typing import Any, Optional

import torch

from distil_core.io import atomic_file, atomic_write_bytes

LATEST = "latest"


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
