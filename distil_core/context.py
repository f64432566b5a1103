"""Expert-conditioned contexts: what the expert sees that the student did not.

The expert reads the original problem plus feedback on the student's attempt and, when a
sibling rollout of the same problem succeeded, that sibling as a demonstration — all in the
student's own chat template. Then come exactly the student's response token ids, so the
expert scores the student's own states, position for position (DAgger: the expert labels
the learner's states).
"""

from __future__ import annotations

import re
import weakref
from array import array
from collections import OrderedDict
from typing import Any, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from distil_core.errors import ConfigError
from distil_core.templates import check_format_template
from distil_core.types import ExpertQuery, Feedback, Problem, Rollout, Verdict

_THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


_TEMPLATE_VARIABLES = {
    "demonstration": "a successful sibling's response",
    "feedback": "the feedback",
}


class ContextTemplate(BaseModel):
    """How feedback and demonstrations are rendered into the expert's user message."""

    model_config = ConfigDict(extra="forbid")

    demonstration: str = Field(
        default="Correct solution: {demonstration}",
        description="Rendered when a successful sibling exists. Variable: {demonstration} (required).",
    )
    feedback: str = Field(
        default="Feedback on an earlier unsuccessful attempt: {feedback}",
        description="Rendered when feedback exists. Variable: {feedback} (required).",
    )
    instruction: str = "Solve the original question correctly."
    separator: str = "\n"
    use_demonstrations: bool = True
    success_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    strip_think: bool = True
    max_feedback_chars: Optional[int] = Field(
        default=16_000, ge=100,
        description="The feedback block (every source's text joined) is cut to this many characters, keeping "
        "its head and tail; null: never cut.",
    )

    @field_validator("demonstration", "feedback")
    @classmethod
    def _check_template(cls, text: str, info: ValidationInfo) -> str:
        """Checked at load, so a typo is a config error before training rather than a KeyError
        at the first step with feedback, and a template without its variable cannot silently
        drop what the expert was meant to read."""
        name = info.field_name
        try:
            check_format_template(text, {name: _TEMPLATE_VARIABLES[name]}, f"context.{name}",
                                  required=(name,), example=cls.model_fields[name].default)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return text

    def render(self, question: str, feedback: Sequence[Feedback], demonstration: Optional[str]) -> str:
        return self.rendered(question, feedback, demonstration)[0]

    def rendered(self, question: str, feedback: Sequence[Feedback], demonstration: Optional[str]) -> tuple[str, int]:
        """:meth:`render`'s text, and how many characters of feedback it cut (:meth:`feedback_text`)."""
        parts, cut = [question], 0
        if demonstration is not None:
            parts.append(self.demonstration.format(demonstration=demonstration))
        if feedback:
            block, cut = self.feedback_text(feedback)
            parts.append(self.feedback.format(feedback=block))
        if demonstration is not None or feedback:
            parts.append(self.instruction)
        return self.separator.join(parts), cut

    def feedback_text(self, feedback: Sequence[Feedback]) -> tuple[str, int]:
        """The feedback block the expert reads, and how many characters of it were cut.

        A source's text comes from outside (an execution trace, a tool's output, a person, an
        API): one that runs to megabytes would make every expert forward pass quadratic in it,
        or run past the model's positions. Past ``max_feedback_chars`` the longest items are
        cut, each to an equal share of what the shorter ones leave, so one flood cannot push a
        short correction out; a cut item keeps its head (a trace's first failure) and tail (its
        final error), and says how much went."""
        texts = [f.text for f in feedback]
        joined, limit = self.separator.join(texts), self.max_feedback_chars
        if limit is None or len(joined) <= limit:
            return joined, 0
        room = limit - len(self.separator) * (len(texts) - 1)
        shares = dict.fromkeys(range(len(texts)), 0)
        for rank, i in enumerate(sorted(range(len(texts)), key=lambda i: len(texts[i]))):
            shares[i] = min(len(texts[i]), max(room, 0) // (len(texts) - rank))
            room -= shares[i]
        kept = [cut_to(text, shares[i]) for i, text in enumerate(texts)]
        return self.separator.join(k for k, _ in kept), sum(c for _, c in kept)


def cut_marker(cut: int) -> str:
    """What stands in the feedback where ``cut`` characters were left out."""
    return f"\n[... {cut:,} characters of feedback cut ...]\n"


def cut_to(text: str, room: int) -> tuple[str, int]:
    """``text`` in at most ``room`` characters (or just the marker, when even that is less), its
    middle replaced by :func:`cut_marker`; and how many of its characters went."""
    if len(text) <= room:
        return text, 0
    keep = max(room - len(cut_marker(len(text))), 0)  # the longest the marker can be
    head, tail = keep - keep // 2, keep // 2
    cut = len(text) - head - tail
    return text[:head] + cut_marker(cut) + text[len(text) - tail:], cut


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` in the tokenizer's chat template, ready for the reply; the
    template's own errors pass through (``distil serve`` answers a refusal with a 400)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer transformers
        ids = ids["input_ids"]
    return list(ids)


BREAK = "\u200b"
"""The zero-width space :func:`plain_text` puts inside a control token's spelling."""


def control_strings(tokenizer: Any) -> tuple[str, ...]:
    """The spellings the tokenizer reads as one special token wherever they stand in a text
    (``<|im_end|>``, ``<|start_header_id|>``, …), longest first. A tokenizer that cannot list its
    added tokens (some backends raise) gives its special tokens alone."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or ())
    try:
        added = dict(getattr(tokenizer, "added_tokens_decoder", None) or {})
    except Exception:  # NotImplementedError and the like: the special tokens above still count
        added = {}
    for token in added.values():
        if getattr(token, "special", False):
            found.add(str(getattr(token, "content", token)))
    return tuple(sorted((s for s in found if len(s) > 1), key=len, reverse=True))


_CONTROLS: "weakref.WeakKeyDictionary[Any, tuple[Any, Optional[re.Pattern[str]]]]" = weakref.WeakKeyDictionary()


def control_pattern(tokenizer: Any) -> Optional["re.Pattern[str]"]:
    """:func:`control_strings` as one pattern, built once per tokenizer (again when its
    vocabulary grows): a tokenizer can hold thousands of special tokens, and every context is
    searched for them."""
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    try:
        kept = _CONTROLS.get(tokenizer)
    except TypeError:  # an object that takes no weak reference: built each time
        kept = None
    if kept is not None and kept[0] == size:
        return kept[1]
    controls = control_strings(tokenizer)
    pattern = re.compile("|".join(map(re.escape, controls))) if controls else None
    try:
        _CONTROLS[tokenizer] = (size, pattern)
    except TypeError:
        pass
    return pattern


def plain_text(text: str, pattern: Optional["re.Pattern[str]"]) -> str:
    """``text`` with every spelling ``pattern`` finds (:func:`control_pattern`) broken by
    :data:`BREAK` after its first character, so that it is tokenized as the ordinary characters
    it shows.

    A message's content is text: a tool's output, a student's response quoted in feedback, a
    reviewer's correction or a dataset's prompt may spell ``<|im_end|><|im_start|>assistant``,
    and the chat template renders contents verbatim, so without this the tokenizer would read
    those characters as real turn markers and the expert would score the student under a turn
    the feedback forged. Only exact spellings of special tokens change; everything else is left
    as it was.
    """
    if pattern is None:
        return text
    return pattern.sub(lambda m: m.group(0)[0] + BREAK + m.group(0)[1:], text)


def plain_messages(tokenizer: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with :func:`plain_text` applied to every text content (the same list when
    none spells a control token)."""
    pattern = control_pattern(tokenizer)
    if pattern is None or not any(isinstance(m.get("content"), str) and pattern.search(m["content"]) for m in messages):
        return messages
    return [{**m, "content": plain_text(m["content"], pattern)} if isinstance(m.get("content"), str) else m
            for m in messages]


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """:func:`chat_ids` for a run's own prompts, each content read as :func:`plain_text` (the
    template's own markers are the only control tokens). A template that fails to render (a
    damaged chat_template.jinja: bad syntax, a division by zero, its own ``raise_exception``) or
    renders nothing is a ConfigError naming the model's template, not a jinja traceback or an
    empty prompt blamed on the problem."""
    where = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    try:
        ids = chat_ids(tokenizer, plain_messages(tokenizer, messages))
    except MemoryError:
        raise
    except Exception as exc:  # jinja's errors, and whatever a template's own expressions raise
        message = " ".join(str(exc).split())[:200]
        raise ConfigError(f"{where}: the chat template cannot render these messages ({type(exc).__name__}: "
                          f"{message}); if the template itself is damaged, restore its chat_template.jinja "
                          "(or tokenizer_config.json).") from None
    if not ids:
        raise ConfigError(f"{where}: the chat template renders an empty prompt; its chat_template.jinja (or "
                          "tokenizer_config.json) is damaged: restore it.")
    return list(ids)


def pick_demonstration(
    rollout_index: int,
    group: Sequence[tuple[int, Rollout, Verdict]],
    threshold: float,
) -> Optional[tuple[int, Rollout]]:
    """A successful sibling, never the rollout itself: the best score, then the lowest index."""
    candidates = [
        (verdict.score, -i, i, r)
        for i, r, verdict in group
        if i != rollout_index and verdict.score >= threshold and verdict.passed
    ]
    if not candidates:
        return None
    _, _, i, r = max(candidates, key=lambda c: (c[0], c[1]))
    return i, r


class ContextBuilder:
    """Builds one :class:`ExpertQuery` per rollout.

    Siblings often get the same context (no feedback, or the same demonstration and the same
    feedback), and rendering the chat template is the costly part of building one; so the ids of
    the last :data:`RENDERED` distinct contexts are kept (compactly) and reused, keyed by the
    messages and the tokenizer and chat template that rendered them.
    """

    RENDERED = 512

    def __init__(self, tokenizer: Any, template: Optional[ContextTemplate] = None, system_prompt: Optional[str] = None):
        self.tokenizer = tokenizer
        self.template = template or ContextTemplate()
        self.system_prompt = system_prompt
        self._rendered: "OrderedDict[Any, array]" = OrderedDict()

    def context_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """:func:`prompt_ids` of ``messages``, rendered once per distinct context (a new list each
        call); messages with unhashable parts (structured content) are rendered every time."""
        key = (id(self.tokenizer), getattr(self.tokenizer, "chat_template", None),
               tuple(tuple(sorted(m.items())) for m in messages))
        try:
            ids = self._rendered.get(key)
        except TypeError:
            return prompt_ids(self.tokenizer, messages)
        if ids is None:
            ids = self._rendered[key] = array("q", prompt_ids(self.tokenizer, messages))
            if len(self._rendered) > self.RENDERED:
                self._rendered.popitem(last=False)
        else:
            self._rendered.move_to_end(key)
        return ids.tolist()

    def student_prompt_ids(self, problem: Problem) -> list[int]:
        """The problem in the chat template, as the student reads it (rendered once while kept)."""
        return self.context_ids(problem.messages(self.system_prompt))

    def expert_messages(
        self, problem: Problem, feedback: Sequence[Feedback], demonstration: Optional[str]
    ) -> list[dict[str, str]]:
        return self.expert_context(problem, feedback, demonstration)[0]

    def expert_context(
        self, problem: Problem, feedback: Sequence[Feedback], demonstration: Optional[str]
    ) -> tuple[list[dict[str, str]], int]:
        """:meth:`expert_messages`, and how many characters of feedback they cut."""
        messages = problem.messages(self.system_prompt)
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        content, cut = self.template.rendered(messages[last_user]["content"], feedback, demonstration)
        messages[last_user] = {"role": "user", "content": content}
        # as the expert reads them, also where they are sent as text (an expert behind an API)
        return plain_messages(self.tokenizer, messages), cut

    def build(
        self,
        problem: Problem,
        rollout_index: int,
        rollout: Rollout,
        feedback: Sequence[Feedback],
        group: Sequence[tuple[int, Rollout, Verdict]] = (),
    ) -> ExpertQuery:
        """``group`` is every rollout of the same problem as (batch index, rollout, verdict). A
        demonstration is recorded in the provenance by its ``group_index`` (``rollout``), which
        names the same sample on any number of processes."""
        demo_text = None
        provenance = [f.provenance for f in feedback]
        if self.template.use_demonstrations:
            demo = pick_demonstration(rollout_index, group, self.template.success_threshold)
            if demo is not None:
                _, demo_rollout = demo
                demo_text = demo_rollout.response_text
                if self.template.strip_think:
                    demo_text = _THINK.sub("", demo_text)
                # named by its sample index within the problem (its group_index), as provenance.jsonl
                # and rollouts.jsonl name every rollout: the batch index is this rank's own under
                # torchrun, and would name another problem's sample in the merged log
                provenance.append(
                    {"source": "sibling", "kind": "demonstration", "rollout": str(demo_rollout.group_index)}
                )
        messages, cut = self.expert_context(problem, feedback, demo_text)
        if cut:  # recorded with the context, counted in the step's feedback_cut
            provenance.append({"source": "context", "kind": "feedback_cut", "chars": str(cut)})
        return ExpertQuery(
            problem_id=problem.id,
            rollout_index=rollout_index,
            context_messages=messages,
            context_ids=self.context_ids(messages),
            response_ids=list(rollout.response_ids),
            response_text=rollout.response_text,
            provenance=provenance,
            has_signal=bool(feedback) or demo_text is not None,
        )
