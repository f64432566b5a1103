"""Plugin methods may be plain functions or coroutine functions: :func:`resolve` gives the value
either way, and :func:`resolve_all` runs a step's coroutines together.

They run the coroutines on a loop of their own (:func:`run_to_end`), which an interrupt does not
keep waiting for a thread a plugin left stuck.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Sequence, TypeVar, Union

T = TypeVar("T")
MaybeAwaitable = Union[T, Awaitable[T]]


def resolve(value: MaybeAwaitable[T]) -> T:
    """Return ``value``, awaiting it first when a plugin gave a coroutine."""
    if not inspect.isawaitable(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_to_end(value)
    # Called from inside a running loop (a notebook, say): finish it on a helper thread.
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = run_to_end(value)
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


def run_to_end(value: Awaitable[T]) -> T:
    """``asyncio.run(value)``, except that an interrupt does not wait for the loop's threads.

    A plugin that runs blocking work with ``asyncio.to_thread`` (a tool, a critic, a client)
    may never get it back: Python cannot stop a thread. ``asyncio.run`` cancels the awaiting
    task at Ctrl-C but then waits for every thread of the loop's executor before it returns,
    so the interrupt waits for the stuck call — for ever — and the user has to press Ctrl-C
    three times or kill the process. Here the executor is let go instead: the interrupt reaches
    the caller at once, and the stuck thread is left to the process's exit (see
    :func:`distil_core.cli.main.main`, which does not wait for it either).
    """
    executor = ThreadPoolExecutor(thread_name_prefix="distil-plugin")
    runner = asyncio.Runner()
    runner.get_loop().set_default_executor(executor)
    try:
        return runner.run(_await(value))
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            executor.shutdown(wait=False, cancel_futures=True)
            # what closing the loop then waits for: a fresh executor with no threads
            runner.get_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        raise
    finally:
        runner.close()


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


__all__ = ["MaybeAwaitable", "resolve", "resolve_all", "run_to_end", "gather_resolved"]
