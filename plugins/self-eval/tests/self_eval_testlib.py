"""Helpers shared by the self_eval tests: graded rollouts, a run stand-in, a text-writing expert."""

from __future__ import annotations

from typing import Any, Optional

from distil_core import ExpertCapability, ExpertSignal, PluginHost, hookimpl, testing
from distil_core.testing import tiny_model

import distil_self_eval.plugin


def graded(text: str, passed: bool, pid: str = "sort-31", reference: Any = "13", answer: Optional[str] = "31", score: Optional[float] = None):
    """(problem, rollout, verdict, group) as the trainer hands them to a source."""
    problem = testing.problem(reference, pid, prompt=f"sort {pid.split('-')[-1]}")
    rollout = testing.rollout(text, pid)
    verdict = testing.verdict(passed, score, answer)
    return problem, rollout, verdict, [(rollout, verdict)]


def student_runtime(seed: int = 0, host: Optional[PluginHost] = None):
    """What a feedback source's factory reads from the run: the policy, its tokenizer, the host."""
    return testing.stub_runtime(model=tiny_model(seed=seed), host=host)


def host_with_plugin(*extra: tuple[Any, str]) -> PluginHost:
    host = PluginHost(load_entrypoints=False)
    host.register_plugin(distil_self_eval.plugin, "self_eval")
    for plugin, name in extra:
        host.register_plugin(plugin, name)
    return host


class GenerateCounter:
    """Wraps ``model.generate`` on one instance: counts calls, batch rows and new tokens."""

    def __init__(self, model: Any):
        self.model, self.calls = model, []
        original = model.generate

        def generate(*args, **kwargs):
            out = original(*args, **kwargs)
            width = kwargs["input_ids"].shape[1]
            self.calls.append({"rows": out.shape[0], "new_tokens": out[:, width:].tolist(), "max_new_tokens": kwargs["max_new_tokens"]})
            return out

        model.generate = generate


class WriterExpert:
    """An expert that writes text: ``generate(prompts)`` returns ``replies`` in turn and keeps the prompts."""

    def __init__(self, replies: list = ("Check the order of the digits.",)):
        self.replies, self.seen, self.keywords = list(replies), [], []

    @property
    def capability(self):
        return ExpertCapability(access="text", same_tokenizer=False)

    def score(self, queries):
        return [ExpertSignal(access="text", text="") for _ in queries]

    def generate(self, prompts, max_new_tokens=None):
        self.seen.append(prompts)
        self.keywords.append({"max_new_tokens": max_new_tokens})
        return [self.replies[i % len(self.replies)] for i in range(len(prompts))]


class WriterPlugin:
    @hookimpl
    def register_experts(register):
        register("writer", WriterExpert)
