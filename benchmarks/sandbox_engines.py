"""Sandbox scaling over engines: jobs per second on one Docker engine, two, and two plus bwrap.

    python benchmarks/sandbox_engines.py [--jobs 200] [--workers 2] [--rounds 3] [--second unix:///x.sock]

Every configuration runs the same job list through an :class:`~distil_sandbox.EnginePool` whose
engines each have ``--workers`` workers:
- ``1 docker``: the local engine (``DOCKER_HOST``'s);
- ``2 docker``: that one and a second engine (``--second``, or a temporary ``dockerd`` this
  script starts on its own socket and data-root, which needs root);
- ``2 docker + bwrap``: both, plus ``bwrap`` workers on this machine.
Two workloads: ``print("ok")``, and one grading run of the code-execution plugin on a problem
with 20 assert tests. Configurations are measured in rotation, ``--rounds`` times each (the
median is reported), after a warm-up that starts every worker. All engines here share this
machine's CPUs, so a second engine adds workers, not cores: expect gains only up to the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from distil_sandbox import EnginePool, ExecResult

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "sandbox" / "tests"))  # SpareDockerd, the tests' second engine

from sandbox_throughput import TRIVIAL, twenty_test_job  # noqa: E402


def configurations(second: str, workers: int) -> dict[str, list[str]]:
    one = [f"docker*{workers}"]
    two = one + [f"docker:{second}*{workers}"]
    return {"1 docker": one, "2 docker": two, "2 docker + bwrap": two + [f"bwrap*{workers}"]}


def measure(engines: list[str], job: dict[str, Any], count: int, check: Callable[[ExecResult], bool]) -> float:
    """Jobs per second of ``count`` copies of ``job`` on a fresh pool of ``engines``."""
    args = {k: v for k, v in job.items() if k != "code"}
    with EnginePool(engines, memory_mb=512, max_pending=4 * count) as pool:
        total_workers = sum(spec.workers for spec in pool.specs)
        warm_up = [pool.submit(job["code"], **args) for _ in range(2 * total_workers)]  # every worker warm
        [f.result() for f in warm_up]
        started = time.perf_counter()
        results = [f.result() for f in [pool.submit(job["code"], **args) for _ in range(count)]]
        elapsed = time.perf_counter() - started
        stats = pool.stats
    bad = [r for r in results if not check(r)]
    if bad:
        raise SystemExit(f"{engines}: {len(bad)} of {count} jobs failed, e.g. {bad[0]}")
    if stats["engines_down"] or stats["requeued"]:
        raise SystemExit(f"{engines}: an engine failed during the measurement: {stats}")
    return count / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200, help="jobs per measurement")
    ap.add_argument("--workers", type=int, default=2, help="workers per engine")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per configuration (median reported)")
    ap.add_argument("--second", help="address of a second Docker engine (default: start a temporary dockerd)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)

    spare = None
    if args.second is None:
        from sandbox_docker_testlib import SpareDockerd

        why = SpareDockerd.cannot_run()
        if why:
            raise SystemExit(f"no second engine: {why}; pass --second ADDRESS")
        spare = SpareDockerd().start()
        args.second = spare.address
    try:
        workloads = {
            "trivial": ({"code": TRIVIAL, "timeout_s": 10}, lambda r: r.ok and r.stdout.strip() == "ok"),
            "20 tests": (twenty_test_job(), lambda r: r.ok and r.stdout.count("DISTIL-RESULT") >= 20),
        }
        configs = configurations(args.second, args.workers)
        rates: dict[str, dict[str, list[float]]] = {name: {w: [] for w in workloads} for name in configs}
        for round_ in range(args.rounds):
            for workload, (job, check) in workloads.items():
                for name, engines in configs.items():
                    rate = measure(engines, job, args.jobs, check)
                    rates[name][workload].append(rate)
                    print(f"  round {round_ + 1} {workload:<9} {name:<17} {rate:7.1f} jobs/s", file=sys.stderr,
                          flush=True)
    finally:
        if spare is not None:
            spare.stop()

    medians = {name: {w: statistics.median(values) for w, values in per.items()} for name, per in rates.items()}
    print(render(medians, args.workers, os.cpu_count() or 0))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"jobs_per_s": rates, "median": medians, "jobs": args.jobs, "workers": args.workers}, fh,
                      indent=2)
    return 0


def render(medians: dict[str, dict[str, float]], workers: int, cores: int) -> str:
    workloads = list(next(iter(medians.values())))
    lines = [f"{workers} workers per engine, {cores} CPU cores",
             "| engines | " + " | ".join(f"{w} jobs/s | vs 1 docker" for w in workloads) + " |",
             "|---|" + "---:|---:|" * len(workloads)]
    base = medians["1 docker"]
    for name, values in medians.items():
        cells = [f"{values[w]:.1f} | {values[w] / base[w]:.2f}×" for w in workloads]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
