"""The expert's signals checked where they enter the trainer, before any loss reads them.

An expert is a plugin, often a remote one: a wrong shape, a NaN, an id past the vocabulary or
log-probs that are not log-probs would otherwise surface deep inside a loss (an index error on
the GPU, a NaN step, or a silently wrong gradient from a padded row), and a text of gigabytes
or with half a character inside the tokenizer. :func:`check_signals`
turns such a signal into a *failed* one (``ok=False``) whose ``error`` names the field, the
position and what the expert should return instead: it is left out of the loss and counted in
the step's ``expert_failed``, like an answer the expert never gave. One bad answer from an API
must not end a long run; an expert whose answers are mostly bad does, through
:class:`~distil_core.training.guards.RunGuard` (``train.max_expert_failed_fraction``). Each
check is one vectorised pass over the signal's tensors.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from distil_core.types import ExpertQuery, ExpertSignal

LOGPROB_TOLERANCE = 1e-3
"""How far above 0 a top-k log-prob, or the logsumexp of a position's top-k log-probs, may lie
(float32 rounding of probabilities that sum to 1)."""


class SignalProblem(Exception):
    """One thing wrong with one field of one signal: where, and what to send instead."""

    def __init__(self, field: str, problem: str, fix: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem, self.fix = field, problem, fix


CHARS_PER_TOKEN = 64
"""More characters per token than any tokenizer merges: a ``text`` signal this many times longer
than ``rollout.max_new_tokens`` is refused before it is tokenized (a hostile answer of gigabytes
never is). One within it is trained on as far as the student could have written it
(:func:`~distil_core.training.update.text_target` cuts it to ``max_new_tokens`` tokens)."""


def check_signals(signals: Sequence[ExpertSignal], queries: Sequence[ExpertQuery], *,
                  vocab_size: int, text: Optional[int] = None) -> list[ExpertSignal]:
    """``signals`` with every usable one (``ok``) whose tensors do not fit its query's response,
    or whose text is not one the student could write (with ``text``), replaced by a failed
    signal saying why (see :func:`signal_problem`). ``text``: ``rollout.max_new_tokens``."""
    out = []
    for signal, query in zip(signals, queries):
        problem = signal_problem(signal, len(query.response_ids), vocab_size, text)
        out.append(signal if problem is None else ExpertSignal.failed(signal.access, problem))
    return out


def signal_problem(signal: ExpertSignal, length: int, vocab_size: int,
                   text: Optional[int] = None) -> Optional[str]:
    """None when ``signal`` fits a response of ``length`` tokens; else one line: the field, what
    is wrong with it and where, and what the expert should return instead."""
    try:
        check_signal(signal, length, vocab_size, text)
    except SignalProblem as bad:
        return (f"unusable {signal.access!r} signal for {length} response tokens: {bad.field} {bad.problem}; "
                f"the expert should return {bad.fix}")
    return None


def check_signal(signal: ExpertSignal, length: int, vocab_size: int, text: Optional[int] = None) -> None:
    """Raise :class:`SignalProblem` unless ``signal`` fits a response of ``length`` tokens (a
    failed signal, ``ok=False``, carries nothing to check)."""
    if not signal.ok:
        return
    if signal.access == "text" and text is not None:
        check_text(signal.text or "", text)
    if signal.access == "dense":
        logits = tensor(signal.logits, "logits", f"float logits of shape [{length}, {vocab_size}]")
        shaped(logits, "logits", (length, vocab_size), "[response tokens, vocabulary]")
        finite(logits, "logits", "finite logits (no NaN or inf); a token to rule out gets a large negative logit")
    elif signal.access == "topk":
        check_topk(signal, length, vocab_size)
    elif signal.access == "sampled":
        ids = tensor(signal.sample_ids, "sample_ids", f"integer ids of shape [{length}, m]")
        shaped(ids, "sample_ids", (length, None), "[response tokens, samples]")
        token_ids(ids, "sample_ids", vocab_size, allow_negative=True)
    elif signal.access == "hidden":
        check_hidden(signal, length, vocab_size)


def check_text(value: str, max_tokens: int) -> None:
    """A text the student's tokenizer can read (no half characters) and not absurdly longer than
    a response may be (:data:`CHARS_PER_TOKEN`), judged before it is tokenized."""
    fix = (f"UTF-8 text, the response the student should have written (it is trained on up to "
           f"{max_tokens} of the student's tokens, rollout.max_new_tokens)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SignalProblem("text", f"holds half a character (a lone surrogate) at character {exc.start}", fix) from None
    if len(value) > CHARS_PER_TOKEN * max_tokens:
        raise SignalProblem("text", f"is {len(value)} characters long, far more than {max_tokens} tokens", fix)


def check_topk(signal: ExpertSignal, length: int, vocab_size: int) -> None:
    ids = tensor(signal.topk_ids, "topk_ids", f"integer ids of shape [{length}, k]")
    shaped(ids, "topk_ids", (length, None), "[response tokens, k]")
    token_ids(ids, "topk_ids", vocab_size, allow_negative=False)
    lps = tensor(signal.topk_logprobs, "topk_logprobs", f"log-probs of shape [{length}, {ids.shape[-1]}]")
    shaped(lps, "topk_logprobs", tuple(ids.shape), "the shape of topk_ids")
    fix = "log-probs log q(a) ≤ 0 of the k ids, as log_softmax gives them, whose probabilities sum to at most 1"
    finite(lps, "topk_logprobs", fix)
    above = lps.float() > LOGPROB_TOLERANCE
    if above.any():
        at = first(above)
        raise SignalProblem("topk_logprobs", f"is {float(lps[at]):.4g} at position {at[0]}, column {at[1]}: "
                            "above 0, so not a log-probability", fix)
    mass = torch.logsumexp(lps.float(), dim=-1)
    over = mass > LOGPROB_TOLERANCE
    if over.any():
        t = int(over.nonzero()[0, 0])
        raise SignalProblem("topk_logprobs", f"at position {t} have logsumexp {float(mass[t]):.4g} > 0: their "
                            "probabilities sum to more than 1", fix)


def check_hidden(signal: ExpertSignal, length: int, vocab_size: int) -> None:
    fix = f"hidden states of shape [{length}, H] and head = (weight [{vocab_size}, H], bias [{vocab_size}] or None)"
    hidden = tensor(signal.hidden, "hidden", fix)
    shaped(hidden, "hidden", (length, None), "[response tokens, hidden size]")
    finite(hidden, "hidden", "finite hidden states (no NaN or inf)")
    head = signal.head
    if not isinstance(head, (tuple, list)) or len(head) != 2:
        raise SignalProblem("head", f"is {type(head).__name__}, not a pair (weight, bias)", fix)
    weight = tensor(head[0], "head weight", fix)
    shaped(weight, "head weight", (vocab_size, hidden.shape[-1]), "[vocabulary, hidden size]")
    if head[1] is not None:
        shaped(tensor(head[1], "head bias", fix), "head bias", (vocab_size,), "[vocabulary]")


def tensor(value: Any, field: str, fix: str) -> Tensor:
    try:
        return value if isinstance(value, Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SignalProblem(field, f"is not a tensor ({exc})", fix) from None


def shaped(value: Tensor, field: str, shape: tuple[Optional[int], ...], meaning: str) -> None:
    """``value`` has ``shape`` (None: any size on that axis)."""
    fits = value.dim() == len(shape) and all(want is None or got == want for got, want in zip(value.shape, shape))
    if not fits:
        wanted = ", ".join("any" if s is None else str(s) for s in shape)
        raise SignalProblem(field, f"has shape {list(value.shape)}, not [{wanted}]",
                            f"a tensor of shape {meaning} = [{wanted}]")


def finite(value: Tensor, field: str, fix: str) -> None:
    if not value.is_floating_point():
        raise SignalProblem(field, f"has dtype {value.dtype}, not a float type", fix)
    bad = ~torch.isfinite(value)
    if bad.any():
        at = first(bad)
        where = f"position {at[0]}" + (f", column {at[1]}" if len(at) > 1 else "")
        raise SignalProblem(field, f"is {float(value[at])} at {where}", fix)


def token_ids(ids: Tensor, field: str, vocab_size: int, *, allow_negative: bool) -> None:
    low = "a negative id (no sample at that position) or " if allow_negative else ""
    fix = f"{low}token ids in [0, {vocab_size}) of the student's tokenizer"
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
        raise SignalProblem(field, f"has dtype {ids.dtype}, not an integer type", fix)
    bad = ids >= vocab_size if allow_negative else (ids < 0) | (ids >= vocab_size)
    if bad.any():
        at = first(bad)
        raise SignalProblem(field, f"holds id {int(ids[at])} at position {at[0]}, column {at[1]}, outside "
                            f"the vocabulary [0, {vocab_size})", fix)


def first(mask: Tensor) -> tuple[int, ...]:
    """The index of the first True entry of ``mask``."""
    return tuple(int(i) for i in mask.nonzero()[0])
