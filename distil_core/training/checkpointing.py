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
    """Write ``state`` for ``step`` atomically, point ``latest`` at it, prune old ones.

    Nothing older is touched until the new checkpoint and its pointer are both in place, so a
    write that fails (a full disk: ``OSError``) leaves ``latest`` on the last good one; a new
    file whose pointer could not be written is removed again, to give the space back.
    """
    directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
    os.makedirs(directory, mode=0o750, exist_ok=True)
    name = f"step-{step:06d}.pt"
    with atomic_file(os.path.join(directory, name), mode=0o600) as fh:  # weights, RNG, expert state
        write_torch(state, fh)
    try:
        atomic_write_bytes(os.path.join(directory, LATEST), name.encode())
    except OSError:
        if latest_name(directory) != name:
            os.unlink(os.path.join(directory, name))
        raise
    existing = sorted(f for f in os.listdir(directory) if f.startswith("step-") and f.endswith(".pt"))
    for old in existing[:-keep] if keep > 0 else []:
        if old != name:
            os.unlink(os.path.join(directory, old))
    return os.path.join(directory, name)


class _WriteErrors:
    """A file's ``write`` and ``flush`` for ``torch.save``, keeping the first ``OSError`` seen."""

    def __init__(self, fh: Any):
        self.fh, self.error = fh, None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


def write_torch(state: Any, fh: Any) -> None:
    """``torch.save(state, fh)``, where a write the file system refuses is that ``OSError``.

    torch's zip writer swallows the error its write callback raised and fails later with a
    ``RuntimeError`` from ``inline_container.cc`` ("unexpected pos ...") that says nothing of a
    full disk; the error it swallowed is what callers can act on.
    """
    writer = _WriteErrors(fh)
    try:
        torch.save(state, writer)
    except RuntimeError as exc:
        if writer.error is None:
            raise
        raise writer.error from exc


def latest_name(directory: str) -> Optional[str]:
    """The file name ``latest`` in checkpoint ``directory`` points at, if any."""
    try:
        with open(os.path.join(directory, LATEST)) as fh:
            return fh.read().strip() or None
    except FileNotFoundError:
        return None


def latest_checkpoint(run_dir: str) -> Optional[str]:
    name = latest_name(os.path.join(run_dir, "checkpoints"))
    path = os.path.join(run_dir, "checkpoints", name) if name else None
    return path if path and os.path.exists(path) else None


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
    path, problem = "", ""
    if world.main:
        try:
            path = save_checkpoint(run_dir, step, state)
        except OSError as exc:
            problem = unsaved(run_dir, step, exc)
    problem = world.gather(problem)[0]  # every rank stops together
    if problem:
        raise DistilError(problem)
    return path


def unsaved(run_dir: str, step: int, exc: OSError) -> str:
    """One line: the checkpoint of ``step`` could not be written, and what is kept instead."""
    kept = latest_checkpoint(run_dir)
    keeps = (f"the last good checkpoint, {kept}, is kept: free some space, then continue from it with "
             f"--output-dir {run_dir} --resume") if kept else "there is no earlier checkpoint to resume from"
    return f"step {step}: the checkpoint could not be written to {run_dir}/checkpoints ({exc.strerror or exc}); {keeps}."


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
