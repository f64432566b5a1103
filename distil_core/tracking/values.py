"""What a tracker is handed: plain numbers, a flat config, and rows of text.

Trackers differ in what they accept (MLflow takes no ``@`` in a metric name, TensorBoard's
hyperparameters are flat), so they are given the simplest common form and adapt it themselves.
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Any, Mapping, Optional

from distil_core.text import as_text

TABLE_ROWS = 4
"""Rollouts in one rollout table: enough to read, few enough to log every few steps."""

TEXT_LIMIT = 2000
"""Characters kept of a prompt, response, feedback or expert context in a table row."""


def scalars(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric values of ``row`` (booleans as 0/1; NaN and infinities as they are), keys
    prefixed; text, lists and None are left out (they stay in the JSONL files), and so is a number
    no float holds (an int past 1e308, a complex): it is called on the trainer's own path, where a
    value that cannot be converted must not stop the run."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "step" or value is None or isinstance(value, (str, bytes)):
            continue
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a 0-d tensor or numpy scalar
            value = value.item()
        if isinstance(value, (bool, int, float)):
            with contextlib.suppress(OverflowError):
                out[prefix + key] = float(value)
    return out


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config sections as dotted keys (``optim.lr``); lists, None and integers past 64 bits
    (which trackers store as int64 or float: a 20-digit seed emptied trackio's store, a 321-digit
    one stopped TensorBoard) become text, so that every value is a bool, number or string (what
    hyperparameter tables take)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_config(value, name + "."))
        elif isinstance(value, (bool, str)) or (isinstance(value, int) and -2**63 <= value < 2**63) \
                or (isinstance(value, float) and math.isfinite(value)):
            out[name] = value
        else:
            out[name] = str(value) if value is not None else "None"
    return out


def cut(text: Any, limit: int = TEXT_LIMIT) -> str:
    """``text`` as readable text of at most ``limit`` characters, then ``…`` where cut."""
    text = readable("" if text is None else str(text))
    return text if len(text) <= limit else text[:limit] + "…"


def readable(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys of mappings too) replaced by
    U+FFFD, so that every tracker can encode it; anything else as it is."""
    if isinstance(value, str):
        return as_text(value)
    if isinstance(value, Mapping):
        return {readable(k): readable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [readable(v) for v in value]
    return value


def rollout_table(step: int, batch: Any, rows: int = TABLE_ROWS) -> list[dict[str, Any]]:
    """A few of the step's rollouts (drawn with a seed of ``step``: the same rows on a rerun), each
    with its prompt, response, reward and verdict, the feedback it got and the context the expert
    saw (empty for a method without an expert). ``batch`` is the step's
    :class:`~distil_core.training.step.StepBatch` on this rank."""
    count = len(batch.rollouts)
    if not count:
        return []
    contexts: dict[int, Any] = {q.rollout_index: q for q in getattr(batch, "queries", []) or []}
    picked = sorted(random.Random(step).sample(range(count), min(rows, count)))
    table = []
    for j in picked:
        problem, rollout, verdict = batch.problems[j // batch.n], batch.rollouts[j], batch.verdicts[j]
        query: Optional[Any] = contexts.get(j)
        table.append({
            "step": step,
            "problem_id": problem.id,
            "prompt": cut(problem.user_text()),
            "response": cut(rollout.response_text),
            "reward": float(verdict.score),
            "passed": bool(verdict.passed),
            "feedback": cut("\n".join(f"[{f.source}] {f.text}" for f in batch.feedback[j])),
            "expert_context": cut(context_text(query) if query is not None else ""),
        })
    return table


def context_text(query: Any) -> str:
    """The expert's context as ``role: content`` lines."""
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in query.context_messages)


__all__ = ["TABLE_ROWS", "scalars", "flat_config", "rollout_table", "context_text", "cut", "readable"]
