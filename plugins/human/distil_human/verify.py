"""A reviewer's solution, graded by the run's own verifier before it is stored.

A solution becomes a demonstration in the expert's context: a wrong one would teach the wrong
answer as if it were right. So both front ends rebuild the run's task and verifier from its
``config.yaml`` (through the plugin host, as the trainer does) and grade the solution like a
sampled response. A failing solution is refused with the verifier's reason; a reviewer who
knows better may store it anyway, and it is then kept with ``verified: false``.

Where no verifier can be built (a run directory without ``config.yaml``, a plugin that is not
installed here, a problem the task no longer has), the solution is "not checked": it can be
stored, with ``verified`` left empty, and the reason is shown.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Optional

from distil_core import DistilError, Problem, Rollout, get_host, resolve
from distil_core.config import load_config

SPLITS = ("train", "test")


@dataclass
class SolutionCheck:
    """``verified``: True (passed), False (failed), None (could not be checked); ``reason`` says why."""

    verified: Optional[bool]
    reason: str

    @property
    def refused(self) -> bool:
        return self.verified is False


class SolutionChecker:
    """The task and verifier of the run in ``run_dir``, built on first use and kept."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self._lock = threading.Lock()
        self._built = False
        self._problems: dict[str, Problem] = {}
        self._verifier: Any = None
        self._name = ""
        self._unavailable = ""

    def _build(self) -> None:
        self._built = True
        path = os.path.join(self.run_dir, "config.yaml")
        if not os.path.exists(path):
            self._unavailable = f"{path} does not exist, so the run's verifier cannot be built"
            return
        try:
            config = load_config(path)
            host = get_host()
            task = host.build("task", config.task.name, config.task.options)
            self._verifier = host.build("verifier", config.verifier.name, config.verifier.options)
            for split in SPLITS:
                for problem in task.problems(split):
                    self._problems.setdefault(problem.id, problem)
        except (DistilError, ValueError, TypeError, OSError, ImportError) as exc:
            self._unavailable = f"the run's task or verifier could not be built from {path} ({exc})"
            return
        self._name = config.verifier.name

    def check(self, problem_id: str, text: str) -> SolutionCheck:
        """Grade ``text`` as a response to ``problem_id`` with the run's verifier."""
        # the desk saves from several threads: build once, and grade one solution at a time,
        # since a verifier plugin need not be safe to call from two threads at once
        with self._lock:
            if not self._built:
                self._build()
            if self._unavailable:
                return SolutionCheck(None, f"not checked: {self._unavailable}")
            problem = self._problems.get(problem_id)
            if problem is None:
                return SolutionCheck(None, f"not checked: the run's task has no problem {problem_id!r}")
            rollout = Rollout(problem_id=problem_id, group_index=0, response_text=text, response_ids=[])
            try:
                verdict = resolve(self._verifier.verify(problem, rollout))
            except Exception as exc:  # a verifier plugin's own failure (a sandbox missing, say)
                return SolutionCheck(None, f"not checked: verifier {self._name!r} failed ({type(exc).__name__}: {exc})")
        details = "; ".join(f"{k}: {_short(v)}" for k, v in verdict.details.items())
        said = (f"verifier {self._name!r}: {'passed' if verdict.passed else 'failed'}, score {verdict.score:.2f}, "
                f"answer {verdict.answer!r}" + (f" ({details})" if details else ""))
        return SolutionCheck(verdict.passed, said)


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
