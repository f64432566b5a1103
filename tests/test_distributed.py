"""Data-parallel training under torchrun (gloo, 2 CPU processes) against one process.

The same global batch and seed give the same parameters after a few steps: rollouts are keyed
per problem (not drawn from a shared random stream), each rank's loss is weighted by its share
of the global batch, and the gradients are summed over ranks. What differs is floating-point
summation order, so parameters agree to TOLERANCE (measured: about 2e-7 on weights of size ~1).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import FAST_RUN

TOLERANCE = 1e-5
VOLATILE = ("time_", "tokens_per_s", "world_size", "grad_norm")


def _sets(*extra):
    out = []
    for item in FAST_RUN + list(extra):
        out += ["--set", item]
    return out


def _run(tmp_path, out_dir, args, procs=1):
    env = dict(os.environ, DISTIL_CACHE=str(tmp_path.parent / "distil-cache"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    if procs == 1:
        cmd = [sys.executable, "-m", "distil_core", "train", "--quiet", "--output-dir", str(out_dir), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
               "-m", "distil_core", "train", "--quiet", "--output-dir", str(out_dir), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _weights(run):
    return load_file(str(run / "final" / "model.safetensors"))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _rows(run, name="metrics.jsonl"):
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def _stable(rows):
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if not k.startswith(VOLATILE)}
            for r in rows]


@pytest.mark.parametrize("method,extra", [
    ("distil", []),
    ("grpo", ["optim.grad_accum=2", "loss.advantage_scale=batch"]),
])
def test_two_gloo_processes_take_the_steps_of_one(tmp_path, method, extra):
    args = _sets(f"method={method}", "train.steps=3", "train.save_every=0", *extra)
    one, two = tmp_path / "one", tmp_path / "two"
    _run(tmp_path, one, args)
    done = _run(tmp_path, two, args, procs=2)
    assert "ranks=2" in done.stderr
    assert _max_diff(_weights(one), _weights(two)) < TOLERANCE
    # the same rollouts, logged once, in the same order
    hashes = lambda run: [(r["problem_id"], r["group_index"], r["response_hash"]) for r in _rows(run, "rollouts.jsonl")]
    assert hashes(one) == hashes(two) and len(hashes(two)) == 3 * 4 * 4
    rows_one, rows_two = _rows(one), _rows(two)
    assert [r["step"] for r in rows_two] == [1, 2, 3] and all(r["world_size"] == 2 for r in rows_two)
    assert _stable(rows_one) == _stable(rows_two)
    for a, b in zip(rows_one, rows_two):
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    # evaluation split across the ranks adds up to the one-process evaluation
    assert _rows(one, "eval.jsonl") == _rows(two, "eval.jsonl")
    assert len(list((two / "checkpoints").glob("step-*.pt"))) == 1  # written once, by rank 0


def test_resume_on_another_number_of_processes(tmp_path):
    """2 steps on 2 processes, resumed for 2 more on 1 process, end where 4 steps on 1 end;
    and the other way round."""
    base = _sets("train.steps=2", "train.save_every=2")
    whole = tmp_path / "whole"
    _run(tmp_path, whole, _sets("train.steps=4", "train.save_every=2"))
    for first, then in ((2, 1), (1, 2)):
        run = tmp_path / f"from{first}to{then}"
        _run(tmp_path, run, base, procs=first)
        _run(tmp_path, run, ["--resume", "--set", "train.steps=4"], procs=then)
        assert _max_diff(_weights(whole), _weights(run)) < TOLERANCE
        assert [r["step"] for r in _rows(run)] == [1, 2, 3, 4]
        assert _stable(_rows(whole)) == _stable(_rows(run))
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 4
        assert summary["after"] == json.loads((whole / "summary.json").read_text())["after"]
        shutil.rmtree(run)


def test_more_ranks_than_problems_is_refused(tmp_path):
    env = dict(os.environ, DISTIL_CACHE=str(tmp_path.parent / "distil-cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "distil_core",
           "train", "--quiet", "--output-dir", str(tmp_path / "run"), *_sets("rollout.problems_per_step=1")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "rollout.problems_per_step (1) is smaller than the number of processes (2)" in done.stderr


def test_two_processes_sampling_from_one_server_sync_it_once_per_step(tmp_path):
    """Rollouts from the loopback server under torchrun: rank 0 alone writes and reloads the
    weights (the server sees one reload per sync, as with one process), every rank samples its
    shard, and the run ends on the 1-process run's parameters."""
    from distil_core.config import load_config
    from distil_core.plugins import get_host
    from distil_core.runtime import ensure_tiny_base
    from distil_core.serve import LocalOpenAIServer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers import distil_cache

    with distil_cache(str(tmp_path.parent / "distil-cache")):
        config = load_config(None, FAST_RUN)
        base = ensure_tiny_base(config, get_host().build("task", config.task.name, config.task.options), progress=False)
    model, tok = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
    runs = {}
    with LocalOpenAIServer(model, tok, model_name="tiny") as server:
        for procs in (1, 2):
            server.reset_stats()
            run = tmp_path / f"procs{procs}"
            args = _sets("train.steps=2", "train.save_every=0", "rollout.backend=server",
                         f"rollout.server.base_url={server.base_url}", "rollout.server.model=tiny",
                         "rollout.server.sync=weights", f"rollout.server.sync_dir={tmp_path / f'sync{procs}'}")
            _run(tmp_path, run, args, procs=procs)
            runs[procs] = (run, dict(server.stats["paths"]))
    (one, seen_one), (two, seen_two) = runs[1], runs[2]
    assert seen_two["/collective_rpc"] == seen_one["/collective_rpc"] == 3  # the start, then after steps 1 and 2
    assert seen_two["/v1/completions"] == seen_one["/v1/completions"]  # one request per problem, whichever rank
    rows = _rows(two)
    assert [r["staleness"] for r in rows] == [0, 0] and [r["policy_version"] for r in rows] == [0, 1]
    assert all(r["sync_bytes"] > 0 for r in rows)
    assert _max_diff(_weights(one), _weights(two)) < TOLERANCE
