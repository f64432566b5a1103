"""The results of ``distil bench``: aggregation over seeds, the markdown report and the terminal table.

``bench.json`` rows (one per run: suite, method, seed, before/after metrics, the held-out curve,
response lengths) are what everything here reads; :mod:`distil_core.cli.bench` produces them
and :mod:`distil_core.cli.plots` draws them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Optional

from distil_core.cli.bench_spec import SPLIT_KEYS
from distil_core.cli.tables import render_table

if TYPE_CHECKING:
    from distil_core.cli.bench import Bench

__all__ = ["mean_std", "paired_gap", "within_noise", "leaders", "aggregate", "mean_curve", "rollouts_to_reach",
           "widest_pass", "final_lengths", "table_metrics", "format_cell", "render_markdown", "terminal_table",
           "calibration_warnings", "source_line", "cpu_name"]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_gap(best: dict[Any, float], other: dict[Any, float]) -> Optional[dict[str, float]]:
    """``best`` minus ``other``, paired on the runs both hold (a key per suite and seed): the
    mean difference, its standard error and the number of pairs; None under two pairs.

    Runs that share a seed share the problem order and the sampling seed, so pairing cancels
    most of the between-seed variance that a comparison of two means ± std would carry. A gap
    within one standard error (``mean <= se``) is what the reports call *within noise*."""
    shared = [key for key in best if key in other]
    if len(shared) < 2:
        return None
    diffs = [best[key] - other[key] for key in shared]
    return {"mean": statistics.fmean(diffs), "se": statistics.stdev(diffs) / math.sqrt(len(diffs)), "runs": len(diffs)}


def within_noise(gap: dict[str, float]) -> bool:
    """Whether a :func:`paired_gap` to the best is within one standard error of zero."""
    return gap["mean"] <= gap["se"]


def leaders(scores: dict[str, dict[Any, float]]) -> tuple[str, dict[str, dict[str, float]]]:
    """``scores``: name → {run key: score}. The name with the highest mean (the first on a tie),
    and the :func:`paired_gap` to it of every other name that shares two runs with it, in order
    (:func:`within_noise` tells which of them the reports call within noise)."""
    means = {name: statistics.fmean(s.values()) for name, s in scores.items() if s}
    best = max(means, key=lambda name: (means[name], -list(scores).index(name)))
    gaps = {name: paired_gap(scores[best], scores[name]) for name in means if name != best}
    return best, {name: gap for name, gap in gaps.items() if gap is not None}


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """suite → method (and ``base``, the starting model) → metric → (mean, std, n)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for suite in dict.fromkeys(r["suite"] for r in rows):
        mine = [r for r in rows if r["suite"] == suite]
        table: dict[str, dict[str, Any]] = {}
        # The starting model is the same for every method of a seed; its eval uses the same seed.
        base_by_seed = {r["seed"]: r["before"] for r in mine}
        keys = list(next(iter(base_by_seed.values())))
        table["base"] = {k: (*mean_std([b[k] for b in base_by_seed.values() if k in b]), len(base_by_seed)) for k in keys}
        for method in dict.fromkeys(r["method"] for r in mine):
            runs = [r for r in mine if r["method"] == method]
            entry = {k: (*mean_std([r["after"][k] for r in runs if k in r["after"]]), len(runs)) for k in keys}
            entry["wall_s"] = (*mean_std([r["wall_s"] for r in runs]), len(runs))
            table[method] = entry
        out[suite] = table
    return out


def mean_curve(runs: list[dict[str, Any]], metric: str) -> list[tuple[int, float]]:
    """(step, mean over seeds of ``metric``) at every step all runs evaluated."""
    steps = sorted(set.intersection(*({p["step"] for p in r["curve"] if metric in p} for r in runs))) if runs else []
    return [(step, statistics.fmean(p[metric] for r in runs for p in r["curve"] if p["step"] == step and metric in p))
            for step in steps]


def rollouts_to_reach(rows: list[dict[str, Any]], suite: str, target_method: str, metric: str,
                      rollouts_per_step: int) -> dict[str, Optional[int]]:
    """Per method: rollouts consumed when its mean ``metric`` curve first reaches ``target_method``'s
    final mean (None: never within the budget). The sample-efficiency view of the bench."""
    mine = [r for r in rows if r["suite"] == suite]
    target_runs = [r for r in mine if r["method"] == target_method]
    if not target_runs:
        return {}
    target = statistics.fmean(r["after"][metric] for r in target_runs)
    out: dict[str, Optional[int]] = {}
    for method in dict.fromkeys(r["method"] for r in mine):
        curve = mean_curve([r for r in mine if r["method"] == method], metric)
        reached = [step for step, value in curve if step > 0 and value >= target - 1e-12]
        out[method] = reached[0] * rollouts_per_step if reached else None
    return out


