"""Data-parallel training under torchrun (gloo, 2 CPU processes) against one process.

The same global batch and seed give the same parameters after a few steps: rollouts are keyed
per problem (not drawn from a shared random stream), each rank's loss is weighted by its share
of the global batch, and the gradients are summed over ranks. What differs is floating-point
summation order, so parameters agree to TOLERANCE (measured: about 2e-7 on weights of size ~1).
All of it holds with the policy sharded across the ranks (``train.parallel=fsdp``, FSDP2).
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from distil_core.testing import FAST_RUN

TOLERANCE = 1e-5
VOLATILE = ("time_", "tokens_per_s", "world_size", "grad_norm")


RANK_INVARIANT = ["loss.baseline=group_loo"]
"""These tests compare one process with two, so they pin DistIL's group baseline: the batch
baseline (the default) is each rank's own micro-batch, unbiased but not the same update."""


def _sets(*extra):
    out = []
    for item in FAST_RUN + RANK_INVARIANT + list(extra):
        out += ["--set", item]
    return out


def _run(tmp_path, out_dir, args, procs=1):
    env = dict(os.environ, HF_HUB_OFFLINE="1",
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
    final = run / "final"
    return load_file(str(final / "model.safetensors" if (final / "model.safetensors").exists()
                         else final / "adapter_model.safetensors"))  # under LoRA: the adapters


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _rows(run, name="metrics.jsonl"):
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def _stable(rows):
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if not k.startswith(VOLATILE)}
            for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("method,extra,parallels", [
    ("distil", [], ["ddp", "fsdp"]),
    ("grpo", ["optim.grad_accum=2", "loss.advantage_scale=batch"], ["ddp", "fsdp"]),
    ("distil", ["model.lora={r: 4}"], ["fsdp"]),
    ("distil", ["optim.minibatches=2", "optim.epochs=2"], ["ddp"]),
], ids=["distil", "grpo-accum2", "distil-lora", "distil-minibatches2"])
def test_two_gloo_processes_take_the_steps_of_one(tmp_path, method, extra, parallels):
    args = _sets(f"method={method}", "train.steps=3", "train.save_every=0", *extra)
    one = tmp_path / "one"
    _run(tmp_path, one, args)
    for parallel in parallels:
        _check_two_processes_match(tmp_path, one, tmp_path / parallel, args + ["--set", f"train.parallel={parallel}"])


def _check_two_processes_match(tmp_path, one, two, args, problems=4):
    done = _run(tmp_path, two, args, procs=2)
    assert "ranks=2" in done.stderr
    assert _max_diff(_weights(one), _weights(two)) < TOLERANCE
    # the same rollouts, logged once, in the same order
    hashes = lambda run: [(r["problem_id"], r["group_index"], r["response_hash"]) for r in _rows(run, "rollouts.jsonl")]
    assert hashes(one) == hashes(two) and len(hashes(two)) == 3 * problems * 4
    # every expert context, and the demonstration it showed, named alike (by sample index, not a rank's row)
    shown = lambda run: [(r["step"], r["problem_id"], r["rollout"], [f.get("rollout") for f in r["feedback"]])
                         for r in _rows(run, "provenance.jsonl")] if (run / "provenance.jsonl").exists() else None
    assert shown(one) == shown(two)
    rows_one, rows_two = _rows(one), _rows(two)
    assert [r["step"] for r in rows_two] == [1, 2, 3] and all(r["world_size"] == 2 for r in rows_two)
    assert _stable(rows_one) == _stable(rows_two)
    for a, b in zip(rows_one, rows_two):
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    # evaluation split across the ranks adds up to the one-process evaluation
    assert _rows(one, "eval.jsonl") == _rows(two, "eval.jsonl")
    assert len(list((two / "checkpoints").glob("step-*.pt"))) == 1  # written once, by rank 0


@pytest.mark.slow
def test_fsdp_ranks_with_uneven_micro_batches_pad_with_idle_passes(tmp_path):
    """3 problems on 2 ranks in 2 micro-batches: rank 0 has 2, rank 1 has 1 and runs a
    zero-weighted forward/backward so that its collectives meet rank 0's."""
    args = _sets("method=grpo", "rollout.problems_per_step=3", "optim.grad_accum=2", "train.steps=3",
                 "train.save_every=0")
    one = tmp_path / "one"
    _run(tmp_path, one, args)
    _check_two_processes_match(tmp_path, one, tmp_path / "fsdp", args + ["--set", "train.parallel=fsdp"], problems=3)


