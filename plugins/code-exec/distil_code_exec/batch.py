"""A step's grading in a few sandbox jobs: ``CodeExecVerifier.verify_batch``.

Starting a sandbox and the trusted harness costs more than grading a short solution, so a
step's rollouts are graded several to a job: the rollouts left after the cache (and after
folding identical ones together) are split into at most ``workers`` jobs of at most
``batch_size`` rollouts, all submitted to the pool at once. Inside a job the harness grades its
runs one after another, each exactly as a job of its own would (its own nonce, new child
processes, the same per-test time limits; see ``grade_batch`` in ``harness.py``), and stops at
the first run that leaves something behind: a process, a file, an IPC object, a kernel key, or
a change to the harness's own limits, priority or CPUs. The children of function-call and
assert runs are forked from one clean interpreter per job (``Zygote`` in ``harness.py``, the
``--serve`` mode of ``child.py``) instead of each starting Python anew. With ``sessions``
(the default where the backend allows it) the jobs' harnesses stay up across steps and each
step's chunks are sent to them (``sessions.py``). Every run without a signed end record
in its job's output — the runs after such a stop, or all of a job that failed — is graded again
in a job of its own, and so is every run that took longer in its batch than its own job's time
limit allows (see ``within_own_limit``), so a verdict never depends on which rollouts shared a
sandbox.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
from typing import TYPE_CHECKING, Any, Optional, Sequence

from distil_core import Problem, Rollout, Verdict

if TYPE_CHECKING:
    from .verifier import CodeExecVerifier


def verify_batch(verifier: "CodeExecVerifier", problems: Sequence[Problem], rollouts: Sequence[Rollout]) -> list[Verdict]:
    """Verdicts for ``rollouts[i]`` against ``problems[i]``, in order (see the module docstring)."""
    from .verdicts import read_signed

    if len(problems) != len(rollouts):
        raise ValueError(f"code_exec: verify_batch got {len(problems)} problems for {len(rollouts)} rollouts")
    runs = [verifier.prepare(p, r) for p, r in zip(problems, rollouts)]
    verdicts: list[Any] = [verifier.cached(run.cache_key) for run in runs]
    verdicts = [verifier.refuse(run) if v is None and run.refused else v for run, v in zip(runs, verdicts)]
    first: dict[str, int] = {}  # cache key -> the row that grades it
    for i, run in enumerate(runs):
        if verdicts[i] is None:
            first.setdefault(run.cache_key, i)
    todo = sorted(first.values())
    chunks = split(todo, verifier.workers, verifier.batch_size)
    jobs = [(chunk, key, verifier.submit_batch(job, key, batch)) for chunk, (job, key, batch) in
            ((chunk, batch_job(verifier, [runs[i] for i in chunk])) for chunk in chunks)]
    alone: list[int] = []
    forked = 0
    for chunk, key, future in jobs:
        result = future.result()
        lines = result.stdout.splitlines()
        for i in chunk:
            run = runs[i]
            mine = "\n".join(line for line in lines if f'"nonce":"{run.nonce}"' in line)
            signed = read_signed(mine, key, run.nonce, len(run.tests.cases))
            if not signed.done or not within_own_limit(run, signed.seconds):
                alone.append(i)
                continue
            forked += signed.forked
            own = dataclasses.replace(result, stdout=mine, wall_s=signed.seconds or 0.0, timed_out=False, error=None)
            verdicts[i] = verifier.finish(dataclasses.replace(run, key=key), own)
    with verifier.counting() as counts:
        counts["batched_runs"] += len(todo) - len(alone)
        counts["batch_fallbacks"] += len(alone)
        counts["forked_children"] += forked
    solo = {i: verifier.submit_job(runs[i].job) for i in alone}
    for i, future in solo.items():
        verdicts[i] = verifier.finish(runs[i], future.result())
    for i, run in enumerate(runs):
        if verdicts[i] is None:
            verdicts[i] = verdicts[first[run.cache_key]].model_copy(deep=True)
    return verdicts


def within_own_limit(run: Any, seconds: Optional[float]) -> bool:
    """Whether a run whose grading took ``seconds`` in a batch could not have been cut short in a
    sandbox job of its own.

    Inside a batch nothing stops a run at its own job's time limit (``run.job["timeout_s"]``, the
    whole run's budget); only its tests are timed. A run can outlast that budget with every test
    within its limit: each test after one that timed out or crashed loads the code again, with
    the load's own limit, and the default budget counts one load. Alone, such a run is killed at
    the limit and its later tests have no result; so a run that took longer than the limit, less
    the start-up a job of its own spends first (``START_UP_S``, or half a smaller limit), is
    graded again alone, which gives exactly that verdict.
    """
    from .verifier import START_UP_S

    limit = run.job["timeout_s"]
    return seconds is not None and seconds <= limit - min(START_UP_S, limit / 2)


def split(rows: list[int], workers: int, batch_size: int) -> list[list[int]]:
    """``rows`` in at most ``workers`` runs of consecutive rows (more when a job would hold more
    than ``batch_size``), as even as possible."""
    if not rows:
        return []
    jobs = max(min(workers, len(rows)), math.ceil(len(rows) / max(1, batch_size)))
    size = math.ceil(len(rows) / jobs)
    return [rows[k:k + size] for k in range(0, len(rows), size)]


def batch_job(verifier: "CodeExecVerifier", runs: list[Any]) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """One sandbox job grading ``runs`` in turn, the key its results are signed with, and the
    batch its stdin carries (what a grading session is sent instead).

    The solutions travel on stdin (read to the end before any of them runs) and the harness
    writes each one's file just before its turn, so no run can rewrite a later run's code. The
    job's time limit (a backstop: the harness times every test) is the runs' limits summed and
    rounded up to a power of two seconds, so that jobs of one step and the next have the same
    limits and take the sandboxes that bwrap keeps started ahead for jobs of those limits.
    """
    key = secrets.token_bytes(32)
    batch = {
        "runs": [dict(run.spec, source=run.code) for run in runs],
        "child_source": verifier.child_source,
    }
    job = {
        "code": verifier.harness_source,
        "stdin": key.hex() + "\n" + json.dumps(batch),
        "files": {},
        "timeout_s": 2.0 ** math.ceil(math.log2(max(1.0, sum(run.job["timeout_s"] for run in runs)))),
        "memory_mb": verifier.memory_mb,
        "output_limit": sum(run.job["output_limit"] for run in runs),
    }
    return job, key, batch
