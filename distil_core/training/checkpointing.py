"""Atomic checkpoints: a run killed at any moment leaves the last complete one intact.

Layout inside a run directory::

    checkpoints/step-000020.pt      model, optimizer, scheduler, expert state, RNG, progress
    checkpoints/latest              the file name of the newest complete checkpoint
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import random
import re
from typing import Any, Iterator, Optional

import torch

from distil_core.config import trained_record
from distil_core.config.base import BIG
from distil_core.errors import DistilError
from distil_core.io import atomic_file, atomic_write_bytes
from distil_core.models.lora import load_policy_state, policy_state
from distil_core.run_files import CHECKPOINT_NAME
from distil_core.training import fsdp
from distil_core.training.base_weights import changed_base

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
    existing = checkpoint_names(directory)
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
    """The file name ``latest`` in checkpoint ``directory`` points at, if any; a ``latest`` that
    cannot be such a name (a directory, bytes that are not text) is a DistilError saying so."""
    path = os.path.join(directory, LATEST)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except FileNotFoundError:
        return None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        what = "a directory" if isinstance(exc, IsADirectoryError) else "not text"
        raise DistilError(f"checkpoint pointer {path} is damaged ({what}, not the name of the newest checkpoint); "
                          "delete it to resume from the newest checkpoint there, or start the run again "
                          "(--overwrite).") from None


def checkpoint_names(directory: str) -> list[str]:
    """The checkpoint files in ``directory``, oldest first (by step: ``step-1000000.pt`` is newer
    than ``step-999999.pt`` although it sorts before it as text)."""
    try:
        names = [f for f in os.listdir(directory) if CHECKPOINT_NAME.fullmatch(f)]
    except FileNotFoundError:
        return []
    return sorted(names, key=lambda f: int(CHECKPOINT_NAME.fullmatch(f).group(1)))


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """The checkpoint ``latest`` names; when it names none that is there (its checkpoint was
    deleted, as the error of a damaged one says to do), the newest one there is."""
    directory = os.path.join(run_dir, "checkpoints")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise DistilError(f"{directory} is not a directory, so it holds no checkpoints; move it aside and start "
                          "the run again (--overwrite), or put the run's checkpoints/ directory back.")
    name = latest_name(directory)
    if name is not None and not CHECKPOINT_NAME.fullmatch(name):
        raise DistilError(f"checkpoint pointer {os.path.join(directory, LATEST)} is damaged (it names {name[:80]!r}, "
                          "not a step-N.pt file beside it); delete it to resume from the newest checkpoint there, "
                          "or start the run again (--overwrite).")
    if not (name and os.path.isfile(os.path.join(directory, name))):
        names = checkpoint_names(directory)
        name = names[-1] if names else None
    return os.path.join(directory, name) if name else None


CHECKPOINT_KEYS = ("step", "model", "optimizer", "scheduler", "rng")
"""What every checkpoint :func:`save_training` writes holds (and resuming reads)."""

UNREADABLE = (pickle.UnpicklingError, EOFError, UnicodeDecodeError)
"""What ``torch.load`` raises for a file that is not a checkpoint, or one cut short; its zip
reader's own errors are RuntimeErrors that name ``PytorchStreamReader``."""


def damaged(path: str, reason: str) -> DistilError:
    """The one line for a checkpoint that cannot be resumed from; deleting it is safe, since
    :func:`latest_checkpoint` then finds the newest one left."""
    return DistilError(f"checkpoint {path} is damaged ({reason}); delete it to resume from an earlier one, "
                       "or start the run again (--overwrite).")


def load_checkpoint(path: str) -> dict[str, Any]:
    """The state :func:`save_training` wrote to ``path``; a file that is not one (cut short,
    overwritten, lacking a part) is a DistilError that names it and what to do.

    The file is read with ``weights_only``: tensors, numbers, strings and the containers that hold
    them, which is all a checkpoint holds. A pickle may name any Python callable to run while it
    loads, and run directories get copied between people and machines, so a checkpoint holding
    anything else (``os.system`` in a crafted file, an expert state of its own classes) is
    refused, naming the object, rather than run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = refused_object(exc)
        if refused is None:
            raise damaged(path, f"not a checkpoint: {unpickling_problem(exc)}") from None
        raise DistilError(
            f"checkpoint {path} holds {refused}, which is not a tensor or a plain value; loading it would run "
            "code stored in the file, so it is refused. Resume only from checkpoints this toolkit wrote; an "
            "expert plugin whose state holds its own types registers them with "
            "torch.serialization.add_safe_globals."
        ) from None
    except UNREADABLE as exc:
        raise damaged(path, f"not a checkpoint: {first_line(exc) if str(exc) else 'it ends before its data'}") from None
    except RuntimeError as exc:
        if "PytorchStreamReader" not in str(exc):
            raise
        raise damaged(path, f"cut short or not a checkpoint: {first_line(exc)}") from None
    except IsADirectoryError:
        raise damaged(path, "a directory, not a file") from None
    if not isinstance(state, dict):
        raise damaged(path, f"it holds a {type(state).__name__}, not a checkpoint")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise damaged(path, f"it lacks {', '.join(map(repr, missing))}")
    if isinstance(state["step"], bool) or not isinstance(state["step"], int) or not isinstance(state["model"], dict):
        raise damaged(path, "its step or model is not what a checkpoint holds")
    if not 0 <= state["step"] <= BIG:
        raise damaged(path, f"its step is {state['step']}, outside 0…{BIG}")
    for key in ("optimizer", "scheduler", "rng", "expert", "evals"):
        if key in state and not isinstance(state[key], dict):
            raise damaged(path, f"its {key} state is a {type(state[key]).__name__}, not a mapping")
    elapsed = state.get("elapsed", 0.0)
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not math.isfinite(elapsed) or elapsed < 0:
        raise damaged(path, f"its elapsed time is {str(elapsed)[:40]!r}, not a number of seconds")
    return state


REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
"""How ``torch.load(weights_only=True)`` names a callable or class it refused to load."""


def refused_object(exc: BaseException) -> Optional[str]:
    """What a weights-only load refused to build (``GLOBAL posix.system``), or None when ``exc``
    says the file is not a pickle of anything (garbage, text) rather than a pickle of something else."""
    found = REFUSED_GLOBAL.search(str(exc)) if "Weights only load failed" in str(exc) else None
    return f"GLOBAL {found.group(1)}" if found else None


def unpickling_problem(exc: BaseException) -> str:
    """The line of a weights-only load's long message that says what was wrong with the file."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("Unsupported")]
    return said[0] if said else first_line(exc)


