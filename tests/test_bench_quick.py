"""`distil bench --quick` on the embedded spec, as a user runs it: the smoke test of the real
suites (distil-tasks and distil-code-exec installed, their entry points loaded)."""

import json
import os
import subprocess
import sys

import pytest

from distil_core.cli.bench import load_spec

SPEC, _ = load_spec()
SUITES = tuple(SPEC.suites)
METHODS = tuple(SPEC.methods)


@pytest.mark.slow
def test_quick_bench_runs_every_method_on_every_suite(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISTIL_NO_ENTRYPOINTS", "DISTIL_PLUGINS")}
    env.update(HF_HUB_OFFLINE="1")  # DISTIL_CACHE: the session's shared tiny-base cache
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "distil_core.cli", "bench", "--quick", "--output-dir", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    total = len(SUITES) * len(METHODS)
    assert f"[{total}/{total}]" in proc.stderr

    runs = json.loads((out / "bench.json").read_text())["runs"]
    assert sorted((r["suite"], r["method"]) for r in runs) == sorted((s, m) for s in SUITES for m in METHODS)
    for r in runs:
        summary = json.loads((out / r["suite"] / r["method"] / "seed0" / "summary.json").read_text())
        assert summary["steps"] == 3
        # each suite runs its own task: the plugin's suite of that name, or the spec's task
        assert summary["task"] == SPEC.suites[r["suite"]].set["task"]["name"]
        assert all(0.0 <= v <= 1.0 for v in {**summary["before"], **summary["after"]}.values())
    # Every method of a suite starts from the same model, evaluated with the same seed.
    for suite in SUITES:
        befores = [r["before"] for r in runs if r["suite"] == suite]
        assert all(b == befores[0] for b in befores)

    md = (out / "bench.md").read_text()
    for suite in SUITES:
        assert f"## {suite}" in md and f"![pass@1 vs rollouts on {suite}](bench-{suite}.png)" in md
        assert (out / f"bench-{suite}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for method in METHODS:
        assert md.count(f"| **{method}** |") == len(SUITES)
    # one seed: the leader of each suite is named, and no noise is judged without a second seed
    assert md.count("Best pass@1: **") == len(SUITES) and "within noise of it: not judged (one seed)" in md
