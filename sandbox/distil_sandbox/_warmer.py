"""The warmer: warm sandboxes (:mod:`._warm`) kept ready per shape of job, on one thread.

What bubblewrap spends most of its time on — creating the namespaces and mounts — depends only
on a job's language and limits (its *shape*, :func:`shape_of`), not on its code, files or
stdin. A :class:`Warmer` keeps ``spares`` sandboxes per shape in use (1 unless asked for more),
starts a replacement as soon as one is taken, discards those of a shape unused for ``idle_s``,
and all of them when it is closed or the interpreter exits. It starts them all from one
long-lived daemon thread: bubblewrap's ``--die-with-parent`` fires when the *thread* that
started it exits, so no short-lived caller thread may start one.
"""

from __future__ import annotations

import atexit
import math
import os
import select
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

from ._warm import WarmSandbox
from .result import Job

IDLE_S = 20.0  # a shape unused this long has its warm sandboxes discarded
MAX_SPARES = 32  # warm sandboxes kept per shape, at most
MAX_FAILURES = 3  # a shape whose sandboxes fail this often in a row is warmed again only after idle_s
READY_S = 10.0  # how long a sandbox may take to set up before it counts as failed


def shape_of(job: Job) -> tuple:
    """What a warm sandbox must share with a job to run it: everything that goes into
    bubblewrap's arguments or the rlimits (RLIMIT_CPU is the timeout rounded up)."""
    return (
        job.language,
        math.ceil(job.timeout_s),
        job.memory_mb,
        job.max_processes,
        job.max_file_mb,
        job.max_open_files,
        job.work_mb,
    )


@dataclass
class _Shape:
    template: Job  # a job of this shape, its code, files and stdin left out
    last_used: float
    spares: int = 1
    failures: int = 0  # in a row: sandboxes that did not set up, died waiting, or failed a job
    failed_at: float = 0.0
    boxes: list[WarmSandbox] = field(default_factory=list)  # oldest first, set up or not yet

    def fail(self) -> None:
        self.failures += 1
        self.failed_at = time.monotonic()

    def resting(self, now: float, idle_s: float) -> bool:
        """Whether the shape failed too often in a row, within the last ``idle_s``."""
        return self.failures >= MAX_FAILURES and now - self.failed_at < idle_s

    def set_up(self) -> int:
        return sum(box.set_up for box in self.boxes)