def first_line(exc: BaseException) -> str:
    """An exception's message up to its first sentence's end (torch's go on for lines)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def save_training(learner: Any, run_dir: str, *, step: int, evals: dict, elapsed: float,
                  base: Optional[dict[str, str]] = None) -> str:
    """Checkpoint the run at ``step`` (collective: under fsdp the state is gathered whole on rank
    0, which alone writes). A checkpoint holds no per-rank state, so it resumes on any number
    of ranks. ``base``: the base model it started from (:mod:`~distil_core.training.base_weights`)."""
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
        "method": learner.config.method,  # what trained these weights and this optimizer state
        "config": trained_record(learner.config),  # and with what: what a resumed run must match
        **({"base": base} if base else {}),  # and from which base weights
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


def resume_point(run_dir: str) -> str:
    """The checkpoint a resume of ``run_dir`` continues from (:func:`latest_checkpoint`); a
    DistilError saying what to do when there is none. Asked before anything slow is built."""
    path = latest_checkpoint(run_dir)
    if path is None:
        raise DistilError(f"--resume: no checkpoint in {run_dir!r}/checkpoints to continue from; start the run "
                          "again with --overwrite in place of --resume.")
    return path


def recorded_config(path: str) -> Optional[dict[str, Any]]:
    """The config checkpoint ``path`` records having been trained with
    (:func:`~distil_core.config.trained_record`; None in one written before checkpoints recorded
    it). Read before anything slow is built, its tensors memory-mapped rather than read; a
    checkpoint that cannot be read gives None here, and its one-line error when it is restored."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - whatever it is, restore_training names it
        return None
    config = state.get("config") if isinstance(state, dict) else None
    return config if isinstance(config, dict) else None


def restore_training(learner: Any, run_dir: str, base: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Load the latest checkpoint of ``run_dir`` into the learner (policy, optimizer, schedule,
    expert, RNG); returns the checkpoint's state for the trainer's own progress. ``base``: the base
    model this session started from (rank 0's), refused where it is not the checkpoint's
    (:func:`~distil_core.training.base_weights.changed_base`); collective."""
    path = resume_point(run_dir)
    state, where = load_checkpoint(path), f"checkpoint {path}"
    if isinstance(state.get("method"), str) and state["method"] != learner.config.method:  # a checkpoint copied in
        raise DistilError(f"{path}: a checkpoint of a {state['method']} run, and this run trains with "
                          f"{learner.config.method}; resume it with its own run's config, or start this run again "
                          "(--overwrite).")
    changed = changed_base(path, state.get("base"), base, learner) if learner.world.main else None
    changed = learner.world.gather(changed)[0]
    if changed:
        raise DistilError(changed)
    if learner.sharded:
        fsdp.load_state(learner.model, learner.optimizer, state["model"], state["optimizer"], where=where)
    else:
        load_policy_state(learner.model, state["model"], where=where)
        with part_of(path, "optimizer"):
            learner.optimizer.load_state_dict(state["optimizer"])
            check_optimizer_shapes(learner.optimizer)
    with part_of(path, "scheduler"):
        learner.scheduler.load_state_dict(state["scheduler"])
    loader = getattr(learner.runtime.expert, "load_state_dict", None)
    if callable(loader):
        loader(state.get("expert", {}))
    with part_of(path, "rng"):
        set_rng_state(state["rng"])
    return state


@contextlib.contextmanager
def part_of(path: str, part: str) -> Iterator[None]:
    """A part of checkpoint ``path`` that torch or Python cannot take back (an optimizer state of
    another model, an empty RNG state) is :func:`damaged`, named, rather than a traceback."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        problem = f"it lacks {exc}" if isinstance(exc, KeyError) else first_line(exc) or type(exc).__name__
        raise damaged(path, f"its {part} state does not fit this run: {problem}") from None


def check_optimizer_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Each per-parameter tensor of a loaded optimizer state (Adam's moments) has its parameter's
    shape; ``load_state_dict`` does not check it, and a mismatch would fail in the first step."""
    for param, slots in optimizer.state.items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, its parameter {tuple(param.shape)}")
