"""``distil plot``: the training curves of one or several runs, overlaid in one PNG.

Each run directory's metrics.jsonl (a row per step) and eval.jsonl (held-out evaluations) are
read through :mod:`distil_core.cli.runlogs`, and one figure is drawn: a grid of panels (reward,
held-out pass@1, response length, CE and KL to the expert, feedback coverage, seconds per stage
of a step), one colour per run, one legend for the whole figure. A panel that no run has data
for stays in its place marked "not logged" with the reason, so that figures of different runs
keep one layout and an empty panel is never mistaken for a flat curve. ``--metrics`` picks the
panels; any other numeric key of metrics.jsonl or eval.jsonl (``loss``, ``grad_norm``,
``pass@8``) is drawn as a curve too.

matplotlib and the atomic write are shared with ``distil bench`` (:mod:`distil_core.cli.plots`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from distil_core.cli.plots import figure_format, require_matplotlib, save_figure
from distil_core.cli.runlogs import RunLogs, finite_number, load_run
from distil_core.errors import ConfigError, DistilError, did_you_mean
from distil_core.run_files import refuse_run_files

__all__ = ["Panel", "PANELS", "PlotReport", "plot_runs", "build_figure", "choose_panels", "run_labels", "main_plot"]

NOT_LOGGED = "not logged"


@dataclass(frozen=True)
class Panel:
    """One panel of the figure: the ``key`` it reads from ``source`` ("metrics": metrics.jsonl,
    "eval": eval.jsonl, "time": every ``time_*`` key of metrics.jsonl), values times ``scale``,
    and ``missing``: why a run may have no value to draw."""

    name: str
    title: str
    ylabel: str
    source: str
    key: str
    missing: str
    scale: float = 1.0


PANELS = {panel.name: panel for panel in (
    Panel("reward", "reward", "mean verifier score", "metrics", "reward", "no reward in metrics.jsonl"),
    Panel("pass@1", "held-out pass@1", "pass@1 (%)", "eval", "pass@1", "no evaluation in eval.jsonl", 100.0),
    Panel("response_tokens", "response length", "mean tokens per response", "metrics", "response_tokens",
          "no response_tokens in metrics.jsonl"),
    Panel("ce_to_expert", "CE to the expert", "nats per token", "metrics", "ce_to_expert",
          "null: the expert sends no distribution (sampled, text), or there is none (grpo)"),
    Panel("kl_to_expert", "KL to the expert", "nats per token", "metrics", "kl_to_expert",
          "null: the expert sends no distribution (sampled, text), or there is none (grpo)"),
    Panel("feedback_coverage", "feedback coverage", "share of rollouts with feedback", "metrics",
          "feedback_coverage", "no feedback_coverage in metrics.jsonl"),
    Panel("time", "time per stage", "mean seconds per step", "time", "time_", "no time_* keys in metrics.jsonl"),
)}
"""The panels ``distil plot`` draws when ``--metrics`` is not given, in this order."""


@dataclass
class PlotReport:
    """What was drawn, read back from the figure itself: its size in pixels, the panels' titles
    (``not_logged``: those marked so), and the legend's labels, one per run."""

    path: str
    width: int
    height: int
    panels: list[str]
    not_logged: list[str]
    labels: list[str]


def plot_runs(paths: Sequence[str], output: Optional[str] = None,
              metrics: Optional[Sequence[str]] = None) -> PlotReport:
    """Draw the runs in ``paths`` into one PNG at ``output`` (default: ``curves.png`` in the run
    directory for one run, in the current directory for several); what was drawn."""
    plt = require_matplotlib("distil plot")  # before reading anything
    output = output or os.path.join(paths[0] if len(paths) == 1 else ".", "curves.png")
    refuse_run_files(output, paths, "--output", "Choose another path (the default is curves.png in the run directory).")
    figure_format(output, "--output")
    runs = [load_run(path) for path in paths]
    panels = choose_panels(metrics, runs)
    fig, top = build_figure(plt, runs, panels)
    report = read_back(fig, output)
    try:
        save_figure(plt, fig, output, rect=(0, 0, 1, top))
    except OSError as exc:
        raise DistilError(f"--output {output!r}: the plot cannot be written ({exc.strerror or exc}); "
                          "choose a path in a directory you can write to.") from None
    return report


def choose_panels(names: Optional[Sequence[str]], runs: Sequence[RunLogs]) -> list[Panel]:
    """The panels for ``--metrics`` (all of :data:`PANELS` when None). A name that is not a panel
    becomes one when some run logs it as a number; otherwise a ConfigError lists what exists."""
    if not names:
        return list(PANELS.values())
    logged = {source: {k for r in runs for row in getattr(r, source) for k, v in row.items() if finite_number(v)}
              for source in ("metrics", "evals")}
    chosen = []
    for name in dict.fromkeys(names):
        if name in PANELS:
            chosen.append(PANELS[name])
        elif name in logged["metrics"] or name in logged["evals"]:
            source = "metrics" if name in logged["metrics"] else "eval"
            chosen.append(Panel(name, name, name, source, name, f"no {name} in {source}.jsonl"))
        else:
            valid = set(PANELS) | logged["metrics"] | logged["evals"]
            raise ConfigError(f"--metrics {name!r}: no such panel, and no run logs it.{did_you_mean(name, valid)}")
    return chosen


def run_labels(runs: Sequence[RunLogs]) -> list[str]:
    """The legend's name of each run: its method when every run's differs, else its directory's
    name (with as many parent folders as it takes to tell two runs apart)."""
    methods = [r.method for r in runs]
    if len(runs) > 1 and None not in methods and len(set(methods)) == len(methods):
        return [str(m) for m in methods]
    parts = [os.path.abspath(r.path).strip(os.sep).split(os.sep) for r in runs]
    depth = 1
    while depth < max(len(p) for p in parts):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
        depth += 1
    return ["/".join(p) for p in parts]


