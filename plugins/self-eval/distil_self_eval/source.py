"""The ``self_eval`` feedback source: a model critiques each response; the critique is feedback.

The trainer hands the source a whole step's graded rollouts at once through
:meth:`SelfEvalFeedback.feedback_batch`, so a step's critiques cost one ``generate`` call per
``batch_size`` prompts. :meth:`SelfEvalFeedback.feedback` (one rollout) is the same path with
a batch of one.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from distil_core import ConfigError
from distil_core import Feedback, Problem, Rollout, Verdict

from .critics import Critique, build_critic
from .template import DEFAULT_TEMPLATE, CritiqueTemplate

SOURCE = "self_eval"
KIND = "self_evaluation"

Item = tuple[Problem, Rollout, Verdict, Sequence[tuple[Rollout, Verdict]]]


class SelfEvalFeedback:
    """A model critiques each failed response with a configurable prompt (kind ``self_evaluation``).

    ``model``: ``student`` (the run's policy, live weights), a local model directory, or
    ``{expert: NAME, options: {...}}`` for a registered expert with ``generate(prompts)``.
    ``template``: the critique request, with ``{problem}``, ``{response}``, ``{verdict}``,
    ``{score}``, ``{reference}`` or ``{answer}``; checked when the source is built.
    """

    def __init__(
        self,
        runtime: Any = None,
        model: Any = "student",
        template: str = DEFAULT_TEMPLATE,
        only_failed: bool = True,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        max_chars: Optional[int] = 600,
        batch_size: int = 64,
        system_prompt: Optional[str] = None,
    ):
        self.template = CritiqueTemplate(template, _where("template"))
        self.only_failed = _flag(only_failed, "only_failed")
        self.max_new_tokens = _count(max_new_tokens, "max_new_tokens")
        self.batch_size = _count(batch_size, "batch_size")
        self.max_chars = None if max_chars is None else _count(max_chars, "max_chars")
        # NaN compares false with everything, so `temperature < 0` alone would let it (and inf) through.
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
            raise ConfigError(f"{_where('temperature')} must be a number >= 0, and finite; 0 means greedy (got {temperature!r}).")
        self.temperature = float(temperature)
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ConfigError(f"{_where('system_prompt')} must be a string (got {system_prompt!r}).")
        self.system_prompt = system_prompt
        self.critic = build_critic(model, runtime, _where("model"))
        self._check_chat_template()

    def _check_chat_template(self) -> None:
        """Render a critique request through a local critic's chat template once, now.

        Chat templates may refuse what a conversation holds; many refuse a system message. The
        first critiques are written after the run's first evaluation, so a refusal found then
        costs that evaluation and is reported as a damaged chat template; found here, it stops
        the run before anything starts, naming the option to change. A critic that writes
        through ``generate`` (an API) has no chat template here to try."""
        refusal = getattr(self.critic, "refusal", None)
        if refusal is None:
            return
        request = [{"role": "user", "content": self.template.sample()}]
        said = refusal(self._with_system(request))
        if said is None:
            return
        label = self.critic.label
        if self.system_prompt and refusal(request) is None:
            raise ConfigError(
                f"{_where('system_prompt')}: the chat template of the critic ({label!r}) refuses a system message "
                f"({said}); it renders the critique request without one. Leave system_prompt out and put its "
                "instructions at the start of option 'template', or choose a critic (option 'model') whose chat "
                "template takes a system message."
            )
        raise ConfigError(
            f"{_where('model')}: the chat template of the critic ({label!r}) cannot render a critique request "
            f"({said}). Restore its chat_template.jinja (or tokenizer_config.json), or choose another critic."
        )

    def _with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system_prompt}, *messages] if self.system_prompt else messages

    def messages(self, problem: Problem, rollout: Rollout, verdict: Verdict) -> list[dict[str, str]]:
        """The conversation the critic answers: the rendered template as one user message."""
        return self._with_system([{"role": "user", "content": self.template.render(problem, rollout, verdict)}])

    def feedback(
        self,
        problem: Problem,
        rollout: Rollout,
        verdict: Verdict,
        group: Sequence[tuple[Rollout, Verdict]] = (),
    ) -> list[Feedback]:
        return self.feedback_batch([(problem, rollout, verdict, group)])[0]

    def feedback_batch(self, items: Sequence[Item]) -> list[list[Feedback]]:
        """Feedback for many graded rollouts: one ``generate`` call per ``batch_size`` critiques."""
        todo = [i for i, (_, _, verdict, _) in enumerate(items) if not (self.only_failed and verdict.passed)]
        conversations = [self.messages(*items[i][:3]) for i in todo]
        critiques: list[Critique] = []
        for start in range(0, len(conversations), self.batch_size):
            chunk = conversations[start : start + self.batch_size]
            critiques.extend(self.critic.write(chunk, self.max_new_tokens, self.temperature))
        out: list[list[Feedback]] = [[] for _ in items]
        for i, critique in zip(todo, critiques):
            item = self._item(critique)
            if item is not None:
                out[i].append(item)
        return out

    def _item(self, critique: Critique) -> Optional[Feedback]:
        text = critique.text.strip()
        if not text:
            return None
        truncated = self.max_chars is not None and len(text) > self.max_chars
        if truncated:
            text = text[: self.max_chars - 1].rstrip() + "…"
        data: dict[str, Any] = {"model": self.critic.label, "truncated": truncated}
        if critique.tokens is not None:
            data["tokens"] = critique.tokens
            data["finished"] = critique.finished
        return Feedback(source=SOURCE, kind=KIND, text=text, data=data)


def _where(option: str) -> str:
    return f"feedback source {SOURCE!r}: option {option!r}"


def _flag(value: Any, option: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{_where(option)} must be true or false (got {value!r}).")
    return value


def _count(value: Any, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{_where(option)} must be a whole number >= 1 (got {value!r}).")
    return value
