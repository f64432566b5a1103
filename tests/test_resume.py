"""A run killed mid-way and resumed ends exactly where an uninterrupted run ends."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from distil_core.cli.main import main
from distil_core.errors import DistilError
from distil_core.testing import FAST_RUN, wait_until
from distil_core.training.rundir import prepare_run_dir
from distil_core.training.runlock import LOCK_NAME, RunLock, check_free

GATE_PLUGIN = '''
"""answer_check that, when GATE_FILE is set, stops dead after GATE_AFTER calls (to be killed there)."""
import os, time
from distil_core.builtin import AnswerCheckFeedback
from distil_core.hookspecs import hookimpl

class GatedAnswerCheck(AnswerCheckFeedback):
    calls = 0
    pretrains_base = False  # the default tiny base (the session's): no gate while a base is pretrained

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


# -- one writer per run directory ----------------------------------------------------------------

HOLDER = '''
import sys, time
from distil_core.training.rundir import prepare_run_dir
created, lock = prepare_run_dir(sys.argv[1])
print("locked", flush=True)
while True:
    time.sleep(1)
'''


def _refusal(capsys, args, pid):
    """``distil train ARGS`` in this process: refused in one line naming the holder ``pid``."""
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is in use: process" in err and f"process {pid} on host" in err, err
    assert f"kill {pid}" in err and LOCK_NAME in err
    return err


def test_a_directory_another_process_holds_is_refused_and_free_once_it_is_killed(tmp_path, capsys):
    """Before: nothing stopped a second trainer; a kill -9 of the holder must leave no stale lock."""
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        sets = [a for item in FAST_RUN for a in ("--set", item)]
        for flags in ([], ["--overwrite"], ["--resume"]):
            _refusal(capsys, ["train", "--quiet", *sets, "--output-dir", str(run), *flags], holder.pid)
        assert sorted(os.listdir(run)) == [LOCK_NAME]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    created, lock = prepare_run_dir(str(run))  # the lock went with the process
    assert not created and lock.held
    lock.release()


def test_under_torchrun_only_rank_0_looks_at_the_lock_before_a_resume(tmp_path, monkeypatch):
    """Before: every rank of a resumed torchrun checked the lock by taking it for a moment, so rank
    1's check could refuse its own rank 0, or be refused by it once rank 0 held the run."""
    run = tmp_path / "run"
    _created, held = prepare_run_dir(str(run))  # rank 0 of the resumed run, which has taken the lock
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        check_free(str(run))  # rank 1 leaves the lock to rank 0
        for world_size, rank in (("2", "0"), ("1", "1")):  # rank 0; a process alone, a shell's RANK left behind
            monkeypatch.setenv("WORLD_SIZE", world_size)
            monkeypatch.setenv("RANK", rank)
            with pytest.raises(DistilError, match="is in use: this process"):
                check_free(str(run))
    finally:
        held.release()


def test_a_holder_that_has_not_written_its_name_is_not_given_the_last_holders(tmp_path):
    """Before: the refusal named the process that held the lock last, long ended, and said to kill it."""
    run = tmp_path / "run"
    run.mkdir()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    last = int(ended.stdout)
    (run / LOCK_NAME).write_text(json.dumps({"pid": last, "host": socket.gethostname(), "since": "2026-01-01"}))
    held = RunLock.acquire(str(run), create=False)  # taken, its holder not yet recorded
    try:
        with pytest.raises(DistilError) as refused:
            RunLock.acquire(str(run), create=False)
        said = str(refused.value)
        assert f"the one the lock file names, {last}, has ended" in said and "kill" not in said, said
    finally:
        held.release()


@pytest.mark.parametrize("holder", [{"pid": "1; rm -rf ~", "host": "vm"},
                                    {"pid": 2**31, "host": socket.gethostname()},
                                    {"pid": 7, "host": "a\nkill 1"}, {"pid": 7, "host": "h", "since": "x" * 41}, [7]])
def test_a_lock_file_anyone_wrote_is_named_only_as_far_as_it_holds_a_process(tmp_path, holder):
    """Before: a pid too large for the kernel crashed the refusal, and text from the file went whole
    into its ``kill`` advice."""
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps(holder))
    held = RunLock.acquire(str(run), create=False)
    try:
        with pytest.raises(DistilError) as refused:
            RunLock.acquire(str(run), create=False)
        said = str(refused.value)
        assert "\n" not in said and "rm -rf" not in said and "kill 1" not in said and "x" * 41 not in said, said
        assert "is in use" in said
    finally:
        held.release()


@pytest.mark.slow
def test_a_resume_while_the_run_still_trains_is_refused_on_any_number_of_processes(tmp_path, capsys):
    """Before: a --resume of a live run was accepted, and both trainers wrote the same logs and
    checkpoints (1,302 metrics rows for 890 steps). The run holds its directory until it ends;
    once it is killed (-9) the same --resume continues it, each step logged once."""
    (tmp_path / "plugins").mkdir()
    _install_gate(tmp_path / "plugins")
    sets = [a for item in FAST_RUN + ["train.steps=2", "train.save_every=1", "feedback=[gated_answer_check]"]
            for a in ("--set", item)]
    run, gate = tmp_path / "run", tmp_path / "gate"
    # 16 rollouts per step: the 17th feedback call is in step 2, after the step-1 checkpoint
    live = _train(sets + ["--output-dir", str(run)], _env(tmp_path, GATE_FILE=str(gate), GATE_AFTER="16"))
    try:
        wait_until(lambda: gate.exists() or live.poll() is not None, timeout_s=600, what="the run reaching step 2")
        assert live.poll() is None, live.communicate()[1]
        before = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "checkpoints/latest", LOCK_NAME)}
        _refusal(capsys, ["train", "--quiet", "--output-dir", str(run), "--resume"], live.pid)
        _refusal(capsys, ["train", "--quiet", *sets, "--output-dir", str(run), "--overwrite"], live.pid)
        ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                                "-m", "distil_core", "train", "--quiet", "--output-dir", str(run), "--resume"],
                               env=_env(tmp_path, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
        assert ranks.returncode != 0 and f"is in use: process {live.pid} on host" in ranks.stderr, ranks.stderr[-3000:]
        assert {name: (run / name).read_bytes() for name in before} == before
    finally:
        live.send_signal(signal.SIGKILL)
        live.communicate()
    resumed = _train(["--output-dir", str(run), "--resume"], _env(tmp_path))
    _out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