def build_figure(plt: Any, runs: Sequence[RunLogs], panels: Sequence[Panel]) -> tuple[Any, float]:
    """The figure (a grid of ``panels``, one colour per run, the runs' legend on top) and the
    figure fraction below the legend, where the panels go."""
    from matplotlib.lines import Line2D

    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    labels = run_labels(runs)
    legend_rows = math.ceil(len(labels) / 4)
    legend_h = 0.25 + 0.25 * legend_rows  # inches; quarter inches keep the pixel size exact
    width, height = 4.5 * columns, 3.25 * rows + legend_h
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), dpi=100, squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    flat = [ax for row in axes for ax in row]
    for ax, panel in zip(flat, panels):
        ax.set_title(panel.title, fontsize=10, parse_math=False)  # a logged key, read as it is
        drawn = draw_time(ax, runs, colors) if panel.source == "time" else draw_lines(ax, panel, runs, colors)
        if not drawn:
            mark_not_logged(ax, panel)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, linewidth=2) for c in colors]
    legend = fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), frameon=False, fontsize=9)
    for text in legend.get_texts():
        # a method or directory name is text: "$" in it would be parsed as math (and an unknown
        # symbol there fails only when the figure is saved)
        text.set_parse_math(False)
    return fig, 1.0 - legend_h / height


def draw_lines(ax: Any, panel: Panel, runs: Sequence[RunLogs], colors: Sequence[str]) -> bool:
    """Each run's (step, value) curve of ``panel``; False when no run has a single value.
    Per-step curves longer than 40 points are drawn faint with a moving mean over them."""
    from matplotlib.ticker import MaxNLocator

    any_drawn = False
    for run, color in zip(runs, colors):
        rows = run.evals if panel.source == "eval" else run.metrics
        points = sorted((row["step"], row[panel.key] * panel.scale) for row in rows if finite_number(row.get(panel.key)))
        if not points:
            continue
        any_drawn = True
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if panel.source == "eval":
            ax.plot(xs, ys, color=color, marker="o", markersize=3, linewidth=1.4)
        elif len(points) > 40:
            ax.plot(xs, ys, color=color, linewidth=0.8, alpha=0.25)
            ax.plot(xs, moving_mean(ys, max(2, len(ys) // 20)), color=color, linewidth=1.5)
        else:
            ax.plot(xs, ys, color=color, linewidth=1.4)
    if any_drawn:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training step", fontsize=9)
        ax.set_ylabel(panel.ylabel, fontsize=9, parse_math=False)
        ax.grid(alpha=0.3)
    return any_drawn


def draw_time(ax: Any, runs: Sequence[RunLogs], colors: Sequence[str]) -> bool:
    """Mean seconds per step of each stage (every ``time_*`` key but the step's total), as
    horizontal bars grouped by stage, one bar per run; False when no run logs a stage."""
    means = [stage_means(run) for run in runs]
    stages = list(dict.fromkeys(stage for m in means for stage in m))
    if not stages:
        return False
    height = 0.8 / len(runs)
    for j, (m, color) in enumerate(zip(means, colors)):
        offset = (j - (len(runs) - 1) / 2) * height
        ax.barh([i + offset for i in range(len(stages))], [m.get(s, 0.0) for s in stages],
                height=height, color=color)
    ax.set_yticks(range(len(stages)))
    ax.set_yticklabels([s[len("time_"):] for s in stages], fontsize=8, parse_math=False)
    ax.invert_yaxis()  # stages top to bottom in the order a step runs them
    ax.set_xlabel("mean seconds per step", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return True


def stage_means(run: RunLogs) -> dict[str, float]:
    """Mean over the run's steps of each ``time_*`` key except ``time_step`` (their sum)."""
    sums: dict[str, list[float]] = {}
    for row in run.metrics:
        for key, value in row.items():
            if key.startswith("time_") and key != "time_step" and finite_number(value):
                sums.setdefault(key, []).append(float(value))
    return {key: sum(values) / len(values) for key, values in sums.items()}


def mark_not_logged(ax: Any, panel: Panel) -> None:
    """The panel's place kept, saying that no run logs it, and why a run might not."""
    ax.text(0.5, 0.55, NOT_LOGGED, ha="center", va="center", fontsize=12, color="0.4", transform=ax.transAxes)
    ax.text(0.5, 0.4, panel.missing, ha="center", va="center", fontsize=7, color="0.5", wrap=True,
            transform=ax.transAxes, parse_math=False)
    ax.set_xticks([])
    ax.set_yticks([])


def moving_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of each value and up to ``window - 1`` before it (a trailing window, no look-ahead)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def read_back(fig: Any, path: str) -> PlotReport:
    """What the figure holds: size, panel titles, which say "not logged", the legend's labels."""
    axes = [ax for ax in fig.axes if ax.get_visible()]
    width, height = (int(round(v)) for v in fig.get_size_inches() * fig.dpi)
    return PlotReport(
        path=path, width=width, height=height, panels=[ax.get_title() for ax in axes],
        not_logged=[ax.get_title() for ax in axes if any(t.get_text() == NOT_LOGGED for t in ax.texts)],
        labels=[text.get_text() for legend in fig.legends for text in legend.get_texts()],
    )


def main_plot(args: Any) -> int:
    report = plot_runs(args.runs, args.output, args.metrics)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
        return 0
    print(f"distil plot: wrote {report.path} ({report.width}×{report.height} px)")
    print(f"  runs: {', '.join(report.labels)}")
    print(f"  panels: {', '.join(report.panels)}")
    if report.not_logged:
        print(f"  not logged by any run: {', '.join(report.not_logged)}")
    return 0
