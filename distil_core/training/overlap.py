"""``rollout.overlap_grading``: step k's rollouts graded on a helper thread while step k+1's are sampled.

Grading can be the slow phase of a step (``code_exec`` runs every rollout's tests in a sandbox),
and while it runs the policy waits. Sampling the next step's rollouts meanwhile hides it, at a
price every method pays: step k+1's rollouts are then sampled *before* step k's update, by the
policy that sampled step k, so the update of step k+1 is one step off-policy. There is no method
for which this leaves the update unchanged — GRPO's advantages, DistIL's success term, the
demonstrations in the expert's context and every feedback source read step k's verdicts, and
step k+1's sampling needs the policy that step k's update makes — so the option is off by
default, and a run with it is not the run without it.

What keeps the off-policy step honest: when an ahead batch is sampled, the log-probs of the
policy that sampled it are recorded in one ``no_grad`` pass (itself overlapped with the
grading), and the update reads them as its old log-probs, exactly as it does for a second pass
over a batch (``optim.epochs``): GRPO through its clipped ratio, the distillation losses through
their truncated per-token importance weights (:mod:`~distil_core.losses.importance`).

The helper thread only grades: it calls the verifier and nothing else, while the model, the
expert and the feedback sources stay on the trainer's thread. A verifier that waits on
sandboxed processes (``code_exec``) releases the GIL while it waits, so the two really overlap.
A run resumed from a checkpoint samples its first step again, by the restored policy: the batch
sampled ahead is not part of a checkpoint.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import torch

from distil_core.training.epochs import score_rows
from distil_core.training.step import Clock, StepBatch, verify
from distil_core.training.update import Learner, micro_batches


class GradingOverlap:
    """Batches sampled one step ahead, by step number, and the grading that runs meanwhile."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.ahead: dict[int, StepBatch] = {}

    def take(self, step: int) -> Optional[StepBatch]:
        """Step ``step``'s batch when it was sampled during the step before; else None."""
        return self.ahead.pop(step, None)

    def grade(self, batch: StepBatch, clock: Clock, *, next_step: Optional[int] = None,
              sample: Optional[Callable[[int], StepBatch]] = None) -> None:
        """Fill ``batch.verdicts``. With ``next_step``, the grading runs on a helper thread while
        ``sample(next_step)`` samples that step's batch (kept for :meth:`take`, with its sampling
        policy's log-probs); its time counts as generation, and only the wait for the verdicts
        after it as verification."""
        verifier, name = self.learner.runtime.verifier, self.learner.config.verifier.name
        if next_step is None or sample is None:
            batch.verdicts = verify(verifier, name, batch.problems, batch.rollouts, batch.n)
            clock.lap("verify")
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="distil-grading") as pool:
            graded = pool.submit(verify, verifier, name, batch.problems, batch.rollouts, batch.n)
            ahead = sample(next_step)  # on an error here, leaving the block still waits for the grading
            ahead.behaviour = sampling_logprobs(self.learner, ahead)
            clock.lap("generate")
        batch.verdicts = graded.result()
        clock.lap("verify")
        self.ahead[next_step] = ahead


def sampling_logprobs(learner: Learner, batch: StepBatch) -> list[torch.Tensor]:
    """Each rollout's log-probs under the current policy, which sampled it (``no_grad``, one pass
    per micro-batch of the update, through the same projection the update's old log-probs use)."""
    rows = list(range(len(batch.rollouts)))
    micro = micro_batches(rows, batch.n, learner.config.optim.grad_accum)
    return score_rows(learner, learner.model, [batch.prompts[j // batch.n] for j in rows],
                      [r.response_ids for r in batch.rollouts], micro)


__all__ = ["GradingOverlap", "sampling_logprobs"]
