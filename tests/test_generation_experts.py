"""Generation (n samples per prompt, one batch, KV cache) and the built-in experts."""

import types

import pytest
import torch

from distil_core.builtin import DigitsTask
from distil_core.errors import ConfigError
from distil_core.experts import HFExpert, SelfExpert
from distil_core.generation import Generator, SamplingParams
from distil_core.modeling import response_logits
from distil_core.tiny import build_model, build_tokenizer
from distil_core.types import ExpertQuery

from helpers import builder, tiny_model, tiny_tokenizer


def _runtime(model):
    tok = tiny_tokenizer()
    return types.SimpleNamespace(model=model, tokenizer=tok, pad_id=tok.pad_token_id, device=torch.device("cpu"))


def test_n_samples_per_problem_in_one_generate_call_with_matching_logprobs(monkeypatch):
    torch.manual_seed(0)
    tok, model = tiny_tokenizer(), tiny_model(hidden_size=64)
    problems = DigitsTask(train_size=50, test_size=10).problems("test")[:3]
    problems[1] = problems[1].model_copy(update={"prompt": "sort 12 and then some more words"})
    prompts = [builder().student_prompt_ids(p) for p in problems]
    assert len({len(p) for p in prompts}) > 1  # ragged: exercises left padding
    calls = []
    real_generate = model.generate

    def counting_generate(**kwargs):
        calls.append(kwargs)
        return real_generate(**kwargs)

    monkeypatch.setattr(model, "generate", counting_generate)
    rollouts = Generator(model, tok, SamplingParams(max_new_tokens=7)).sample(prompts, [p.id for p in problems], n=5)
    assert len(calls) == 1
    assert calls[0]["input_ids"].shape[0] == 3 and calls[0]["num_return_sequences"] == 5
    assert calls[0].get("use_cache", True) is not False  # KV cache stays on
    assert [(r.problem_id, r.group_index) for r in rollouts] == [(p.id, g) for p in problems for g in range(5)]
    # Log-probs recorded while sampling equal a teacher-forced forward pass over the same ids.
    logits, tokens, mask = response_logits(model, [r.prompt_ids for r in rollouts],
                                           [r.response_ids for r in rollouts], tok.pad_token_id)
    recomputed = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    for b, r in enumerate(rollouts):
        assert r.finished == (r.response_ids[-1] == tok.eos_token_id)
        assert len(r.response_ids) <= 7
        torch.testing.assert_close(recomputed[b, :len(r.response_ids)], torch.tensor(r.sampling_logprobs),
                                   rtol=1e-4, atol=1e-4)


def test_self_expert_live_shares_weights_frozen_keeps_them_ema_interpolates():
    policy = tiny_model()
    live = SelfExpert(_runtime(policy), weights="live")
    frozen = SelfExpert(_runtime(policy), weights="frozen")
    ema = SelfExpert(_runtime(policy), weights="ema", ema_rate=0.25)
    assert live.model is policy  # no copy
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(frozen.model.parameters(), policy.parameters()))
    before = [p.detach().clone() for p in policy.parameters()]
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    for expert in (live, frozen, ema):
        expert.on_policy_update(policy)
    for p0, p, f, e in zip(before, policy.parameters(), frozen.model.parameters(), ema.model.parameters()):
        torch.testing.assert_close(f, p0)
        torch.testing.assert_close(e, 0.75 * p0 + 0.25 * p.detach())
    assert not any(p.requires_grad for p in frozen.model.parameters())


def test_topk_access_returns_the_k_most_likely_ids():
    policy = tiny_model()
    tok = tiny_tokenizer()
    q = ExpertQuery(problem_id="p", rollout_index=0, context_messages=[], context_ids=[3, 10, 11, 4],
                    response_ids=[12, 13, tok.eos_token_id], response_text="")
    dense = SelfExpert(_runtime(policy)).score([q])[0]
    top = SelfExpert(_runtime(policy), access="topk", k=5).score([q])[0]
    assert top.topk_ids.shape == (3, 5)
    torch.testing.assert_close(top.topk_logprobs, torch.log_softmax(dense.logits, -1).topk(5).values)
    with pytest.raises(ConfigError, match="needs k"):
        SelfExpert(_runtime(policy), access="topk")


def test_hf_expert_loads_a_local_model_and_rejects_another_tokenizer(tmp_path):
    tok = tiny_tokenizer()
    teacher = tiny_model(seed=3)
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    expert = HFExpert(_runtime(tiny_model()), str(tmp_path / "teacher"))
    q = ExpertQuery(problem_id="p", rollout_index=0, context_messages=[], context_ids=[3, 10, 4],
                    response_ids=[12, tok.eos_token_id], response_text="")
    with torch.no_grad():
        ref = teacher(input_ids=torch.tensor([q.input_ids])).logits[0, 2:4]
    torch.testing.assert_close(expert.score([q])[0].logits, ref, rtol=1e-5, atol=1e-5)

    other = build_tokenizer(["completely different corpus text"], vocab_size=270)
    build_model(len(other), hidden_size=32, layers=1, heads=2).save_pretrained(tmp_path / "other")
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ConfigError, match="tokenizer .* differs"):
        HFExpert(_runtime(tiny_model()), str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="cannot load"):
        HFExpert(_runtime(tiny_model()), str(tmp_path / "missing"))
