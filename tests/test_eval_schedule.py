"""Evaluations during training (``train.eval_every``) draw their own random numbers: the run they
interrupt trains exactly as it would without them."""

import json

import pytest
import torch

from distil_core.config import load_config
from distil_core.plugin_host import PluginHost
from distil_core.testing import FAST_RUN
from distil_core.training.trainer import Trainer


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _untimed(row):
    return {k: v for k, v in row.items() if not k.startswith("time_") and k != "tokens_per_s"}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["distil", "grpo"])
def test_intermediate_evaluations_leave_the_training_bit_identical(tmp_path, method):
    weights, metrics, rollouts, evals, summaries = [], [], [], [], []
    for every in (0, 1):
        run = tmp_path / f"every{every}"
        config = load_config(None, FAST_RUN + [f"method={method}", f"train.eval_every={every}", "train.steps=3"])
        trainer = Trainer(config, run_dir=str(run), host=PluginHost(load_entrypoints=False), echo=lambda *_: None)
        summaries.append(trainer.fit())
        weights.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        metrics.append([_untimed(r) for r in _lines(run / "metrics.jsonl")])
        rollouts.append(_lines(run / "rollouts.jsonl"))
        evals.append(_lines(run / "eval.jsonl"))
    assert [e["step"] for e in evals[0]] == [0, 3]
    assert [e["step"] for e in evals[1]] == [0, 1, 2, 3]  # before, two during, after
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    assert metrics[0] == metrics[1]
    assert rollouts[0] == rollouts[1]
    assert summaries[0]["after"] == summaries[1]["after"]  # same weights, same evaluation seed
    assert [e["label"] for e in evals[1]] == ["before", "step 1", "step 2", "after"]
    assert all(0.0 <= e["pass@1"] <= 1.0 and e["problems"] == 16 for e in evals[1])


def test_the_default_run_has_held_out_points_between_before_and_after():
    config = load_config(None)
    every, steps = config.train.eval_every, config.train.steps
    assert every and len(range(every, steps, every)) >= 3
