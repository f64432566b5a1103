"""The protocols plugins implement. The core only calls them.

Each method may be a plain function or a coroutine function: the engine calls
:func:`resolve` on the result, so ``async def feedback(...)`` works as well as ``def``.

The four component protocols (:class:`Task`, :class:`Verifier`, :class:`FeedbackSource`,
:class:`Expert`) hold what the core always calls; the run checks each built component against
its protocol and stops with an error naming it when a method is missing. Every method the core
calls only when a component has it is declared in a protocol of its own (``StatefulExpert``,
``HiddenStateExpert`` …): a component implements one by having the method, and the trainer finds
it by looking for that method. :class:`Runtime` is what a factory that asks for ``runtime``
receives, and :class:`Register` the callback every registration hook is handed.
"""

from __future__ import annotations

import random
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Optional,
    Protocol,
    Sequence,
    runtime_checkable,
)

from distil_core.awaiting import MaybeAwaitable, resolve, resolve_all
from distil_core.types import ExpertCapability, ExpertQuery, ExpertSignal, Feedback, Problem, Rollout, Verdict

if TYPE_CHECKING:  # annotations only: the root stays free of the trainer's imports
    from distil_core.config import RunConfig
    from distil_core.context import ContextBuilder
    from distil_core.plugin_host import PluginHost

FeedbackItem = tuple[Problem, Rollout, Verdict, Sequence[tuple[Rollout, Verdict]]]
"""One rollout as :meth:`BatchFeedbackSource.feedback_batch` receives it."""


# -- the components -----------------------------------------------------------------------------


@runtime_checkable
class Task(Protocol):
    """A source of problems. ``split`` is "train" or "test" (held out).

    A task is built before the policy exists (the tiny base is pretrained on its problems), so a
    task factory that asks for ``runtime`` receives ``None``.
    """

    def problems(self, split: str) -> Sequence[Problem]: ...


@runtime_checkable
class AnswerTextTask(Task, Protocol):
    """Optional for a task: the text a correct response writes, when it is not ``reference``.

    Called on the training problems when the tiny base is built (the base learns to write it,
    and it is part of the cached base's key) and on the evaluation problems for the reference
    length set beside the student's response length. Without it, ``str(problem.reference)``.
    """

    def answer_text(self, problem: Problem) -> str: ...


@runtime_checkable
class WrongAnswerTask(Task, Protocol):
    """Optional for a task: a plausible wrong response to a problem, for the tiny base to see.

    Called only when the tiny base is pretrained: it learns what the run's feedback says about
    a wrong answer, so a task whose typical mistakes are not typo-like (a slipped step, another
    option) gives better ones here. ``rng`` is the pretraining's own, so the base stays
    reproducible. Without it, one or two characters of the correct answer are changed.
    """

    def wrong_answer(self, problem: Problem, rng: random.Random) -> str: ...


@runtime_checkable
class Verifier(Protocol):
    """Grades one rollout. ``score`` in [0, 1] is the reward GRPO uses.

    A verifier whose verdicts never carry an ``answer`` (code graded by running its tests) sets
    the class attribute ``gives_answers = False``: evaluation then reports no maj@n, which
    would otherwise read 0 for every problem."""

    def verify(self, problem: Problem, rollout: Rollout) -> MaybeAwaitable[Verdict]: ...


@runtime_checkable
class ClosableVerifier(Verifier, Protocol):
    """Optional for a verifier: release what it holds (worker processes, sandboxes).

    Called on the verifier built to pretrain the tiny base, once the base is built, and on the
    run's own when the run ends (``Trainer.fit`` returns or raises), so that a process training
    several runs keeps no finished run's workers. The feedback sources, the expert and the
    generator are closed alike when they have a ``close()``. A closed component may be used
    again (an evaluation after the run): it reopens what it needs on use.
    """

    def close(self) -> None: ...


