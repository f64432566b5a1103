"""``rollout.overlap_grading``: step k graded on a helper thread while step k+1 samples, by the
policy before step k's update, and the off-policy update corrected with that policy's log-probs."""

import json
import threading

import pytest
import torch

from distil_core.config import load_config
from distil_core.errors import ConfigError
from distil_core.plugin_host import PluginHost
from distil_core.protocols import resolve
from distil_core.testing import FAST_RUN
from distil_core.training.epochs import record_logprobs
from distil_core.training.overlap import sampling_logprobs
from distil_core.training.trainer import Trainer

OVERLAP = "rollout.overlap_grading=true"


def _trainer(run_dir, *overrides):
    config = load_config(None, FAST_RUN + list(overrides))
    return Trainer(config, run_dir=str(run_dir), host=PluginHost(load_entrypoints=False), echo=lambda *_: None)


def _rows(run_dir):
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_the_next_step_is_sampled_by_the_policy_before_the_update(tmp_path):
    t = _trainer(tmp_path / "run", OVERLAP, "method=grpo", "optim.lr=0.01")
    before = t.sampled_batch(2)  # what the starting policy samples for step 2 (keyed: the same draws)
    scored_before = sampling_logprobs(t.learner, before)
    t.train_step(1)
    ahead = t.overlap.ahead[2]
    assert [r.response_ids for r in ahead.rollouts] == [r.response_ids for r in before.rollouts]
    # its recorded log-probs are the sampling policy's: the starting one's, not the updated one's
    for recorded, earlier, rollout in zip(ahead.behaviour, scored_before, ahead.rollouts):
        assert torch.allclose(recorded, earlier)
        assert torch.allclose(recorded, torch.tensor(rollout.sampling_logprobs), atol=1e-4)  # temperature 1
    now = sampling_logprobs(t.learner, ahead)
    assert max(float((a - b).abs().max()) for a, b in zip(now, ahead.behaviour) if len(a)) > 1e-3
    t.train_step(2)
    assert 2 not in t.overlap.ahead and 3 in t.overlap.ahead  # taken by step 2, which sampled step 3


def test_grading_runs_on_a_helper_thread_while_the_next_step_samples(tmp_path):
    """The verifier of step 1 waits until the generator has begun step 2's batch: it returns only
    if the two really run at once (run one after the other, the wait would time out)."""
    t = _trainer(tmp_path / "run", OVERLAP, "method=grpo")
    generator, verifier = t.rt.generator, t.rt.verifier
    ahead_began, seen = threading.Event(), {}

    class Generator:
        calls = 0

        def sample(self, *args, **kwargs):
            Generator.calls += 1
            if Generator.calls == 2:  # the first call samples step 1 itself, the second step 2, ahead
                ahead_began.set()
            return generator.sample(*args, **kwargs)

    class Verifier:
        def verify_batch(self, problems, rollouts):
            seen["overlapped"] = ahead_began.wait(timeout=120)
            seen["thread"] = threading.current_thread().name
            return [resolve(verifier.verify(p, r)) for p, r in zip(problems, rollouts)]

    t.rt.generator, t.rt.verifier = Generator(), Verifier()
    t.train_step(1)
    assert seen["overlapped"], "step 1 was not graded while step 2 was sampled"
    assert seen["thread"].startswith("distil-grading")
    assert Generator.calls == 2 and 2 in t.overlap.ahead


def test_the_off_policy_update_reads_the_sampling_policys_log_probs(tmp_path):
    """GRPO's ratio is exactly 1 on an on-policy step (its old log-probs are the current ones);
    from step 2 on, under overlap, it compares with the policy one update earlier."""
    overlap = tmp_path / "overlap"
    _trainer(overlap, OVERLAP, "method=grpo", "optim.lr=0.01", "train.save_every=0").fit()
    ratios = [r["ratio_mean"] for r in _rows(overlap)]
    assert ratios[0] == 1.0
    assert all(abs(r - 1.0) > 1e-6 for r in ratios[1:]), ratios
    plain = tmp_path / "plain"
    _trainer(plain, "method=grpo", "optim.lr=0.01", "train.save_every=0").fit()
    assert all(r["ratio_mean"] == 1.0 for r in _rows(plain))
    # the distillation losses weigh tokens by importance weights from step 2 on, and only then
    distil = tmp_path / "distil"
    _trainer(distil, OVERLAP, "method=distil", "optim.lr=0.01", "train.save_every=0").fit()
    rows = _rows(distil)
    assert "ratio_mean" not in rows[0] and all("ratio_mean" in r for r in rows[1:])


def test_recorded_sampling_log_probs_are_the_old_ones_even_on_one_pass(tmp_path):
    t = _trainer(tmp_path / "run", "method=grpo")
    batch = t.sampled_batch(1)
    prompts = [batch.prompts[j // batch.n] for j in range(len(batch.rollouts))]
    targets = [r.response_ids for r in batch.rollouts]
    micro = [list(range(len(targets)))]
    assert record_logprobs(t.learner, prompts, targets, micro, importance=True).old is None  # on-policy: none needed
    behaviour = [torch.full((len(x),), -1.0) for x in targets]
    assert record_logprobs(t.learner, prompts, targets, micro, importance=True, behaviour=behaviour).old == behaviour
    # a text expert's rows were not sampled by the policy: no importance weights for them
    assert record_logprobs(t.learner, prompts, targets, micro, importance=False, behaviour=behaviour).old is None


def test_a_resumed_overlapping_run_samples_its_first_step_again(tmp_path):
    """Nothing sampled ahead survives a checkpoint: the first resumed step is sampled by the
    restored policy (GRPO's ratio exactly 1), the one after it one update earlier again."""
    run = tmp_path / "run"
    _trainer(run, OVERLAP, "method=grpo", "optim.lr=0.01", "train.steps=2").fit()
    resumed = Trainer(load_config(None, FAST_RUN + [OVERLAP, "method=grpo", "optim.lr=0.01", "train.steps=4"]),
                      run_dir=str(run), resume=True, host=PluginHost(load_entrypoints=False), echo=lambda *_: None)
    resumed.fit()
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["ratio_mean"] == 1.0 and abs(rows[3]["ratio_mean"] - 1.0) > 1e-6


def test_server_rollouts_refuse_the_overlap():
    with pytest.raises(ConfigError, match="overlap_grading is not available with rollout.backend: server"):
        load_config(None, [OVERLAP, "rollout.backend=server",
                           "rollout.server={base_url: 'http://127.0.0.1:1', model: tiny}"])
