"""A run killed mid-way and resumed ends exactly where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from distil_core.testing import FAST_RUN

GATE_PLUGIN = '''
"""answer_check that, when GATE_FILE is set, stops dead after GATE_AFTER calls (to be killed there)."""
import os, time
from distil_core.builtin import AnswerCheckFeedback
from distil_core.hookspecs import hookimpl

class GatedAnswerCheck(AnswerCheckFeedback):
    calls = 0

    def feedback(self, problem, rollout, verdict, group=()):
        GatedAnswerCheck.calls += 1
        gate = os.environ.get("GATE_FILE")
        if gate and GatedAnswerCheck.calls > int(os.environ["GATE_AFTER"]):
            open(gate, "w").close()
            while True:
                time.sleep(1)
        return super().feedback(problem, rollout, verdict, group)

@hookimpl
def register_feedback_sources(register):
    register("gated_answer_check", GatedAnswerCheck)
'''

VOLATILE = ("time_", "tokens_per_s")


def _install_gate(root):
    (root / "gate_plugin.py").write_text(GATE_PLUGIN)
    info = root / "gate_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gate-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[distil]\ngate = gate_plugin\n")


def _env(tmp_path, **extra):
    env = dict(os.environ)
    env.pop("DISTIL_NO_ENTRYPOINTS", None)
    env.update(PYTHONPATH=str(tmp_path / "plugins"), DISTIL_PLUGINS="gate", HF_HUB_OFFLINE="1", **extra)
    return env


def _train(args, env, **kw):
    cmd = [sys.executable, "-m", "distil_core.cli", "train", "--quiet", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _stable_rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_final_metrics(tmp_path):
    (tmp_path / "plugins").mkdir()
    _install_gate(tmp_path / "plugins")
    sets = []
    for item in FAST_RUN + ["train.steps=8", "train.save_every=2", "feedback=[gated_answer_check]"]:
        sets += ["--set", item]
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    proc = _train(sets + ["--output-dir", str(whole)], _env(tmp_path))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err

    gate = tmp_path / "gate"
    # 16 rollouts per step: the 81st feedback call is in step 6, after the step-4 checkpoint.
    proc = _train(sets + ["--output-dir", str(killed)], _env(tmp_path, GATE_FILE=str(gate), GATE_AFTER="80"))
    deadline = time.time() + 600
    while not gate.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "the gated run never reached step 6"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    assert (killed / "checkpoints" / "latest").read_text() == "step-000004.pt"
    assert max(json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()) == 5

    proc = _train(["--output-dir", str(killed), "--resume"], _env(tmp_path))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "Resumed" in out + err

    a = json.loads((whole / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert a["after"] == b["after"] and a["before"] == b["before"] and b["steps"] == 8
    assert _stable_rows(whole) == _stable_rows(killed)
    wa, wb = load_file(str(whole / "final" / "model.safetensors")), load_file(str(killed / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
