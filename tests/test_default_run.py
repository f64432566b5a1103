"""`distil train` with no config, as a new user runs it: builds the tiny base, trains, improves."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_embedded_default_trains_and_gains_ten_points_of_pass_at_1(tmp_path):
    env = dict(os.environ, DISTIL_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "distil_core.cli", "train", "--quiet", "--output-dir", str(run)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "distil" and summary["task"] == "digits"
    before, after = summary["before"]["pass@1"], summary["after"]["pass@1"]
    assert after - before >= 0.10, summary
    assert summary["after"]["pass@8"] >= summary["before"]["pass@8"]
    assert "pass@1" in proc.stdout and "before" in proc.stdout and "after" in proc.stdout
    # The expert's contexts were built from feedback, and the run says so.
    provenance = [json.loads(line) for line in (run / "provenance.jsonl").read_text().splitlines()]
    assert any(f["kind"] == "answer_check" for r in provenance for f in r["feedback"])
