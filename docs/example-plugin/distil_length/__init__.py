"""An example DistIL plugin: one feedback source and one expert adapter.

- feedback source ``length_critic``: tells the expert how far a failed answer's length is
  from the reference answer's (kind ``critique``);
- expert ``function``: turns any Python function ``rewrite(prompt, response) -> str`` into a
  text-level expert; the engine re-tokenises its output with the student's tokenizer and
  trains on it with sequence cross-entropy. ``sort_digits`` is such a function, for the
  built-in ``digits`` task.
"""

import importlib

from distil_core import ExpertCapability, ExpertSignal, Feedback, hookimpl


class LengthCritic:
    """Says how many characters too long or too short a failed answer is."""

    def __init__(self, min_gap: int = 1):  # options come from the config
        if min_gap < 0:
            raise ValueError("length_critic: min_gap must be >= 0")
        self.min_gap = min_gap

    def feedback(self, problem, rollout, verdict, group):
        if verdict.passed or problem.reference is None:
            return []
        gap = len(rollout.response_text.strip()) - len(str(problem.reference))
        if abs(gap) < self.min_gap:
            return []
        word = "longer" if gap > 0 else "shorter"
        return [Feedback(source="length_critic", kind="critique", data={"gap": gap},
                         text=f"Your answer is {abs(gap)} characters {word} than the correct one.")]


class FunctionExpert:
    """A text-level expert backed by a Python function given as "module:function"."""

    def __init__(self, function: str):
        module_name, _, attr = function.partition(":")
        try:
            self.rewrite = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(f"expert 'function': cannot load {function!r} ({exc}); use 'module:function'") from None

    @property
    def capability(self):  # optional: for people and tools that inspect the expert
        return ExpertCapability(access="text", same_tokenizer=False)

    def score(self, queries):
        signals = []
        for q in queries:
            prompt = q.context_messages[-1]["content"] if q.context_messages else ""
            try:
                signals.append(ExpertSignal(access="text", text=self.rewrite(prompt, q.response_text)))
            except Exception as exc:  # one bad query is skipped and counted, training goes on
                signals.append(ExpertSignal.failed("text", f"{type(exc).__name__}: {exc}"))
        return signals


def sort_digits(prompt, response):
    """A rewrite for the built-in ``digits`` task with ``op: sort``: the sorted digits."""
    first_line = prompt.splitlines()[0] if prompt else ""
    return "".join(sorted(ch for ch in first_line if ch.isdigit()))


@hookimpl
def register_feedback_sources(register):
    register("length_critic", LengthCritic)


@hookimpl
def register_experts(register):
    register("function", FunctionExpert)
