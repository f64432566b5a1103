"""The learning-rate schedule: a linear warmup, then a constant rate or a decay over the run.

The rate of a training step's update is ``optim.lr × lr_factor(steps_done)``, where
``steps_done`` counts the earlier training steps whose update was taken (one per batch of
rollouts, however many optimizer steps ``optim.epochs`` × ``optim.minibatches`` make of it; a
batch skipped for a NaN loss counts none). ``metrics.jsonl``'s ``lr`` is that rate.

- warmup: ``(steps_done + 1) / warmup_steps`` for the first ``warmup_steps`` steps;
- ``constant``: 1 after that;
- ``linear`` / ``cosine``: from 1 down to ``min_lr_ratio`` as ``steps_done`` goes from
  ``warmup_steps`` to ``total`` (``train.steps``); the last step of the run still moves
  (its rate is one decay step above the floor), as in the usual warmup-then-decay recipes.

The scheduler is torch's ``LambdaLR`` with a plain function, so its checkpointed state is the
step count and the base rates alone: a resumed run rebuilds the same function from its config
and continues where the schedule stopped. A run resumed with a larger ``train.steps`` decays
over the new total from where it is (the rate jumps up a little, never restarts its warmup).
"""

from __future__ import annotations

import math
from typing import Any

import torch

SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(steps_done: int, *, schedule: str, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """The multiple of ``optim.lr`` that the update after ``steps_done`` scheduled steps uses."""
    if steps_done < warmup:  # the same numbers as min(1, (s + 1) / warmup): warmup / warmup == 1.0
        return (steps_done + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (steps_done - warmup) / max(1, total - warmup))
    if schedule == "linear":
        decay = 1.0 - progress
    elif schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"optim.schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, optim: Any, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over ``optimizer`` for the ``optim`` config section, decaying over ``total_steps``."""
    schedule, warmup, floor = optim.schedule, optim.warmup_steps, optim.min_lr_ratio

    def factor(steps_done: int) -> float:  # a closure, not an object: LambdaLR checkpoints no copy of it
        return lr_factor(steps_done, schedule=schedule, warmup=warmup, total=total_steps, min_ratio=floor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


__all__ = ["SCHEDULES", "build_scheduler", "lr_factor"]