@runtime_checkable
class BatchVerifier(Verifier, Protocol):
    """Optional for a verifier: every rollout of a step in one call.

    When a verifier has it, the trainer calls it once per step instead of ``verify`` per rollout,
    with ``problems[i]`` the problem of ``rollouts[i]``; it returns one verdict per rollout, in
    order. A verifier whose grading has a fixed cost per call (a sandbox to start, a request to
    send) shares that cost across the step this way. Its verdicts must be the ones ``verify``
    gives: evaluation grades through it too, and only the tiny base's pretraining still calls
    ``verify``.
    """

    def verify_batch(self, problems: Sequence[Problem], rollouts: Sequence[Rollout]) -> MaybeAwaitable[list[Verdict]]: ...


@runtime_checkable
class FeedbackSource(Protocol):
    """Turns a graded rollout into feedback items for the expert's context.

    ``group`` holds all rollouts of the same problem with their verdicts, so a source can
    compare siblings. Return an empty list when there is nothing useful to say.
    """

    def feedback(
        self,
        problem: Problem,
        rollout: Rollout,
        verdict: Verdict,
        group: Sequence[tuple[Rollout, Verdict]],
    ) -> MaybeAwaitable[list[Feedback]]: ...


@runtime_checkable
class BatchFeedbackSource(FeedbackSource, Protocol):
    """Optional for a feedback source: every rollout of a step in one call.

    When a source has it, the trainer calls it once per step with every rollout, as
    ``(problem, rollout, verdict, group)`` items, instead of calling ``feedback`` per rollout (a
    source that runs a model batches its work this way); it returns one list per item, in order.
    """

    def feedback_batch(self, items: Sequence[FeedbackItem]) -> MaybeAwaitable[list[list[Feedback]]]: ...


@runtime_checkable
class Expert(Protocol):
    """Gives its next-token distribution (or the best it can) on the student's states.

    Each signal's ``access`` says what it holds; the loss adapts to it signal by signal.
    """

    def score(self, queries: Sequence[ExpertQuery]) -> MaybeAwaitable[list[ExpertSignal]]: ...


@runtime_checkable
class CapabilityExpert(Expert, Protocol):
    """Optional for an expert: what it can give, best first (dense > topk > sampled > text).

    For people and tools that inspect an expert (``distil_api_expert`` reports the level its
    endpoint allows); the trainer does not read it — it goes by the ``access`` of each signal
    ``score`` returns.
    """

    @property
    def capability(self) -> ExpertCapability: ...


@runtime_checkable
class HiddenStateExpert(Expert, Protocol):
    """Optional for an expert that runs a local model: its last hidden states, not its logits.

    Used instead of ``score`` when the loss runs chunked (long responses, large vocabularies):
    each signal has ``access="hidden"``, ``hidden`` [T, H] and ``head`` (the output projection),
    so the expert's [T, V] logits are formed a chunk at a time and never stored whole.
    """

    def score_hidden(self, queries: Sequence[ExpertQuery]) -> MaybeAwaitable[list[ExpertSignal]]: ...


@runtime_checkable
class UpdatingExpert(Expert, Protocol):
    """Optional for an expert: called after every training step (one batch of rollouts, however
    many optimizer steps it took; not after a step that took none) with the updated policy.

    An expert that follows the student (a lagged copy of the policy, say) refreshes itself here.
    Under sharded training the whole policy is gathered for the call.
    """

    def on_policy_update(self, model: Any) -> None: ...


