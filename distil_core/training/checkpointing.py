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

from distil_core.errors import DistilError
from distil_core.io import atomic_file, atomic_write_bytes
from distil_core.models.lora import load_policy_state, policy_state
from distil_core.training import fsdp

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


def save_training(learner: Any, run_dir: str, *, step: int, evals: dict, elapsed: float) -> str:
    """Checkpoint the run at ``step`` (collective: under fsdp the state is gathered whole on rank
    0, which alone writes). A checkpoint holds no per-rank state, so it resumes on any number
    of ranks."""
    model, optimizer, world = learner.model, learner.optimizer, learner.world
    expert_state = getattr(learner.runtime.expert, "state_dict", None)
    if learner.sharded:
        policy, optim = fsdp.model_state(model), fsdp.optimizer_state(model, optimizer)
    else:
        policy, optim = policy_state(model), optimizer.state_dict()
    state = {
        "step": step,
        "model": policy,  # under LoRA: the adapters only
        "optimizer": optim,
        "scheduler": learner.scheduler.state_dict(),
        "expert": expert_state() if callable(expert_state) else {},
        "rng": rng_state(),
        "evals": evals,
        "elapsed": elapsed,
        "world_size": world.size,  # for the record
    }
    path = save_checkpoint(run_dir, step, state) if world.main else ""
    world.barrier()
    return path


def restore_training(learner: Any, run_dir: str) -> dict[str, Any]:
    """Load the latest checkpoint of ``run_dir`` into the learner (policy, optimizer, schedule,
    expert, RNG); returns the checkpoint's state for the trainer's own progress."""
    path = latest_checkpoint(run_dir)
    if path is None:
        raise DistilError(f"--resume: no checkpoint in {run_dir!r}/checkpoints; start without --resume.")
    state = load_checkpoint(path)
    if learner.sharded:
        fsdp.load_state(learner.model, learner.optimizer, state["model"], state["optimizer"], where=path)
    else:
        load_policy_state(learner.model, state["model"], where=path)
        learner.optimizer.load_state_dict(state["optimizer"])
    learner.scheduler.load_state_dict(state["scheduler"])
    loader = getattr(learner.runtime.expert, "load_state_dict", None)
    if callable(loader):
        loader(state.get("expert", {}))
    set_rng_state(state["rng"])
    return state
