"""What a run shows on the console while it trains: a progress bar, or without one
(``train.progress: false``, a batch job's log) a line per ``train.log_every`` steps and one per
evaluation. The files of record are the run's logs (:mod:`~distil_core.training.runlog`)."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


STEP_LINE_KEYS = (("reward", ".3f"), ("loss", ".4g"), ("kl_to_expert", ".4g"), ("grad_norm", ".3g"),
                  ("response_tokens", ".1f"), ("skipped_nonfinite", "g"), ("expert_failed", "g"))
"""What a step's line shows, in order, where its row has the key (a method without an expert logs
no ``kl_to_expert``); metrics.jsonl keeps the whole row."""


def step_line(step: int, total: int, row: dict[str, Any]) -> str:
    """One line for a step, for a log that has no progress bar (``train.progress: false``, every
    ``train.log_every`` steps): a batch job's output shows the run moving, and a
    diverging one, without opening metrics.jsonl."""
    shown = [f"{key} {row[key]:{spec}}" for key, spec in STEP_LINE_KEYS
             if isinstance(row.get(key), (int, float)) and (row[key] or key not in ("skipped_nonfinite", "expert_failed"))]
    return f"step {step}/{total}: " + ", ".join(shown) + f" ({row.get('time_step', 0.0):.2f} s)"


def eval_line(step: int, label: str, result: dict[str, Any]) -> str:
    """One line for an evaluation, beside the step lines when there is no progress bar."""
    shown = [f"{key} {100 * value:.1f}%" for key, value in result.items()
             if "@" in key and isinstance(value, (int, float))]
    where = f"step {step}" if label == f"step {step}" else f"{label}, step {step}"
    return f"eval ({where}): " + ", ".join(shown)


__all__ = ["STEP_LINE_KEYS", "eval_line", "progress_bar", "step_line"]