@runtime_checkable
class StatefulExpert(Expert, Protocol):
    """Optional for an expert with state of its own: saved in every checkpoint, restored on resume.

    ``state_dict()`` returns what ``torch.save`` can write; ``load_state_dict(state)`` receives
    it back on ``--resume`` (an empty dict when the checkpoint has none).
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class FrozenCopyExpert(Expert, Protocol):
    """Optional for an expert that scores with a frozen copy of the policy's starting weights.

    ``initial_copy()`` returns that copy, or None when it holds none. ``loss.kl_to_reference``'s
    ``initial`` reference is the same weights and borrows the copy rather than making a second
    one (a whole model's worth of memory); both only read it.
    """

    def initial_copy(self) -> Optional[Any]: ...


@runtime_checkable
class SyncedGenerator(Protocol):
    """Optional for the rollout generator (``runtime.generator``): hear of every policy update.

    A generator outside the trainer's process (an inference server) gets the new weights here;
    the dict it returns is merged into the step's metrics.
    """

    def after_update(self, model: Any, step: int) -> Optional[dict[str, float]]: ...


@runtime_checkable
class Logger(Protocol):
    """An experiment tracker (``train.report_to``), registered through ``register_loggers``.

    Its factory is called with ``run_dir=`` (the run directory: a local tracker writes under it)
    and the options in ``train.tracker_options.<name>``; it should import its library there, so a
    missing one stops the run before the model loads. Only rank 0 builds and calls it, after the
    same record is in the run's JSONL files; a method that raises gets the tracker closed
    (``close(failed=True)``) and dropped with a warning, and the run goes on.

    A tracker may also have ``resume(step)``, called before anything is logged when the run
    resumes from its checkpoint at ``step``: what an earlier session logged past that step
    came from training the resumed session repeats, and the run's JSONL files drop it too.
    """

    def log_config(self, config: dict[str, Any]) -> None:
        """Once, when training starts: the run's config as nested sections (secret-looking
        option values replaced by ``"***"``)."""
        ...

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """A row of numbers at ``step``: every numeric value of a metrics.jsonl row, and every
        evaluation as ``eval/<metric>`` (step 0: before training)."""
        ...

    def log_table(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Every ``train.log_rollout_table_every`` steps: a few rollouts, one dict each, with the
        same keys (``prompt``, ``response``, ``reward``, ``passed``, ``feedback``,
        ``expert_context`` …)."""
        ...

    def close(self, failed: bool = False) -> None:
        """Once, at the end of the run (``failed``: it stopped with an error): flush and finish."""
        ...


# -- what a plugin is handed ---------------------------------------------------------------------


@runtime_checkable
class Runtime(Protocol):
    """What a component factory receives as ``runtime`` when its signature asks for it.

    Built by the trainer's ``build_runtime`` once the policy is loaded; verifiers, feedback
    sources and experts are built in that order, so a factory sees the components before it
    (a feedback source sees ``verifier``; ``expert`` is set last). Task factories get ``None``.
    """

    config: RunConfig
    """The run's validated config."""
    model: Any
    """The policy (a ``transformers`` causal LM), on ``device``."""
    tokenizer: Any
    """The policy's tokenizer, with a chat template and a pad token."""
    device: Any
    """The ``torch.device`` the policy runs on."""
    host: PluginHost
    """The plugin host the components were built from (build others by name with it)."""
    task: Any
    verifier: Any
    feedback_sources: list[tuple[str, Any]]
    """(config name, source) of every feedback source built so far."""
    expert: Any
    generator: Any
    """Samples the student's rollouts (in-process, or an inference server)."""
    context: Optional[ContextBuilder]
    """Renders problems and feedback into expert contexts in the student's chat template."""
    model_source: str
    """Where the policy came from (a directory, or the cached tiny base)."""

    @property
    def pad_id(self) -> int:
        """The tokenizer's pad id (its end-of-sequence id when it has none)."""
        ...


class Register(Protocol):
    """The ``register`` callback a registration hook is handed.

    ``name`` is what config files use; ``factory`` a class or function the host calls with the
    component's options (and ``runtime=`` when it asks for it); ``description`` defaults to the
    first line of the factory's docstring. Raises :class:`~distil_core.errors.PluginError` for a
    name already taken, an empty name or a factory that is not callable.
    """

    def __call__(self, name: str, factory: Callable[..., Any], description: str = "") -> None: ...


__all__ = [
    "Task", "AnswerTextTask", "WrongAnswerTask",
    "Verifier", "ClosableVerifier", "BatchVerifier",
    "FeedbackSource", "BatchFeedbackSource", "FeedbackItem",
    "Expert", "CapabilityExpert", "HiddenStateExpert", "UpdatingExpert", "StatefulExpert", "FrozenCopyExpert",
    "SyncedGenerator", "Logger", "Runtime", "Register",
    "MaybeAwaitable", "ExpertCapability", "ExpertQuery", "ExpertSignal", "Feedback", "Problem", "Rollout", "Verdict",
    "resolve", "resolve_all",
]
