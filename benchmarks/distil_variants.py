"""Which DistIL future-credit variant to make the default: every variant on the validation split.

    python benchmarks/distil_variants.py [--suites sparse_digits digits] [--seeds 0] [--output-dir runs/variants]
                                         [--json docs/results/distil_variants.json]

Each variant is ``method: distil`` with some ``loss.*`` keys set (the grid is ``VARIANTS``
below), run as the embedded bench runs it, with ``eval.split=validation``: the evaluation
problems are held out of the train split, never the test problems. Prints validation pass@1,
pass@8, greedy@1 and the final response length per variant and suite, and the mean pass@1
over suites that picks the default. Runs are reused when re-run with the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

SUMMED = {"loss.future_reduce": "sum"}
"""The grid below was run with the future cost summed over the later tokens, before the mean
(the last variant) became the default; each summed variant says so, so that it stays what it was."""

NO_SUCCESS = {"loss.reward_weight": 0.0}
"""The variants without the success term ran when its weight defaulted to 0; they say so, as the
default has since become 1 and then 3."""

VARIANTS = {
    "ce · full · none": {"loss.future_cost": "ce", "loss.stop_credit": "full", "loss.baseline": "none",
                         **NO_SUCCESS, **SUMMED},
    "ce · full · loo": {"loss.future_cost": "ce", "loss.stop_credit": "full", "loss.baseline": "group_loo",
                        **NO_SUCCESS, **SUMMED},
    "kl · full · loo": {"loss.future_cost": "kl", "loss.stop_credit": "full", "loss.baseline": "group_loo",
                        **NO_SUCCESS, **SUMMED},
    "kl · local · loo": {"loss.future_cost": "kl", "loss.stop_credit": "local", "loss.baseline": "group_loo",
                         **NO_SUCCESS, **SUMMED},
    "kl · local · none": {"loss.future_cost": "kl", "loss.stop_credit": "local", "loss.baseline": "none",
                          **NO_SUCCESS, **SUMMED},
    "kl · local · loo · γ 0.9": {"loss.future_cost": "kl", "loss.stop_credit": "local", "loss.baseline": "group_loo",
                                 "loss.gamma": 0.9, **NO_SUCCESS, **SUMMED},
    "kl · local · loo · λ 1": {"loss.future_cost": "kl", "loss.stop_credit": "local", "loss.baseline": "group_loo",
                               "loss.reward_weight": 1.0, **SUMMED},
    "kl · local · loo · λ 1 · mean": {"loss.future_cost": "kl", "loss.stop_credit": "local",
                                      "loss.baseline": "group_loo", "loss.reward_weight": 1.0,
                                      "loss.future_reduce": "mean"},
    "local term only": {"loss.future_credit": False},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", nargs="+", default=["sparse_digits", "digits"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="names from VARIANTS")
    parser.add_argument("--output-dir", default=os.path.join("runs", "variants"))
    parser.add_argument("--json", help="write the table as JSON here")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from distil_core.cli.bench import Bench, final_lengths, load_spec

    spec, base = load_spec()
    results = {}
    for name in args.variants:
        overrides = ["eval.split=validation", "eval.greedy=true", *args.overrides,
                     *(f"{k}={json.dumps(v)}" for k, v in VARIANTS[name].items())]
        slug = "".join(c if c.isalnum() else "_" for c in name)
        bench = Bench(spec, base, os.path.join(args.output_dir, slug), suites=args.suites, methods=["distil"],
                      seeds=args.seeds, overrides=overrides, echo=lambda m: print(m, file=sys.stderr, flush=True))
        rows = bench.run()
        per_suite = {}
        for suite in args.suites:
            mine = [r for r in rows if r["suite"] == suite]
            per_suite[suite] = {
                key: statistics.fmean(r["after"][key] for r in mine) for key in ("pass@1", "pass@8", "greedy@1")
            }
            per_suite[suite]["length"] = final_lengths(rows, suite, "distil")
            per_suite[suite]["reference_tokens"] = mine[0].get("reference_tokens")
        results[name] = {"suites": per_suite,
                         "mean_pass@1": statistics.fmean(v["pass@1"] for v in per_suite.values())}
    head = "| variant | " + " | ".join(f"{s} pass@1 / pass@8 / greedy@1 / length" for s in args.suites) + " | mean pass@1 |"
    print(head)
    print("|---|" + "---:|" * (len(args.suites) + 1))
    for name, entry in results.items():
        cells = [f"{100 * v['pass@1']:.1f} / {100 * v['pass@8']:.1f} / {100 * v['greedy@1']:.1f} / {v['length']:.1f}"
                 for v in entry["suites"].values()]
        print(f"| {name} | " + " | ".join(cells) + f" | {100 * entry['mean_pass@1']:.1f} |")
    best = max(results, key=lambda n: results[n]["mean_pass@1"])
    print(f"\nBest on validation: {best}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"seeds": args.seeds, "suites": args.suites, "variants": VARIANTS, "results": results,
                       "best": best}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
