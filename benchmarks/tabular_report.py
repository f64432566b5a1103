"""Markdown pieces the tabular study's sections share (docs/results/tabular.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def report_steps(steps: int) -> list[int]:
    """The steps a per-step table shows: 0, 10, 50, 100, 200 and the last, those a run reached."""
    return sorted({s for s in (0, 10, 50, 100, 200, steps) if s <= steps})


def step_table(headers: Sequence[str], steps: Sequence[int], cell: Callable[[int, int], str]) -> list[str]:
    """A markdown table with a row per step and a column per header; ``cell(step, column)``."""
    lines = ["| step | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    for s in steps:
        lines.append(f"| {s} | " + " | ".join(cell(s, j) for j in range(len(headers))) + " |")
    return lines
