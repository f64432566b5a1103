"""The protocols plugins implement. The core only calls them.

Each method may be a plain function or a coroutine function: the engine calls
:func:`resolve` on the result, so ``async def feedback(...)`` works as well as ``def``.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any, Awaitable, Protocol, Sequence, TypeVar, Union, runtime_checkable

from distil_core.types import ExpertCapability, ExpertQuery, ExpertSignal, Feedback, Problem, Rollout, Verdict

T = TypeVar("T")
MaybeAwaitable = Union[T, Awaitable[T]]


@runtime_checkable
class Verifier(Protocol):
    """Grades one rollout. ``score`` in [0, 1] is the reward GRPO uses."""

    def verify(self, problem: Problem, rollout: Rollout) -> MaybeAwaitable[Verdict]: ...


@runtime_checkable
class FeedbackSource(Protocol):
    """Turns a graded rollout into feedback items for the expert's context.

    ``group`` holds all rollouts of the same problem with their verdicts, so a source can
    compare siblings. Return an empty list when there is nothing useful to say.

    Optional: ``feedback_batch(items) -> list[list[Feedback]]``, where each item is
    ``(problem, rollout, verdict, group)``. When a source has it, the trainer calls it once
    per step with every rollout instead of calling ``feedback`` per rollout (a source that
    runs a model batches its work this way); it returns one list per item, in order.
    """

    def feedback(
        self,
        problem: Problem,
        rollout: Rollout,
        verdict: Verdict,
        group: Sequence[tuple[Rollout, Verdict]],
    ) -> MaybeAwaitable[list[Feedback]]: ...


@runtime_checkable
class Expert(Protocol):
    """Gives its next-token distribution (or the best it can) on the student's states."""

    @property
    def capability(self) -> ExpertCapability: ...

    def score(self, queries: Sequence[ExpertQuery]) -> MaybeAwaitable[list[ExpertSignal]]: ...


@runtime_checkable
class Task(Protocol):
    """A source of problems. ``split`` is "train" or "test" (held out)."""

    def problems(self, split: str) -> Sequence[Problem]: ...


def resolve(value: MaybeAwaitable[T]) -> T:
    """Return ``value``, awaiting it first when a plugin gave a coroutine."""
    if not inspect.isawaitable(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(value))
    # Called from inside a running loop (a notebook, say): finish it on a helper thread.
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(_await(value))
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=runner)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _await(value: Awaitable[T]) -> T:
    return await value


async def gather_resolved(values: Sequence[MaybeAwaitable[T]]) -> list[T]:
    """Await every awaitable among ``values`` concurrently; plain values pass through."""
    pending = [v if inspect.isawaitable(v) else _ready(v) for v in values]
    return list(await asyncio.gather(*pending))


async def _ready(value: T) -> T:
    return value


def resolve_all(values: Sequence[MaybeAwaitable[T]]) -> list[T]:
    """Resolve many plugin results at once, running async ones concurrently."""
    if not any(inspect.isawaitable(v) for v in values):
        return list(values)
    return resolve(gather_resolved(values))


__all__ = [
    "Verifier",
    "FeedbackSource",
    "Expert",
    "Task",
    "ExpertCapability",
    "ExpertQuery",
    "ExpertSignal",
    "Feedback",
    "Problem",
    "Rollout",
    "Verdict",
    "resolve",
    "resolve_all",
]