def final_lengths(rows: list[dict[str, Any]], suite: str, method: str, tail: float = 0.1) -> Optional[float]:
    """Mean response tokens over the last ``tail`` share of the steps, averaged over seeds."""
    values = []
    for r in rows:
        if r["suite"] == suite and r["method"] == method and r.get("response_tokens"):
            series = r["response_tokens"]
            last = series[-max(1, int(len(series) * tail)):]
            values.append(statistics.fmean(v for _, v in last))
    return statistics.fmean(values) if values else None


def table_metrics(keys: Any) -> list[str]:
    """The columns: avg@n, pass@k (by k), maj@n — what the eval measured (observed pass@n aside)."""
    def k(name: str) -> int:
        return int(name.split("@")[1]) if name.split("@")[1].isdigit() else 0

    avg = [m for m in keys if m.startswith("avg@")]
    passes = sorted((m for m in keys if m.startswith("pass@")), key=k)
    maj = [m for m in keys if m.startswith("maj@")]
    greedy = [m for m in keys if m.startswith("greedy@")]
    return avg + passes + maj + greedy


def format_cell(value: tuple[float, float, int], pct: bool = True) -> str:
    """``mean ± std`` (percent unless not ``pct``); the mean alone for one run; – for none."""
    mean, std, n = value
    if math.isnan(mean):
        return "–"
    scale = 100 if pct else 1
    return f"{scale * mean:.1f} ± {scale * std:.1f}" if n > 1 else f"{scale * mean:.1f}"


def render_markdown(bench: "Bench", rows: list[dict[str, Any]], plots: dict[str, str], command: str) -> str:
    """``bench.md``: how it was run, then per suite the table, the efficiency view and the plots,
    then every run's before and after."""
    lines = _header_lines(bench, rows, command)
    for suite, table in aggregate(rows).items():
        lines += _suite_lines(bench, rows, suite, table, plots)
    shown = [m for m in table_metrics(rows[0]["before"]) if m.startswith("pass@")]
    shown = shown[:1] + shown[-1:] if len(shown) > 1 else shown
    lines += ["## Every run", "", "| suite | method | seed | " + " | ".join(f"{m} before → after" for m in shown)
              + " | wall s |", "|---|---|---:|" + "---:|" * (len(shown) + 1)]
    for r in rows:
        cells = [f"{100 * r['before'].get(m, math.nan):.1f} → {100 * r['after'].get(m, math.nan):.1f}" for m in shown]
        lines.append(f"| {r['suite']} | {r['method']} | {r['seed']} | " + " | ".join(cells) + f" | {r['wall_s']:.0f} |")
    lines.append("")
    return "\n".join(lines)


def _header_lines(bench: "Bench", rows: list[dict[str, Any]], command: str) -> list[str]:
    """Who wrote the report on what machine, what the numbers mean, and the methods compared
    (a method's own setting that a ``--set`` of every run replaces is not its own any more)."""
    import torch
    import transformers

    given = bench.overridden
    alike = all(len(set(bench.budget(suite)["splits"].values())) == 1 for suite in bench.suites)
    return [
        "# Head-to-head benchmark",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')} "
        f"({cpu_name()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}" + source_line(bench.revision, rows) + ").",
        "",
        f"Every method trains the same starting model on the same suites with the same rollout budget; "
        f"seeds {', '.join(map(str, bench.seeds))} (a seed fixes the problem order and the sampling, so "
        + ("every method starts from the same first batch" if alike else
           "methods that split a step's rollouts into the same problems × samples start from the same first batch")
        + "). Numbers are held-out percentages after training, "
        "mean ± sample standard deviation over seeds; `base` is the starting model, evaluated the same way. "
        "pass@k is the unbiased estimator, avg@n the mean correctness of n samples, maj@n the "
        "accuracy of the majority-voted answer; greedy@1 decodes each problem once greedily.",
        "",
        "| method | trains with | settings of its own |",
        "|---|---|---|",
        *(f"| {label} | `{m.method}` | "
          + (", ".join([f"`{k}: {json.dumps(v)}`" for k, v in m.set.items() if k not in given]
                       + ([f"`samples_per_problem: {m.samples_per_problem}`"]
                          if m.samples_per_problem and not given & set(SPLIT_KEYS) else [])) or "–") + " |"
          for label, m in bench.spec.methods.items() if label in bench.methods),
        "",
        *([f"Every run also sets {', '.join(f'`{o}`' for o in bench.user_overrides)} (`--set`, over any "
           "method's own setting of the same key).", ""] if bench.user_overrides else []),
    ]


