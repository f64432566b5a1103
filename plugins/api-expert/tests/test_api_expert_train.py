"""End to end: `distil train` with the api expert on `distil serve`'s server, same tiny base as the student."""

import json
import os

import pytest

from distil_core.config import load_config
from distil_core import PluginHost
from distil_core.cli import load_for_serving
from distil_core.serving import FaultyServer
from distil_core.training.trainer import Trainer

FAST_TINY = [
    "model.tiny={hidden_size: 32, layers: 1, heads: 2, steps: 15, batch_size: 16, lr: 0.005, plain_fraction: 0.3}",
    "task.options={length: 2, train_size: 80, test_size: 16}",
]
FAST_RUN = FAST_TINY + [
    "rollout.problems_per_step=4",
    "rollout.samples_per_problem=4",
    "eval.problems=16",
    "eval.samples=4",
    "eval.ks=[1, 4]",
    "train.steps=3",
    "train.save_every=0",
    "train.progress=false",
]


@pytest.mark.slow
def test_training_with_the_api_expert_logs_its_access_level_and_tokens(tmp_path, tiny_base_cache):
    import distil_api_expert

    model, tokenizer, name = load_for_serving("tiny", FAST_TINY, progress=False)  # builds the tiny base once, cached
    with FaultyServer(model, tokenizer, model_name=name) as server:
        expert = f"expert={{name: api, options: {{api_base: '{server.base_url}/v1', model: tiny, access: auto, k: 8}}}}"
        config = load_config(None, FAST_RUN + [expert])
        host = PluginHost(load_entrypoints=False)
        host.register_plugin(distil_api_expert, "api_expert")
        trainer = Trainer(config, run_dir=str(tmp_path / "run"), host=host, echo=lambda *_: None)
        assert trainer.rt.expert.capability.access == "topk"  # probed before training
        server.reset_stats()
        server.add_faults("malformed")  # the first expert request of step 1 breaks
        summary = trainer.fit()
        requests = server.stats["requests"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and summary["steps"] == 3
    asked = [r for r in rows if r["signal_rollouts"] + r["expert_failed"] > 0]
    assert asked, "no step asked the expert"
    for r in asked:
        assert r["expert_access"] == "topk"
        assert r["expert_prompt_tokens"] > 0
        # every query was asked, or shared the answer to an identical one asked in the same step
        assert r["expert_requests"] + r["expert_cached"] >= r["signal_rollouts"] + r["expert_failed"]
        assert r["expert_cost_usd"] == 0 and r["expert_cached"] >= 0
    # the broken answer fails its query (and any identical query of step 1 that shared it): counted,
    # skipped, and training went on
    assert 1 <= rows[0]["expert_failed"] <= 1 + rows[0]["expert_cached"]
    assert sum(r["expert_failed"] for r in rows[1:]) == 0
    assert requests == sum(r["expert_requests"] for r in rows)
    assert os.path.isdir(tmp_path / "run" / "final")


def test_the_entry_point_registers_the_api_expert():
    host = PluginHost(load_entrypoints=True, allow=["api_expert"])
    info = host.plugins.get("api_expert")
    if info is None:
        pytest.skip("distil-api-expert is not installed (pip install -e plugins/api-expert)")
    assert info.error is None and ("expert", "api") in info.registered
