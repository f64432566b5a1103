"""Sandbox throughput: executions per second per backend, against a plain subprocess.

    python benchmarks/sandbox_throughput.py [--runs 40] [--workers 2] [--json out.json]

Two workloads, each measured in this one run:
- trivial: ``print("ok")``;
- 20 tests: one grading run of the code-execution plugin on a problem with 20 assert tests
  (trusted harness + solution child + 20 RPC calls, HMAC-signed results).
"plain" is the same program started with ``subprocess`` and no isolation at all. Sequential
rows run one job at a time; pool rows keep ``--workers`` jobs in flight (the docker pool reuses
warm containers), compared with plain subprocesses at the same concurrency. Ratios are time per
execution, sandbox / plain (lower is better; 1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import distil_sandbox
from distil_sandbox import Pool

TRIVIAL = 'print("ok")\n'
SOLUTION = "def add(a, b):\n    return a + b\n"


def twenty_test_job() -> dict[str, Any]:
    from distil_code_exec.verifier import CodeExecVerifier
    from distil_core.types import Problem, Rollout

    asserts = [f"assert add({i}, {i + 1}) == {2 * i + 1}" for i in range(20)]
    problem = Problem(id="bench-add", prompt="Write add(a, b).", reference={"asserts": asserts})
    rollout = Rollout(problem_id=problem.id, group_index=0, response_text=SOLUTION, response_ids=[])
    return CodeExecVerifier(backend="process", cache_size=0).grading_job(problem, rollout)


def plain_run(job: dict[str, Any]) -> None:
    """The job as a bare subprocess: files in a temp dir, the system python, no limits."""
    with tempfile.TemporaryDirectory() as work:
        for name, content in job.get("files", {}).items():
            with open(os.path.join(work, name), "w") as fh:
                fh.write(content)
        with open(os.path.join(work, "main.py"), "w") as fh:
            fh.write(job["code"])
        stdin = job.get("stdin")
        subprocess.run(["/usr/bin/python3", "-I", "-B", "main.py"], cwd=work, input=stdin.encode() if stdin else None,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=job.get("timeout_s", 30), check=False)


def rate(fn: Callable[[], None], runs: int, workers: int = 1) -> float:
    """Executions per second of ``fn`` run ``runs`` times with ``workers`` in flight."""
    fn()  # warm-up: caches, image, first container
    start = time.perf_counter()
    if workers == 1:
        for _ in range(runs):
            fn()
    else:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(lambda _: fn(), range(runs)))
    return runs / (time.perf_counter() - start)


def pool_rate(backend: str, job: dict[str, Any], runs: int, workers: int, check: Callable[[Any], bool]) -> float:
    args = {k: v for k, v in job.items() if k != "code"}
    with Pool(backend=backend, workers=workers) as pool:
        warm = [pool.submit(job["code"], **args) for _ in range(2 * workers)]  # start every worker
        assert all(check(f.result()) for f in warm)
        start = time.perf_counter()
        results = [pool.submit(job["code"], **args) for _ in range(runs)]
        outcomes = [f.result() for f in results]
        elapsed = time.perf_counter() - start
    bad = [r for r in outcomes if not check(r)]
    if bad:
        raise SystemExit(f"{backend} pool: {len(bad)} of {runs} jobs failed, e.g. {bad[0]}")
    return runs / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=40, help="executions per measurement")
    ap.add_argument("--workers", type=int, default=2, help="jobs in flight for the pool rows")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)

    backends = {name: why for name, why in distil_sandbox.available_backends().items()}
    for name, why in backends.items():
        if why:
            print(f"# {name}: unavailable ({why})", file=sys.stderr)
    usable = [n for n, why in backends.items() if not why]
    workloads = {
        "trivial": ({"code": TRIVIAL, "timeout_s": 10}, lambda r: r.ok and r.stdout.strip() == "ok"),
        "20 tests": (twenty_test_job(), lambda r: r.ok and r.stdout.count("DISTIL-RESULT") >= 20),
    }
    rows: dict[str, dict[str, float]] = {}

    def record(row: str, workload: str, value: float) -> None:
        rows.setdefault(row, {})[workload] = value
        print(f"  {row:<22} {workload:<9} {value:8.1f} exec/s", file=sys.stderr, flush=True)

    for workload, (job, check) in workloads.items():
        record("plain", workload, rate(lambda: plain_run(job), args.runs))
        record(f"plain ×{args.workers}", workload, rate(lambda: plain_run(job), args.runs, args.workers))
        for name in usable:
            def one(name=name, job=job, check=check) -> None:
                result = distil_sandbox.run(backend=name, **job)
                if not check(result):
                    raise SystemExit(f"{name}: {workload} run failed: {result}")
            record(name, workload, rate(one, args.runs))
            record(f"{name} pool ×{args.workers}", workload, pool_rate(name, job, args.runs, args.workers, check))

    print(render(rows, args.workers))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "runs": args.runs, "workers": args.workers}, fh, indent=2)
    return 0


def render(rows: dict[str, dict[str, float]], workers: int) -> str:
    workloads = ["trivial", "20 tests"]
    lines = ["| mode | " + " | ".join(f"{w} exec/s | vs plain" for w in workloads) + " |",
             "|---|" + "---:|---:|" * len(workloads)]
    for row, values in rows.items():
        base = rows[f"plain ×{workers}"] if ("pool" in row or row.startswith("plain ×")) else rows["plain"]
        cells = []
        for w in workloads:
            cells.append(f"{values[w]:.1f}")
            cells.append(f"{base[w] / values[w]:.2f}×")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    out = ["\n".join(lines), ""]
    if "bwrap" in rows:
        r = rows["plain"]["trivial"] / rows["bwrap"]["trivial"]
        out.append(f"bwrap/plain, trivial program: {r:.2f}× time per execution (target ≤ 1.5×)")
        r = rows["plain"]["20 tests"] / rows["bwrap"]["20 tests"]
        out.append(f"bwrap/plain, 20-test problem: {r:.2f}× time per execution")
    key = f"docker pool ×{workers}"
    if key in rows:
        for w in workloads:
            r = rows[f"plain ×{workers}"][w] / rows[key][w]
            out.append(f"docker-warm-pool/plain (×{workers} in flight), {w}: {r:.2f}× time per execution")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