class Warmer:
    """Warm sandboxes per shape, started by ``start(template_job)`` on one daemon thread.

    ``take(job)`` returns a sandbox of the job's shape, or None at once (the job then runs cold);
    either way it marks the shape as in use. The thread starts a sandbox whenever a shape in use
    has fewer than its spares, then watches for the bootstrap's :data:`READY`. ``take`` prefers
    a sandbox already set up, but takes one still setting up rather than none: the job then
    waits for the rest, less than a cold start. ``stats`` counts jobs run ``warm`` and ``cold``,
    sandboxes ``started``, and those ``discarded`` unused (idle, dead, failed, or closed).
    """

    def __init__(self, start: Callable[[Job], WarmSandbox], *, idle_s: float = IDLE_S, enabled: bool = True) -> None:
        self.enabled = enabled
        self.idle_s = idle_s
        self.stats = {"warm": 0, "cold": 0, "started": 0, "discarded": 0}
        self._start = start
        self._cond = threading.Condition()
        self._shapes: dict[tuple, _Shape] = {}
        self._thread: Optional[threading.Thread] = None
        self._wake_r: Optional[int] = None  # a pipe that wakes the thread
        self._wake_w: Optional[int] = None
        self._closed = False
        _WARMERS.add(self)

    def take(self, job: Job) -> Optional[WarmSandbox]:
        """A live warm sandbox for ``job``'s shape, or None; never waits for one. Call
        :meth:`wake` once the job's program has started: its replacement starts then, not
        before, so that starting it slows down neither the hand-over nor the bootstrap."""
        if not self.enabled:
            return None
        dead = []
        box = None
        with self._cond:
            if self._closed:
                return None
            shape = self._in_use(job, time.monotonic())
            for candidate in sorted(shape.boxes, key=lambda b: not b.set_up):
                shape.boxes.remove(candidate)
                if candidate.alive():
                    box = candidate
                    break
                dead.append(candidate)
                shape.fail()
            self.stats["discarded"] += len(dead)
        if box is None:
            self.wake()
        for candidate in dead:
            candidate.discard()
        return box

    def wake(self) -> None:
        """Have the thread look for work: a sandbox was taken, or a shape asked for."""
        with self._cond:
            if self._wake_w is not None:
                try:
                    os.write(self._wake_w, b"\0")
                except BlockingIOError:  # it has enough wake-ups pending
                    pass

    def done(self, job: Job, *, warm: bool, failed: bool = False) -> None:
        """Count a finished job: run ``warm`` or cold, after a warm sandbox ``failed`` or not."""
        with self._cond:
            self.stats["warm" if warm else "cold"] += 1
            shape = self._shapes.get(shape_of(job)) if self.enabled and not self._closed else None
            if shape is not None:
                shape.last_used = time.monotonic()
                if failed:
                    shape.fail()
                elif warm:
                    shape.failures = 0
        self.wake()  # if the program never started, nothing has asked for a replacement yet

    def keep_warm(self, job: Job, count: int = 1, wait_s: float = 0.0) -> bool:
        """Keep ``count`` sandboxes of ``job``'s shape (for ``idle_s`` from now, and from each job
        of that shape); wait up to ``wait_s`` for them to be set up. True once they are."""
        if not self.enabled:
            return False
        count = min(count, MAX_SPARES)
        deadline = time.monotonic() + wait_s
        with self._cond:
            if self._closed:
                return False
            shape = self._in_use(job, time.monotonic())
            shape.spares = max(shape.spares, count)
        self.wake()
        with self._cond:
            while shape.set_up() < count:
                left = deadline - time.monotonic()
                gone = self._closed or self._shapes.get(shape_of(job)) is not shape
                if left <= 0 or gone or shape.resting(time.monotonic(), self.idle_s):
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        """Discard every warm sandbox and stop warming; later jobs run cold. Safe to call twice."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            boxes = [box for shape in self._shapes.values() for box in shape.boxes]
            self._shapes.clear()
            self.stats["discarded"] += len(boxes)
            self._cond.notify_all()
        self.wake()
        for box in boxes:
            box.discard()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)  # it discards a sandbox it was starting
        with self._cond:
            for fd in (self._wake_r, self._wake_w):
                if fd is not None:
                    os.close(fd)
            self._wake_r = self._wake_w = None
        atexit.unregister(self.close)

    def _in_use(self, job: Job, now: float) -> _Shape:
        """The state of ``job``'s shape, created if new, marked as used now; starts the thread."""
        key = shape_of(job)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = _Shape(template=replace(job, code="", stdin=None, files={}), last_used=now)
        shape.last_used = now
        if self._thread is None:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_w, False)
            self._thread = threading.Thread(target=self._loop, name="distil-sandbox-warmer", daemon=True)
            self._thread.start()
            atexit.register(self.close)
        return shape

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                todo, doomed, watched, wait = self._next_step()
                wake_r = self._wake_r
            for box in doomed:
                box.discard()
            if todo is not None:
                self._start_one(*todo)
                continue
            self._watch(wake_r, watched, wait)

    def _next_step(self) -> tuple[Optional[tuple[tuple, Job]], list[WarmSandbox], list[WarmSandbox], Optional[float]]:
        """(shape key and template to start a sandbox for, or None; sandboxes to discard;
        sandboxes setting up; how long to wait otherwise). Shapes unused for ``idle_s`` are
        forgotten with their sandboxes; a sandbox not set up within :data:`READY_S` fails."""
        now = time.monotonic()
        todo, doomed, watched, wait = None, [], [], None
        for key, shape in list(self._shapes.items()):
            expires = shape.last_used + self.idle_s
            if now >= expires:
                doomed += shape.boxes
                del self._shapes[key]
                continue
            wait = expires - now if wait is None else min(wait, expires - now)
            for box in [box for box in shape.boxes if not box.set_up]:
                if now - box.started_at >= READY_S:
                    shape.boxes.remove(box)
                    shape.fail()
                    doomed.append(box)
                else:
                    watched.append(box)
                    wait = min(wait, box.started_at + READY_S - now)  # wait is set: the shape expires
            if todo is None and len(shape.boxes) < shape.spares and not shape.resting(now, self.idle_s):
                todo = (key, shape.template)
        self.stats["discarded"] += len(doomed)
        return todo, doomed, watched, wait

    def _watch(self, wake_r: int, watched: list[WarmSandbox], wait: Optional[float]) -> None:
        """Sleep until woken, a watched sandbox says :data:`READY` (or dies), or ``wait`` is over."""
        fds = {box.proc.stdout.fileno(): box for box in watched}
        poller = select.poll()
        for fd in (wake_r, *fds):
            poller.register(fd, select.POLLIN)
        events = poller.poll(None if wait is None else max(0, int(wait * 1000) + 1))
        if any(fd == wake_r for fd, _ in events):
            os.read(wake_r, 4096)
        failed = []
        with self._cond:
            for fd, _ in events:
                box = fds.get(fd)
                shape = next((s for s in self._shapes.values() if box in s.boxes), None) if box else None
                if shape is None:  # taken meanwhile: its job reads the byte
                    continue
                if box.read_ready():
                    self._cond.notify_all()
                else:
                    shape.boxes.remove(box)
                    shape.fail()
                    self.stats["discarded"] += 1
                    failed.append(box)
        for box in failed:
            box.discard()

    def _start_one(self, key: tuple, template: Job) -> None:
        try:
            box = self._start(template)
        except Exception:  # a sandbox that cannot start is the shape's failure; its jobs run cold
            with self._cond:
                shape = self._shapes.get(key)
                if shape is not None:
                    shape.fail()
            return
        with self._cond:
            self.stats["started"] += 1
            shape = self._shapes.get(key)
            wanted = not self._closed and shape is not None and len(shape.boxes) < shape.spares
            if wanted:
                shape.boxes.append(box)
            else:
                self.stats["discarded"] += 1
        if not wanted:
            box.discard()

    def _forget_after_fork(self) -> None:
        """In a forked child: the sandboxes are the parent's; warm anew if asked. They are kept
        referenced, never closed: closing them could wait on a lock held at the fork."""
        _INHERITED.append(self._shapes)
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._shapes = {}
        self._cond = threading.Condition()
        self._thread = None
        self._wake_r = self._wake_w = None


_WARMERS: "weakref.WeakSet[Warmer]" = weakref.WeakSet()
_INHERITED: list = []  # what a forked child inherited of its parent's warm sandboxes


def _after_fork_in_child() -> None:
    for warmer in list(_WARMERS):
        warmer._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
