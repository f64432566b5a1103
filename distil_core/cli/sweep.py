"""``distil bench --sweep KEY=V1,V2,...``: choose one setting per method on the validation split.

Every value of ``KEY`` is a whole bench (every suite, method and seed asked for) under
``OUTPUT_DIR/KEY=VALUE/``, evaluated on the validation problems (``eval.split: validation``, held
out of the train split), never the test problems; per method, the value whose mean validation
metric over suites and seeds is highest is chosen (the first value on a tie). The benches are
all planned and checked before the first one trains, so a bad value is an error at once, not
after hours of the good ones.

A highest mean over three seeds can be noise. So the report also gives, for every other value,
its paired gap to the chosen one: the difference on each (suite, seed), which shares the
problems and the sampling seed and so cancels most of their variance, as a mean ± its standard
error. A value whose gap is within one standard error is named *within noise* of the choice:
the choice stands, and the reader sees that the sweep did not resolve it. A mean over suites
can also hide what a value trades: the report ends with each value's means per suite, of the
chosen metric and of the other pass@k the runs recorded (:func:`per_suite`), which the choice
does not read.

Some settings only make sense together: a step's rollouts split into problems × samples per
problem keeps the rollouts a step consumes only if both keys move at once. ``--sweep`` given for
several keys pairs their values in order (:func:`parse_sweeps`); each value is then a list, one
entry per key, and its runs go under ``OUTPUT_DIR/K1=V1,K2=V2/``.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from typing import Any, Callable, Optional

import yaml

from distil_core.cli.bench import BENCH_OWNED, Bench, BenchSpec, command_line, flat_args, load_spec, progress, report_dir
from distil_core.cli.report import leaders, mean_std, within_noise
from distil_core.errors import ConfigError
from distil_core.io import atomic_write_json, atomic_write_text

__all__ = ["parse_sweep", "parse_sweeps", "value_folder", "plan_sweep", "run_sweep", "choose", "per_suite",
           "render_sweep", "shown", "split_values", "main_sweep"]


def parse_sweep(text: str, *, alone: bool = True) -> tuple[str, list[Any]]:
    """``optim.lr=1e-4,3e-4,1e-3`` → ("optim.lr", [0.0001, 0.0003, 0.001]); values parsed as YAML,
    and a number YAML reads as text (``1e-4``, which YAML 1.1 does not call a float) as a number.
    A value may repeat only where the key is swept with others (``alone`` False): its pairs differ."""
    if "=" not in text:
        raise ConfigError(f"--sweep {text!r}: expected KEY=V1,V2,..., for example --sweep optim.lr=1e-4,3e-4,1e-3")
    key, raw = text.split("=", 1)
    values = [_value(v) for v in split_values(raw) if v.strip()]
    if not key.strip() or len(values) < 2:
        raise ConfigError(f"--sweep {text!r}: name a key and at least two values")
    if alone and len({json.dumps(v) for v in values}) < len(values):
        raise ConfigError(f"--sweep {text!r}: a value is named twice; name each once")
    key = key.strip()
    if key in (*BENCH_OWNED, "eval", "eval.split"):
        raise ConfigError(f"--sweep {key}: the sweep cannot choose {key!r}: the bench gives each run its method and "
                          "seed, and a sweep chooses on the validation split, never the test problems.")
    names = [value_folder([key], v) for v in values]
    odd = next((n for n in names if not _FOLDER.fullmatch(n)), None)
    if odd is not None or (alone and len(set(names)) < len(names)):
        what = f"{odd!r} is not a folder name" if odd is not None else "two values would share one folder"
        raise ConfigError(f"--sweep {text!r}: each value's runs go to OUTPUT_DIR/KEY=VALUE, and {what}; give values "
                          "without '/', '\\' or control characters, each written differently.")
    return key, values


def split_values(raw: str) -> list[str]:
    """``0.1,[0.9,0.99],{a: 1, b: 2}`` → ["0.1", "[0.9,0.99]", "{a: 1, b: 2}"]: the commas that
    separate values, not those inside a YAML list, mapping or quoted string, so a key whose value is
    a list (``optim.betas``) can be swept. As in YAML, a bracket or quote opens only where an entry
    starts (``Let's think`` and ``a[b`` are plain words); one left open is the YAML parser's to refuse."""
    parts, depth, quote, start, entry_start = [], 0, "", 0, True
    for i, char in enumerate(raw):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'[{" and entry_start:
            quote, depth = (char, depth) if char in "\"'" else ("", depth + 1)
        elif char in "]}" and depth:
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(raw[start:i])
            start = i + 1
        if not char.isspace():
            entry_start = char in ",[{:" and not quote
    return parts + [raw[start:]]


def parse_sweeps(texts: list[str]) -> tuple[list[str], list[Any]]:
    """Every ``--sweep`` given: the keys, and the values to run. One key: its values, as
    :func:`parse_sweep` reads them. Several: their values paired in order, each a list with one
    entry per key (``a=1,2`` and ``b=x,y`` → ``[[1, "x"], [2, "y"]]``); each key must name as many
    values, and no key twice."""
    parsed = [parse_sweep(text, alone=len(texts) == 1) for text in texts]
    keys = [key for key, _values in parsed]
    twice = next((key for key in keys if keys.count(key) > 1), None)
    if twice is not None:
        raise ConfigError(f"--sweep {twice}: the key is given twice; give each key once, with all its values")
    inside = next(((a, b) for a in keys for b in keys if b.startswith(a + ".")), None)
    if inside is not None:
        raise ConfigError(f"--sweep {inside[1]}: it lies inside --sweep {inside[0]}, which would set it too; sweep "
                          "one of them")
    counts = {key: len(values) for key, values in parsed}
    if len(set(counts.values())) > 1:
        raise ConfigError("--sweep: several keys pair their values in order, so each must name as many values ("
                          + ", ".join(f"{key}: {n}" for key, n in counts.items()) + ")")
    if len(parsed) == 1:
        return keys, parsed[0][1]
    combos = [list(combo) for combo in zip(*(values for _key, values in parsed))]
    if len({json.dumps(combo) for combo in combos}) < len(combos):
        raise ConfigError("--sweep: two pairs of values are the same (" + ", ".join(keys) + "); name each once")
    folders = [value_folder(keys, combo) for combo in combos]
    too_long = next((f for f in folders if not _FOLDER.fullmatch(f)), None)
    if too_long is not None:
        raise ConfigError(f"--sweep: the runs of one pair of values go to OUTPUT_DIR/{too_long}, which is not a folder "
                          "name (at most 200 characters)")
    if len(set(folders)) < len(folders):
        raise ConfigError("--sweep: two pairs of values would share one folder (" + ", ".join(keys) + "); write "
                          "each pair differently")
    return keys, combos


def value_folder(keys: list[str], value: Any) -> str:
    """The folder of one value's runs under the sweep's output directory (``KEY=VALUE``; for
    several keys ``K1=V1,K2=V2``). The reports write the value as :func:`shown` does."""
    return ",".join(f"{key}={v}" for key, v in zip(keys, _entries(keys, value)))


def _assigned(keys: list[str], value: Any) -> list[str]:
    """The ``--set`` overrides that give the runs one value of the sweep."""
    return [f"{key}={json.dumps(v)}" for key, v in zip(keys, _entries(keys, value))]


def _entries(keys: list[str], value: Any) -> list[Any]:
    """One value of the sweep as one setting per key (a value of several keys is already a list)."""
    return value if len(keys) > 1 else [value]


_FOLDER = re.compile(r"[^/\\|\x00-\x1f\x7f]{1,200}")  # a cell of sweep.md too: no "|"


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # 1e-4, 3.E5: YAML 1.1 calls them text


def _value(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "it is not YAML"
        raise ConfigError(f"--sweep value {text.strip()!r}: {problem}; write a list as [a,b] and quote a "
                          "value that holds a comma") from None
    return float(value) if isinstance(value, str) and _NUMBER.fullmatch(value.strip()) else value


def plan_sweep(spec: BenchSpec, base_dir: str, output_dir: str, keys: list[str], values: list[Any], *,
               quick: bool = False, suites: Optional[list[str]] = None, methods: Optional[list[str]] = None,
               seeds: Optional[list[int]] = None, overrides: Optional[list[str]] = None,
               echo: Callable[[str], None] = print) -> list[tuple[Any, Bench]]:
    """One checked bench per value, on the validation split: every value's configs are built and
    checked here, before any of them trains."""
    plan = []
    for value in values:
        bench = Bench(spec, base_dir, os.path.join(output_dir, value_folder(keys, value)), quick=quick, suites=suites,
                      methods=methods, seeds=seeds, echo=echo,
                      overrides=list(overrides or []) + ["eval.split=validation"] + _assigned(keys, value))
        bench.check()
        plan.append((value, bench))
    _same_budget(keys, plan)
    return plan


def _same_budget(keys: list[str], plan: list[tuple[Any, Bench]]) -> None:
    """Refuse a sweep whose values would not spend the same rollouts: the highest validation
    metric would then choose the larger budget. How a step's rollouts split into problems ×
    samples may differ between values; the rollouts per step, the steps, the tokens per rollout
    and the evaluation may not."""
    def shared(bench: Bench, suite: str) -> dict[str, Any]:
        return {k: v for k, v in bench.budget(suite).items() if k != "splits"}

    (first, head), *others = plan
    for value, bench in others:
        for suite in head.suites:
            if shared(bench, suite) != shared(head, suite):
                raise ConfigError(
                    f"--sweep: {_label(keys, value)} would give suite {suite!r} another rollout budget than "
                    f"{_label(keys, first)} ({shared(bench, suite)} against {shared(head, suite)}), and the highest "
                    "validation metric would choose the larger budget; sweep settings that keep the rollouts per "
                    "step, the steps, the tokens per rollout and the evaluation (a split of the rollouts needs both "
                    "keys: --sweep rollout.problems_per_step=16,64 --sweep rollout.samples_per_problem=8,2).")


def _label(keys: list[str], value: Any) -> str:
    """One value as the dry run and the messages show it: ``KEY=JSON`` for one key, the folder
    name (``K1=V1,K2=V2``) for several."""
    return f"{keys[0]}={json.dumps(value)}" if len(keys) == 1 else value_folder(keys, value)


def run_sweep(spec: BenchSpec, keys: list[str], values: list[Any], plan: list[tuple[Any, Bench]]) -> dict[str, Any]:
    """Run ``plan`` (:func:`plan_sweep`); per method, :func:`choose` over the validation
    ``plot_metric`` of every (suite, seed)."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for value, bench in plan:
        for row in bench.run():
            scores = results.setdefault(row["method"], {}).setdefault(json.dumps(value), {})
            scores[f"{row['suite']}/{row['seed']}"] = row["after"][spec.plot_metric]
            rows.setdefault(row["method"], {}).setdefault(json.dumps(value), []).append(row)
    chosen = {method: choose(values, by_value) for method, by_value in results.items()}
    return {"key": ", ".join(keys), "keys": keys, "values": values, "metric": spec.plot_metric, "chosen": chosen,
            "per_suite": {method: per_suite(by_value) for method, by_value in rows.items()}}


def per_suite(rows_by_value: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """JSON-encoded value → suite → metric → mean over the seeds, for every number a run's
    ``after`` holds (bench rows, :meth:`~distil_core.cli.bench.Bench.run`)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for value, value_rows in rows_by_value.items():
        scores: dict[str, dict[str, list[float]]] = {}
        for row in value_rows:
            for metric, score in row["after"].items():
                if isinstance(score, (int, float)) and not isinstance(score, bool):
                    scores.setdefault(row["suite"], {}).setdefault(metric, []).append(float(score))
        out[value] = {suite: {m: statistics.fmean(v) for m, v in metrics.items()} for suite, metrics in scores.items()}
    return out


def choose(values: list[Any], by_value: dict[str, dict[str, float]]) -> dict[str, Any]:
    """One method's choice. ``by_value``: JSON-encoded value → {"suite/seed": score}. Returns the
    value with the highest mean score (the first listed on a tie) as ``value``; per value the
    mean (``validation``) and the sample std over runs (``std``); per other value its paired gap
    to the chosen one (``gap``, :func:`~distil_core.cli.report.paired_gap`); and in
    ``within_noise`` the values whose gap is at most one standard error."""
    ordered = {json.dumps(v): by_value[json.dumps(v)] for v in values if json.dumps(v) in by_value}
    best, gaps = leaders(ordered)
    stats = {v: mean_std(list(scores.values())) for v, scores in ordered.items()}
    return {"value": json.loads(best), "validation": {v: mean for v, (mean, _) in stats.items()},
            "std": {v: std for v, (_, std) in stats.items()}, "gap": gaps,
            "within_noise": [json.loads(v) for v, gap in gaps.items() if within_noise(gap)]}


def _paired(result: dict[str, Any]) -> str:
    """For a sweep of several keys taken together, how to read a value: one entry per key."""
    keys = result.get("keys") or []
    if len(keys) < 2:
        return ""
    first = result["values"][0]
    return (" The keys were swept together: each value lists one setting per key, in the order " +
            ", ".join(f"`{k}`" for k in keys) + " (" + shown(first) + " is " +
            ", ".join(f"`{k}` {shown(v)}" for k, v in zip(keys, first)) + ").")


def shown(value: Any) -> str:
    """A swept value as the reports write it: as YAML would take it on the command line, a word
    bare (``cosine``, not ``"cosine"``), a list in brackets (``[0.9, 0.999]``)."""
    if isinstance(value, str):  # bare where it reads back as itself, in a list too
        return value if _reads_back(value) else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    return json.dumps(value)


def render_sweep(result: dict[str, Any], command: str) -> str:
    """``sweep.md``: per method, the mean ± std validation metric at every value, the value
    chosen, and the values within noise of it (:func:`distil_core.cli.sweep.choose`); then each
    value's means per suite, where the result holds them (:func:`per_suite`)."""
    values = [json.dumps(v) for v in result["values"]]
    lines = [f"# Sweep of `{result['key']}` on the validation split", "",
             f"Written by `{command}` on {time.strftime('%Y-%m-%d')}. Validation {result['metric']} (%), mean ± "
             "sample std over the suites and seeds; validation problems are held out of the train split, never the "
             "test set. The highest mean is chosen. *Within noise*: the values whose paired gap to the chosen one "
             "(the difference on each suite and seed, mean ± standard error) is within one standard error, so the "
             "sweep does not tell them from the choice." + _paired(result),
             "", "| method | " + " | ".join(map(shown, result["values"])) + " | chosen | within noise (gap) |",
             "|---|" + "---:|" * (len(values) + 1) + "---|"]
    for method, entry in result["chosen"].items():
        std = entry.get("std", {})
        cells = [f"{100 * entry['validation'][v]:.1f}" + (f" ± {100 * std[v]:.1f}" if v in std else "")
                 if v in entry["validation"] else "–" for v in values]
        gaps = entry.get("gap", {})
        tied = ", ".join(f"{shown(w)} ({100 * gaps[v]['mean']:.1f} ± {100 * gaps[v]['se']:.1f})"
                         for w in entry.get("within_noise", []) for v in [json.dumps(w)])
        tied = tied or ("none" if gaps else "not judged (one seed)")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | **{shown(entry['value'])}** | {tied} |")
    return "\n".join(lines + _suite_tables(result)) + "\n"


def _reads_back(word: str) -> bool:
    try:
        return not re.search(r"[,\[\]{}]", word) and _value(word) == word
    except ConfigError:
        return False


def _metrics_shown(metric: str, by_value: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """The chosen metric, then every other pass@k the runs recorded, by k."""
    recorded = {m for suites in by_value.values() for scores in suites.values() for m in scores}
    others = sorted((m for m in recorded if re.fullmatch(r"pass@\d+", m) and m != metric), key=lambda m: int(m[5:]))
    return [metric] + others


def _suite_tables(result: dict[str, Any]) -> list[str]:
    """Per method, each value's validation means per suite (:func:`per_suite`) and over suites:
    what the mean the choice reads is made of, and what it trades on the other pass@k."""
    if not result.get("per_suite"):
        return []
    lines: list[str] = []
    for method, by_value in result["per_suite"].items():
        metrics = _metrics_shown(result["metric"], by_value)
        suites = list(dict.fromkeys(suite for by_suite in by_value.values() for suite in by_suite))
        lines += ["", f"## {method}: each suite", "",
                  f"Validation {' / '.join(metrics)} (%), mean over seeds; the last column is the mean over suites. "
                  f"The choice reads {metrics[0]} alone.", "",
                  "| value | " + " | ".join(suites) + " | mean |", "|---|" + "---:|" * (len(suites) + 1)]
        for value in result["values"]:
            by_suite = by_value.get(json.dumps(value))
            if not by_suite:
                continue
            cells = [by_suite.get(suite, {}) for suite in suites]
            overall = {m: statistics.fmean(c[m] for c in cells if m in c) for m in metrics if any(m in c for c in cells)}
            row = [" / ".join(f"{100 * c[m]:.1f}" if m in c else "–" for m in metrics) for c in cells + [overall]]
            lines.append(f"| {shown(value)} | " + " | ".join(row) + " |")
    return lines


def main_sweep(args: Any) -> int:
    """``distil bench --sweep``; with ``--dry-run``, only its plan."""
    spec, base_dir = load_spec(args.spec)
    command, echo = command_line(args), progress
    keys, values = parse_sweeps(args.sweep)
    output_dir = args.output_dir or os.path.join("runs", "sweep")
    options = dict(quick=args.quick, suites=flat_args(args.suites), methods=flat_args(args.methods),
                   seeds=flat_args(args.seeds), overrides=args.overrides, echo=echo)
    plan = plan_sweep(spec, base_dir, output_dir, keys, values, **options)
    if args.dry_run:
        for value, bench in plan:
            for (suite, method, seed), cfg in bench.configs.items():
                print(f"{_label(keys, value)}\t{suite}\t{method}\tseed {seed}\t{cfg.train.steps} steps\t"
                      f"{bench.run_dir(suite, method, seed)}")
        return 0
    reports = report_dir(args, output_dir)
    result = run_sweep(spec, keys, values, plan)
    atomic_write_json(os.path.join(reports, "sweep.json"), {"command": command, **result})
    md = render_sweep(result, command)
    atomic_write_text(os.path.join(reports, "sweep.md"), md)
    print(md)
    return 0