@pytest.mark.slow
def test_resume_on_another_number_of_processes(tmp_path):
    """2 steps on 2 processes, resumed for 2 more on 1 process, end where 4 steps on 1 end;
    and the other way round; and the same with the 2 processes sharding the policy (fsdp), whose
    checkpoints hold the whole policy as one process writes it."""
    base = _sets("train.steps=2", "train.save_every=2")
    whole = tmp_path / "whole"
    _run(tmp_path, whole, _sets("train.steps=4", "train.save_every=2"))
    fsdp = ["--set", "train.parallel=fsdp"]
    for first, then, first_args, then_args in ((2, 1, [], []), (1, 2, [], []), (2, 1, fsdp, []), (1, 2, [], fsdp)):
        run = tmp_path / f"from{first}to{then}"
        _run(tmp_path, run, base + first_args, procs=first)
        _run(tmp_path, run, ["--resume", "--set", "train.steps=4", *then_args], procs=then)
        assert ("parallel: fsdp" in (run / "config.yaml").read_text()) == bool(first_args or then_args)
        assert _max_diff(_weights(whole), _weights(run)) < TOLERANCE
        assert [r["step"] for r in _rows(run)] == [1, 2, 3, 4]
        assert _stable(_rows(whole)) == _stable(_rows(run))
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 4
        assert summary["after"] == json.loads((whole / "summary.json").read_text())["after"]
        shutil.rmtree(run)


def test_more_ranks_than_problems_is_refused(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "distil_core",
           "train", "--quiet", "--output-dir", str(tmp_path / "run"), *_sets("rollout.problems_per_step=1")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "rollout.problems_per_step (1) is smaller than the number of processes (2)" in done.stderr


def test_fsdp_refuses_chunked_losses_with_a_clear_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "distil_core",
           "train", "--quiet", "--output-dir", str(tmp_path / "run"),
           *_sets("train.parallel=fsdp", "loss.chunk_size=4")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "loss.chunk_size is not supported with train.parallel: fsdp" in done.stderr
    assert "Set loss.chunk_size: 0, or train.parallel: ddp." in done.stderr


UNEVEN_FORWARDS = """
import datetime, sys, torch, torch.distributed as dist
from distil_core.training.fsdp import full_weights, shard_policy
from distil_core.models.tiny import build_model
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
rank = dist.get_rank()
model = build_model(50, hidden_size=16, layers=2, heads=2)
want = model(input_ids=torch.tensor([[1, 2, 3]])).logits
shard_policy(model)
with full_weights(model), torch.no_grad():
    for _ in range(5 if rank == 0 else 1):  # a collective in any forward would leave rank 0 waiting
        got = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    model.generate(torch.tensor([[1, 2]]), max_new_tokens=3 + 4 * rank, min_new_tokens=3 + 4 * rank, do_sample=False)
assert torch.allclose(got, want, atol=1e-6)
assert type(next(model.parameters())).__name__ == "DTensor"  # sharded again after the block
dist.barrier()
sys.stdout.write(f"rank {rank} done\\n")  # one write: the ranks' lines do not interleave
sys.stdout.flush()
"""


@pytest.mark.slow
def test_fsdp_forwards_on_gathered_weights_run_no_collective(tmp_path):
    """Inside ``full_weights`` the ranks may call the sharded model different numbers of times."""
    script = tmp_path / "uneven.py"
    script.write_text(UNEVEN_FORWARDS)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "rank 0 done" in done.stdout and "rank 1 done" in done.stdout


@pytest.mark.slow
def test_two_processes_sampling_from_one_server_sync_it_once_per_step(tmp_path):
    """Rollouts from the loopback server under torchrun: rank 0 alone writes and reloads the
    weights (the server sees one reload per sync, as with one process), every rank samples its
    shard, and the run ends on the 1-process run's parameters."""
    from distil_core.config import load_config
    from distil_core.plugin_host import get_host
    from distil_core.training.runtime import ensure_tiny_base
    from distil_core.serving.http import LocalOpenAIServer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = load_config(None, FAST_RUN)  # the tiny base from the session's cache
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


MEETING = """
import os, sys, time
from distil_core.training.distributed import close_world, init_world, meet_outside
world = init_world("cpu")
arrived = os.path.join(sys.argv[1], "rank1-arrived")
if world.rank == 1:
    time.sleep(0.5)  # the late rank: rank 0 must wait for it
    open(arrived, "w").close()
met = meet_outside(world, "probe")
print(f"rank {world.rank} met={met} saw_rank1={os.path.exists(arrived)}", flush=True)
close_world(world, finished=True)
"""


@pytest.mark.slow
def test_the_ranks_meet_outside_the_process_group_before_it_is_torn_down(tmp_path):
    script = tmp_path / "meet.py"
    script.write_text(MEETING)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), str(tmp_path)], env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    said = sorted(re.findall(r"rank \d met=(?:True|False) saw_rank1=(?:True|False)", done.stdout))  # the ranks share one stdout
    assert said == ["rank 0 met=True saw_rank1=True", "rank 1 met=True saw_rank1=True"]
