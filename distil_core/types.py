"""The data that flows through one training step.

    Task ─Problem─▶ Generator ─Rollout─▶ Verifier ─Verdict─▶ FeedbackSource ─Feedback─▶
    ContextBuilder ─ExpertQuery─▶ Expert ─ExpertSignal─▶ loss

These are pydantic models: plugins hand them to the core, so they are validated at that
boundary (:func:`checked`, wherever the core reads what a plugin returned) and a bad value gets
an error naming the plugin and the field. Tensors inside an ExpertSignal stay
tensors (``arbitrary_types_allowed``); everything else is plain JSON-able data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distil_core.errors import ConfigError, PluginError
from distil_core.text import as_text

ChatMessage = dict[str, str]
"""One chat message: ``{"role": "user" | "system" | "assistant", "content": "..."}``."""

FeedbackKind = str
"""Free-form. The bundled components emit ``answer_check``, ``execution_trace``, ``tool_output``,
``human_correction``, ``self_evaluation``, ``critique`` and ``demonstration``. The expert's context
shows only an item's text; provenance records its source and kind."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Problem(_Model):
    """One task instance the student must solve."""

    id: str
    prompt: Union[str, list[ChatMessage]] = Field(
        description="Plain text (wrapped as one user message) or chat messages."
    )
    reference: Any = Field(default=None, description="Answer, tests or choices; task-specific.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    def messages(self, system_prompt: Optional[str] = None) -> list[ChatMessage]:
        """The prompt as chat messages, with ``system_prompt`` first when given."""
        if isinstance(self.prompt, str):
            msgs = [{"role": "user", "content": self.prompt}]
        else:
            msgs = [dict(m) for m in self.prompt]
        if system_prompt and not any(m.get("role") == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": system_prompt})
        return msgs

    def user_text(self) -> str:
        """The text of the last user message (for templates that quote the question)."""
        if isinstance(self.prompt, str):
            return self.prompt
        users = [m["content"] for m in self.prompt if m.get("role") == "user"]
        return users[-1] if users else ""

    def reference_text(self, reader: str) -> str:
        """The reference as text, for ``reader``, a component that compares answers as text.

        A reference that is a mapping or a list holds code tests (or other structure): compared
        as text it would fail every rollout, and feedback would show the tests as "the expected
        answer". That is a wrong pairing of task and component, refused here with a
        :class:`~distil_core.errors.ConfigError` naming the problem and the fix.
        """
        if isinstance(self.reference, (dict, list, tuple)):
            raise ConfigError(
                f"{reader}: problem {self.id!r} holds code tests, not an answer, so every rollout would fail; "
                "grade it with a verifier that runs the tests (verifier: code_exec, feedback: [code_exec]), "
                "or give the task an answer (the dataset task's options.answer_key)")
        return str(self.reference).strip()


class Rollout(_Model):
    """One sampled response of the student to a problem."""

    problem_id: str
    group_index: int = Field(ge=0, description="Index of this sample among the n for its problem.")
    response_text: str
    response_ids: list[int]
    prompt_ids: list[int] = Field(default_factory=list)
    sampling_logprobs: Optional[list[float]] = Field(
        default=None, description="log p_old(y_t) of each response token at sampling time."
    )
    finished: bool = Field(default=True, description="False when cut off by max_new_tokens.")

    @model_validator(mode="after")
    def _lengths_agree(self) -> "Rollout":
        if self.sampling_logprobs is not None and len(self.sampling_logprobs) != len(self.response_ids):
            raise ValueError(
                f"sampling_logprobs has {len(self.sampling_logprobs)} entries but response_ids "
                f"has {len(self.response_ids)}; they must align token for token"
            )
        return self

    @property
    def response_hash(self) -> str:
        return hashlib.sha256(self.response_text.encode("utf-8")).hexdigest()[:16]


class Verdict(_Model):
    """What a verifier says about one rollout."""

    score: float = Field(ge=0.0, le=1.0)
    passed: bool
    answer: Optional[str] = Field(default=None, description="Extracted final answer (for maj@n).")
    details: dict[str, Any] = Field(default_factory=dict)


class Feedback(_Model):
    """One item of rich feedback on a rollout, rendered by the source that produced it."""

    source: str = Field(description="Registered name of the FeedbackSource.")
    kind: FeedbackKind
    text: str = Field(description="What the expert reads in its context.")
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("text")
    @classmethod
    def _whole_characters(cls, text: str) -> str:
        """A lone surrogate (half a character: from JSON's ``"\\ud83d"`` in a tool call, or a
        critic's reply) cannot be encoded, so no tokenizer or log could take the text: it becomes
        U+FFFD here, where feedback from any source enters."""
        return as_text(text)

    @property
    def provenance(self) -> dict[str, str]:
        return {"source": self.source, "kind": self.kind}


class ExpertCapability(_Model):
    """What an expert can give, best first: dense > topk > sampled > text."""

    access: Literal["dense", "topk", "sampled", "text"]
    k: Optional[int] = Field(default=None, ge=1, description="For access='topk'.")
    same_tokenizer: bool = True

    @model_validator(mode="after")
    def _k_for_topk(self) -> "ExpertCapability":
        if self.access == "topk" and self.k is None:
            raise ValueError("ExpertCapability(access='topk') needs k (how many log-probs per position)")
        return self


class ExpertQuery(_Model):
    """The expert-conditioned context plus the student's response, token for token."""

    problem_id: str
    rollout_index: int = Field(description="Position of the rollout in the step's batch.")
    context_messages: list[ChatMessage]
    context_ids: list[int] = Field(description="Expert context in the student's chat template.")
    response_ids: list[int] = Field(description="Exactly the ids the student sampled.")
    response_text: str
    provenance: list[dict[str, str]] = Field(
        default_factory=list,
        description="(source, kind) of every feedback item used; a successful sibling shown as a "
        "demonstration (source 'sibling', with 'rollout': its group_index, the sample index within the "
        "problem, as a string); feedback cut to fit "
        "context.max_feedback_chars (source 'context', kind 'feedback_cut', with 'chars').",
    )
    has_signal: bool = Field(
        default=True,
        description="False when the context adds nothing to the student's own (no feedback, "
        "no demonstration): the expert would just echo the student.",
    )

    @property
    def input_ids(self) -> list[int]:
        return self.context_ids + self.response_ids


class ExpertSignal(_Model):
    """The expert's answer for one query. Exactly the fields of its ``access`` are set.

    - dense:   ``logits``       float tensor [T, V]   (T = len(response_ids))
    - topk:    ``topk_ids``     long tensor  [T, k] + ``topk_logprobs`` [T, k]
    - sampled: ``sample_ids``   long tensor  [T, m] (negative = no sample at that position)
    - text:    ``text``         a continuation/correction, re-tokenised by the engine
    - hidden:  ``hidden``       float tensor [T, H], the last hidden states of a local expert
      model, plus ``head`` = (weight [V, H], bias or None), its output projection (shared, not
      copied): the dense logits are ``hidden @ weight.T + bias``, formed by the loss a chunk at
      a time (``loss.chunk_size``) so the expert's [T, V] logits are never stored
    ``ok=False`` marks a query the expert could not answer (skipped and counted).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    access: Literal["dense", "topk", "sampled", "text", "hidden"]
    logits: Any = None
    hidden: Any = None
    head: Any = None
    topk_ids: Any = None
    topk_logprobs: Any = None
    sample_ids: Any = None
    text: Optional[str] = None
    ok: bool = True
    error: Optional[str] = None
    usage: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fields_match_access(self) -> "ExpertSignal":
        if not self.ok:
            return self
        needed = {
            "dense": ("logits",),
            "topk": ("topk_ids", "topk_logprobs"),
            "sampled": ("sample_ids",),
            "text": ("text",),
            "hidden": ("hidden", "head"),
        }[self.access]
        missing = [f for f in needed if getattr(self, f) is None]
        if missing:
            raise ValueError(f"ExpertSignal(access={self.access!r}) needs {', '.join(missing)}")
        return self

    @classmethod
    def failed(cls, access: str, error: str) -> "ExpertSignal":
        return cls(access=access, ok=False, error=error)


def checked(items: Any, model: type, plugin: str) -> list[Any]:
    """What a plugin's method returned, as a list of ``model`` instances (None: none; a generator
    is read whole). Anything else is a :class:`~distil_core.errors.PluginError` naming the plugin:
    a value that does not validate as ``model``, or a result that is no sequence of them (a string
    or a mapping, though each iterates)."""
    if items is None:
        return []
    if isinstance(items, (str, bytes, dict)) or not isinstance(items, Iterable):
        raise PluginError(f"plugin component {plugin!r} returned {type(items).__name__}, not a list of "
                          f"{model.__name__}")
    out = []
    for item in items:
        if isinstance(item, model):
            out.append(item)
            continue
        try:
            out.append(model.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the value'}: {e['msg']}" for e in exc.errors()[:3])
            raise PluginError(f"plugin component {plugin!r} returned an invalid {model.__name__} "
                              f"({type(item).__name__} {ascii(item)[:80]}): {problems}") from None
        except Exception as exc:  # an object whose fields raise when read
            raise PluginError(f"plugin component {plugin!r} returned an invalid {model.__name__}: "
                              f"{type(exc).__name__}: {exc}") from None
    return out
