"""A hostile endpoint: an OpenAI-compatible server on 127.0.0.1 whose log-probs are not log-probs
(+5.0 everywhere, NaN, or each log 0.9 so that a position's top-k sum to more than 1) or whose
token ids lie outside the student's vocabulary. Training with
the ``api`` expert on it must never move the weights on such an answer: each one is a failed
signal, counted and explained in metrics.jsonl, and a run made of them stops in one line that
names the expert."""

import json
import math

import pytest
import torch

import distil_api_expert
from distil_core import PluginHost
from distil_core.cli import load_for_serving
from distil_core.config import load_config
from distil_core.errors import PluginError
from distil_core.testing import FAST_RUN, use_cache
from distil_core.training.trainer import Trainer

from api_expert_testlib import RewritingServer

HOSTILE = ("positive", "nan", "out_of_vocab", "mass_over_one", "own_beside_top")


class HostileServer(RewritingServer):
    """The tiny model served for real, its answers' log-probs rewritten by ``mode`` (None: honest)."""

    mode = None
    vocab = 0  # the served tokenizer's size

    @property
    def rewrite(self):
        return None if self.mode is None else self.poison

    def poison(self, logprobs):
        if "top_logprobs" not in logprobs:
            return
        tops, own = logprobs["top_logprobs"], logprobs["token_logprobs"]
        for j, top in enumerate(tops):
            if not top:
                continue
            if self.mode == "out_of_vocab":  # ids past the vocabulary, spelled as vLLM spells ids (the
                # prompt's own token kept, so the answer still holds at most all of the probability)
                tops[j] = {(t if t == logprobs["tokens"][j] else f"token_id:{self.vocab + 1000 + i}"): lp
                           for i, (t, lp) in enumerate(top.items())}
                continue
            if self.mode == "own_beside_top":  # one other token at 0.99 and the prompt's own at 0.99
                other = next(t for t in top if t != logprobs["tokens"][j])
                tops[j], own[j] = {other: math.log(0.99)}, math.log(0.99)
                continue
            value = {"positive": 5.0, "nan": math.nan, "mass_over_one": math.log(0.9)}[self.mode]
            tops[j] = {token: value for token in top}
            own[j] = value


@pytest.fixture(scope="module")
def hostile(tiny_base_cache_dir):
    with use_cache(tiny_base_cache_dir):  # the session's tiny base, built once
        model, tokenizer, name = load_for_serving("tiny", FAST_RUN[:2], progress=False)
        with HostileServer(model, tokenizer, model_name=name) as server:
            server.vocab = len(tokenizer)
            yield server


def trainer_for(server, run_dir, *overrides):
    expert = (f"expert={{name: api, options: {{api_base: '{server.base_url}/v1', model: tiny, "
              "access: auto, k: 5, backoff_s: 0.01}}")
    config = load_config(None, FAST_RUN + [expert, "loss.no_signal=keep", "train.steps=2", "train.save_every=0",
                                           *overrides])
    host = PluginHost(load_entrypoints=False)
    host.register_plugin(distil_api_expert, "api_expert")
    server.mode = None  # probed honestly (prompt scoring, token ids: the same tokenizer), hostile once training starts
    trainer = Trainer(config, run_dir=str(run_dir), host=host, echo=lambda *_: None)
    return trainer


REASONS = {  # the plugin refuses what it can see in one number; the trainer's check the rest
    "positive": "the answer's log-probs are malformed: top_logprobs at prompt token 1: the log-prob 5.0 is not a number ≤ 0",
    "nan": "the answer's log-probs are malformed: top_logprobs at prompt token 1: the log-prob nan is not a number ≤ 0",
    "out_of_vocab": "unusable 'topk' signal for ",
    # five alternatives at 0.9 each, and the prompt's own token at 0.9 beside them when not among them
    "mass_over_one": "the answer's log-probs are malformed: top_logprobs at prompt token 1: the top log-probs add up "
                     "to a probability of ",
    "own_beside_top": "the answer's log-probs are malformed: top_logprobs at prompt token 1: the top log-probs add "
                      "up to a probability of 1.98, more than 1",
}
DETAIL = {"out_of_vocab": "outside the vocabulary [0, "}


@pytest.mark.slow
@pytest.mark.parametrize("mode", HOSTILE)
def test_a_hostile_endpoint_never_reaches_the_weights(hostile, tmp_path, mode):
    """Log-probs that are not log-probs stop the run at its first step, in one line naming the
    expert and why. Ids outside the vocabulary are either dropped by the plugin's alignment (no
    student token carries them: the run trains on the rest) or refused in the same way."""
    trainer = trainer_for(hostile, tmp_path)
    hostile.mode = mode
    try:
        trainer.fit()
        message = None
    except PluginError as err:
        message = str(err)
    finally:
        hostile.mode = None
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["skipped_nonfinite"] == 0 and math.isfinite(r["loss"]) for r in rows)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    if message is None:  # the plugin made the answers usable: every one was used
        assert mode == "out_of_vocab" and [r["signal_rollouts"] for r in rows] == [16, 16]
        return
    assert "\n" not in message and len(message) < 1200
    assert message.startswith("expert 'api': 16 of 16 answers failed over step 1, more than "
                              "train.max_expert_failed_fraction = 0.5; first reasons: ")
    assert REASONS[mode] in message and DETAIL.get(mode, "") in message
    [row] = rows
    assert row["expert_failed"] == 16 and row["signal_rollouts"] == 0
    assert row["expert_fail_reasons"][0] in message


@pytest.mark.slow
def test_with_the_threshold_at_1_the_run_finishes_every_hostile_answer_counted_failed(hostile, tmp_path):
    trainer = trainer_for(hostile, tmp_path, "train.max_expert_failed_fraction=1", "loss.reward_weight=0")
    start = [p.detach().clone() for p in trainer.model.parameters()]
    hostile.mode = "nan"
    try:
        summary = trainer.fit()
    finally:
        hostile.mode = None
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 2 and [r["expert_failed"] for r in rows] == [16, 16]
    assert all(r["signal_rollouts"] == 0 for r in rows)
    # nothing the endpoint said reached the loss: with no success term the weights did not move
    assert all(torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))