def cpu_name() -> str:
    """The processor's model name and the machine type: a tiny base pretrained on another CPU can
    differ, so a report names the one it ran on. Linux reads /proc/cpuinfo, macOS sysctl."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            name = next((line.partition(":")[2].strip() for line in fh
                         if line.partition(":")[0].strip() == "model name"), "")
    except OSError:
        if platform.system() == "Darwin":
            import subprocess

            try:
                name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                      text=True, timeout=5).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                name = ""
    return ", ".join(part for part in (name or platform.processor(), platform.machine()) if part)


def _starting_models(rows: list[dict[str, Any]], suite: str) -> list[str]:
    """The suite's starting model(s): the directory's name and its weights' fingerprint."""
    seen = {(r.get("model"), r.get("model_sha256")) for r in rows if r["suite"] == suite}
    named = sorted(f"`{name}` (weights sha256 `{sha}`)" for name, sha in seen if name and sha)
    if not named:
        return []
    return [f"Starting model: {', '.join(named)}. Two reports whose fingerprints differ started this "
            "suite from different weights.", ""]


def calibration_warnings(bench: "Bench", rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per suite whose starting model falls outside the suite's ``base`` ranges."""
    return [w for suite, table in aggregate(rows).items() for w in outside_calibration(bench, suite, table["base"])]


def outside_calibration(bench: "Bench", suite: str, base: dict[str, Any]) -> list[str]:
    """:func:`calibration_warnings` for one suite, given its starting model's (mean, std, n) per
    metric; ranges are compared as the percentages the report prints, so 10.0 % is inside 0–10 %."""
    out = []
    for metric, (low, high) in bench.spec.suites[suite].base.items():
        mean = base.get(metric, (math.nan, 0.0, 0))[0]
        if math.isnan(mean):
            out.append(f"{suite}: the starting model's {metric} was not measured, so its range "
                       f"{100 * low:g}–{100 * high:g} % cannot be checked (is the metric in eval.ks?).")
        elif not round(100 * low, 1) <= round(100 * mean, 1) <= round(100 * high, 1):
            out.append(f"{suite}: the starting model's {metric} is {100 * mean:.1f} %, outside the suite's "
                       f"{100 * low:g}–{100 * high:g} %, so these runs are not in the regime the suite "
                       "is built for (a tiny base is pretrained by the machine that runs the bench: "
                       "compare the starting model's fingerprint with the one in docs/results/).")
    return out


def _splits(budget: dict[str, Any]) -> str:
    """A step's rollouts as problems × samples: one split for every method, or each method's."""
    splits = budget["splits"]
    if len(set(splits.values())) == 1:
        problems, samples = next(iter(splits.values()))
        return f"{problems} problems × {samples} samples"
    each = "; ".join(f"{method} {p} × {k}" for method, (p, k) in splits.items())
    return f"{budget['per_step']} rollouts (problems × samples: {each})"


def _suite_lines(bench: "Bench", rows: list[dict[str, Any]], suite: str, table: dict[str, Any],
                 plots: dict[str, str]) -> list[str]:
    """One suite's section: its budget, the mean ± std table, the efficiency view, its plots."""
    b = bench.budget(suite)
    desc = bench.spec.suites[suite].description
    lines = [f"## {suite}", ""] + ([desc, ""] if desc else [])
    lines += [
        f"Budget per run: {b['steps']} steps × {_splits(b)} = {b['rollouts']} rollouts (≤ {b['max_new_tokens']} new "
        f"tokens each); held-out eval {b['eval_problems']} problems × {b['eval_samples']} samples.",
        "",
    ] + _starting_models(rows, suite)
    lines += [f"**Outside the calibration.** {w}\n" for w in outside_calibration(bench, suite, table["base"])]
    metrics = table_metrics(table["base"])
    header = ["method", *metrics, f"Δ {bench.spec.plot_metric} vs base", "wall s / run"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    base, key = table["base"], bench.spec.plot_metric
    for row_name, entry in table.items():  # "base", then each method
        cells = [format_cell(entry[m]) for m in metrics]
        if row_name == "base":
            delta, wall = "", ""
        else:
            delta = f"{100 * (entry[key][0] - base[key][0]):+.1f}" if key in entry else "–"
            wall = format_cell(entry["wall_s"], pct=False)
        label = "base" if row_name == "base" else f"**{row_name}**"
        lines.append("| " + " | ".join([label, *cells, delta, wall]) + " |")
    lines.append("")
    lines += _leader_lines(rows, suite, [key] + widest_pass([r for r in rows if r["suite"] == suite], key))
    lines += _efficiency_lines(bench, rows, suite, table)
    if suite in plots:
        lines += [f"![{key} vs rollouts on {suite}]({os.path.basename(plots[suite])})", ""]
    if f"{suite}:length" in plots:
        lines += [f"![response length vs step on {suite}]({os.path.basename(plots[suite + ':length'])})", ""]
    return lines


def _leader_lines(rows: list[dict[str, Any]], suite: str, metrics: list[str]) -> list[str]:
    """Per metric, the method with the best mean and the methods within noise of it
    (:func:`leaders`): a lead of a point over three seeds reads differently from one of ten."""
    out = []
    for metric in metrics:
        scores: dict[str, dict[Any, float]] = {}
        for r in rows:
            if r["suite"] == suite and metric in r["after"]:
                scores.setdefault(r["method"], {})[r["seed"]] = r["after"][metric]
        if len(scores) < 2:
            continue
        best, gaps = leaders(scores)
        mean = 100 * statistics.fmean(scores[best].values())
        tied = ", ".join(f"{name} ({100 * gap['mean']:.1f} ± {100 * gap['se']:.1f})"
                         for name, gap in gaps.items() if within_noise(gap))
        if len(scores[best]) < 2:
            tied = "not judged (one seed)"
        out.append(f"Best {metric}: **{best}** ({mean:.1f}); within noise of it: {tied or 'none'}.")
    if out:
        out[-1] += (" *Within noise*: the gap to the best, paired by seed (mean ± standard error), is within one "
                    "standard error.")
    return [" ".join(out), ""] if out else []


def _efficiency_lines(bench: "Bench", rows: list[dict[str, Any]], suite: str, table: dict[str, Any]) -> list[str]:
    """Sample efficiency against GRPO and response length against the reference, per method.

    Efficiency is read for the plot metric and, where the evals measured it, the widest pass@k:
    a method that hedges can reach GRPO's pass@k long before its pass@1 at temperature 1."""
    b = bench.budget(suite)
    per_step = b["per_step"]
    mine = [r for r in rows if r["suite"] == suite]
    metrics = [bench.spec.plot_metric] + widest_pass(mine, bench.spec.plot_metric)
    reaches = {m: rollouts_to_reach(rows, suite, "grpo", m, per_step) for m in metrics}
    refs = [r["reference_tokens"] for r in mine if r.get("reference_tokens")]
    ref = statistics.fmean(refs) if refs else None
    methods = [m for m in table if m != "base"]
    if not reaches[metrics[0]] and ref is None:
        return []
    head = "| method | " + " | ".join(f"rollouts to reach grpo's final {m} | vs grpo's budget" for m in metrics)
    head += " | response tokens (last 10 % of steps) | vs reference |"
    lines = [head, "|---|" + "---:|---:|" * len(metrics) + "---:|---:|"]
    for method in methods:
        cells = []
        for metric in metrics:
            reach = reaches[metric]
            got = reach.get(method) if reach else None
            cells += [f"{got}" if got is not None else ("–" if not reach else "not reached"),
                      f"{got / b['rollouts']:.2f}×" if got is not None else "–"]
        length = final_lengths(rows, suite, method)
        cells += [f"{length:.1f}" if length is not None else "–",
                  f"{length / ref:.2f}×" if length is not None and ref else "–"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if ref is not None:
        lines += ["", f"Reference responses average {ref:.1f} tokens (with the end token)."]
    return lines + [""]


def widest_pass(runs: list[dict[str, Any]], metric: str) -> list[str]:
    """``[pass@k]`` for the largest k every run's final eval and curve hold, when it is not
    ``metric``; else ``[]``."""
    if not runs:
        return []
    held = set.intersection(*({k for k in r["after"] if k.startswith("pass@") and k.split("@")[1].isdigit()}
                              & set().union(*(p.keys() for p in r.get("curve") or [{}])) for r in runs))
    widest = max(held, key=lambda k: int(k.split("@")[1]), default=None)
    return [widest] if widest is not None and widest != metric else []


def terminal_table(bench: "Bench", rows: list[dict[str, Any]]) -> str:
    """Per suite, the mean ± std table of ``bench.md``, for the terminal."""
    out = []
    for suite, table in aggregate(rows).items():
        metrics = table_metrics(table["base"])
        body = [("method", *metrics)] + [(m, *(format_cell(e[k]) for k in metrics)) for m, e in table.items()]
        out.append(f"{suite}\n{render_table(body)}")
    return "\n\n".join(out)


def source_line(revision: Optional[str], rows: list[dict[str, Any]]) -> str:
    """The report header's source clause: ``, source R`` when every run was trained at the
    revision ``R`` writing the report; nothing when neither knows one (an installed wheel); else
    the revisions the runs were trained at (runs written before summaries recorded one count as
    unrecorded) and the one that wrote the report."""
    counts = Counter(r.get("source") or "unrecorded" for r in rows)
    trained = sorted(counts)
    if trained == [revision]:
        return f", source {revision}"
    if revision is None and trained == ["unrecorded"]:
        return ""  # an installed wheel, neither then nor now a checkout: nothing to name
    said = ", ".join(f"{counts[t]} runs " + ("at an unrecorded source" if t == "unrecorded" else f"at source {t}")
                     for t in trained)
    return f"; trained: {said}; report written at source {revision or 'unknown (not a git checkout)'}"
