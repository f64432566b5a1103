"""``math-verify``'s judgement of two answers, bounded in time on any thread.

math-verify bounds its parsing and comparison with ``SIGALRM``, which only the main thread can
receive. Grading also runs on a helper thread (``rollout.overlap_grading: true``), where a short
hostile answer (``\\boxed{9^{9^{9^{9}}}}``) would hold sympy, and with it the GIL and the whole
run, for as long as sympy takes. Off the main thread the judgement therefore goes to a child
process, whose main thread has the alarm; one that still overruns is killed, its answer judged
not equal, and a new child starts on the next call.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
import threading
from typing import Optional


def math_verify_equal(answer: str, reference: str, timeout_s: float = 5.0) -> bool:
    """Whether math-verify judges ``answer`` equal to ``reference``; False for anything it cannot
    parse, and for a judgement that does not finish within about ``timeout_s`` per stage."""
    if threading.current_thread() is threading.main_thread():
        return judged_here(answer, reference, timeout_s)
    return _child(timeout_s).judge(answer, reference)


def judged_here(answer: str, reference: str, timeout_s: float) -> bool:
    """math-verify in this (main) thread, with its own alarm-based timeouts."""
    from math_verify import parse, verify

    seconds = max(1, round(timeout_s))  # math-verify's alarm counts whole seconds
    try:
        gold = parse(f"${reference}$", parsing_timeout=seconds)
        pred = parse(f"${answer}$", parsing_timeout=seconds)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=seconds))
    except Exception:  # math-verify raises on pathological input; that answer is simply not equal
        return False


class ChildJudge:
    """One child process (``python -m distil_tasks.judge``, JSON lines over its stdin and stdout)
    that judges pairs in turn; started on first use, replaced once killed. A command, not a
    multiprocessing child: those re-import the parent's main script, which a user's own
    training script may not guard with ``if __name__ == "__main__"``."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.lock = threading.Lock()
        self.process: Optional[subprocess.Popen] = None

    def judge(self, answer: str, reference: str) -> bool:
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                self.start()
            try:
                self.process.stdin.write(json.dumps([answer, reference]) + "\n")
                self.process.stdin.flush()
                # three stages (two parses and the comparison), each bounded in the child, and a margin
                line = self.read_line(3 * max(1, round(self.timeout_s)) + 5)
                if line:
                    return bool(json.loads(line))
            except (OSError, ValueError):  # the child died (out of memory, killed) or wrote nonsense
                pass
            self.stop()
            return False

    def read_line(self, timeout_s: float) -> Optional[str]:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        return self.process.stdout.readline() if ready else None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "distil_tasks.judge", str(self.timeout_s)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, encoding="utf-8",
            start_new_session=True,  # Ctrl-C is the parent's to handle
        )
        # ready: its imports are done, so they do not count against the first answer
        if self.read_line(120) != "ready\n":
            self.stop()
            raise RuntimeError("math_answer: the math-verify judge process did not start (python -m distil_tasks.judge)")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
        self.process = None


_JUDGES: dict[float, ChildJudge] = {}
_JUDGES_LOCK = threading.Lock()


def _child(timeout_s: float) -> ChildJudge:
    with _JUDGES_LOCK:
        if timeout_s not in _JUDGES:
            _JUDGES[timeout_s] = ChildJudge(timeout_s)
        return _JUDGES[timeout_s]


def serve(timeout_s: float) -> None:
    """The child's loop: judge each pair it reads, until its input closes."""
    import math_verify  # noqa: F401  (before "ready")

    print("ready", flush=True)
    for line in sys.stdin:
        answer, reference = json.loads(line)
        print(json.dumps(judged_here(answer, reference, timeout_s)), flush=True)


if __name__ == "__main__":
    serve(float(sys.argv[1]))


__all__ = ["math_verify_equal", "judged_here", "ChildJudge"]
