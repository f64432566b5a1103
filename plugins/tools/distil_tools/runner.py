"""Running tool calls on threads of their own, a bounded number at once, each under a deadline.

A tool is arbitrary code (a third party's too) and a thread cannot be killed, so a call that
hangs must cost neither the step nor the process:

* each call runs on a new **daemon** thread: one stuck forever cannot keep the interpreter from
  exiting on Ctrl-C (``asyncio.to_thread`` used the event loop's default executor, whose
  threads ``asyncio.run`` and the interpreter both wait for at exit);
* the caller waits at most ``deadline_s`` from the moment the call starts running, then gives
  up on it: its slot is freed at once, so an abandoned call holds no capacity, and its thread is
  left to finish (or not) in the background;
* at most ``parallel`` calls run at once (a slot each); further calls wait for a slot before
  their deadline starts, so a busy step delays calls instead of failing them;
* a caller that stops waiting (Ctrl-C, a cancelled step) gives up its calls the same way: one
  without a slot never starts, a running one gives its slot back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, Optional


class CallRunner:
    """Runs ``function()`` calls: at most ``parallel`` at once, each abandoned after ``deadline_s``."""

    def __init__(self, deadline_s: float, parallel: int):
        self.deadline_s, self.parallel = deadline_s, parallel
        self._slots = threading.Semaphore(parallel)
        self._lock = threading.Lock()
        self.running = 0  # calls holding a slot now
        self.most_running = 0  # the most that ever held one at once
        self.abandoned = 0  # running calls given up on: past their deadline, or their caller stopped waiting

    def run(self, function: Callable[[], Any]) -> tuple[bool, Any]:
        """``(True, result)``, or ``(False, None)`` when the deadline passed first. An exception
        the function raised (only ``KeyboardInterrupt`` gets through ``run_tool``) is raised here."""
        call = _Call(self, function)
        try:
            call.started.result()
            return True, call.done.result(timeout=self.deadline_s)
        except concurrent.futures.TimeoutError:
            call.give_up()
            return False, None
        except BaseException:  # Ctrl-C while it waited
            call.give_up()
            raise

    async def run_async(self, function: Callable[[], Any]) -> tuple[bool, Any]:
        """:meth:`run` for a coroutine: the event loop waits, no thread of it blocks."""
        call = _Call(self, function)
        done: Optional[asyncio.Future] = None
        try:
            await asyncio.wrap_future(call.started)
            done = asyncio.wrap_future(call.done)
            finished, _ = await asyncio.wait({done}, timeout=self.deadline_s)
        except BaseException:  # cancelled: Ctrl-C, or a step given up
            call.give_up(done)
            raise
        if not finished:
            call.give_up(done)
            return False, None
        return True, done.result()


class _Call:
    """One call on its daemon thread; ``started`` resolves when it has a slot, ``done`` with its result."""

    def __init__(self, runner: CallRunner, function: Callable[[], Any]):
        self.runner, self.function = runner, function
        self.started: concurrent.futures.Future = concurrent.futures.Future()
        self.done: concurrent.futures.Future = concurrent.futures.Future()
        self._holding: Optional[bool] = None  # None: no slot yet; True: holding one; False: given back
        threading.Thread(target=self._work, name="distil-tool-call", daemon=True).start()

    def _work(self) -> None:
        self.runner._slots.acquire()
        with self.runner._lock:
            self._holding = True
            self.runner.running += 1
            self.runner.most_running = max(self.runner.most_running, self.runner.running)
        # A caller that stopped waiting (Ctrl-C cancels its futures) before the call began: skip it.
        if not self.started.set_running_or_notify_cancel() or not self.done.set_running_or_notify_cancel():
            self._release()
            return
        self.started.set_result(None)
        try:
            result = self.function()
        except BaseException as exc:  # handed to the waiting caller, which raises it
            self.done.set_exception(exc)
        else:
            self.done.set_result(result)
        finally:
            self._release()

    def give_up(self, waiting: Optional[asyncio.Future] = None) -> None:
        """Stop waiting for this call. One that has no slot yet never starts; one that is running
        keeps its thread but gives its slot back at once, so a call stuck forever holds no
        capacity; the event loop's future for it (``waiting``) is cancelled, so a loop closed by
        the time the call ends hears nothing of it."""
        if waiting is not None:
            waiting.cancel()
        if self.started.cancel() or self.done.done():
            return
        with self.runner._lock:
            self.runner.abandoned += 1
        self._release()

    def _release(self) -> None:
        """Give the slot back, once: whichever comes first, the end of the call or its deadline."""
        with self.runner._lock:
            if not self._holding:
                return
            self._holding = False
            self.runner.running -= 1
        self.runner._slots.release()
