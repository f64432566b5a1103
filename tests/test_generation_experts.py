"""Generation (n samples per prompt, one batch, KV cache) and the built-in experts."""

import types

import pytest
import torch

from distil_core.builtin import DigitsTask
from distil_core.errors import ConfigError
from distil_core.models.experts import HFExpert, SelfExpert
from distil_core.rollouts.local import Generator, SamplingParams
from distil_core.models.forward import response_logits
from distil_core.models.tiny import build_model, build_tokenizer
from distil_core.types import ExpertQuery

from distil_core.testing import context_builder as builder, tiny_model, tiny_tokenizer


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
    assert calls[0]["input_ids"].shape[0] == 3 * 5  # each prompt's row repeated n times, one batch
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


def test_self_expert_defaults_to_frozen_weights():
    """The documented default: a copy of the initial weights, not the live policy."""
    policy = tiny_model()
    expert = SelfExpert(_runtime(policy))
    assert expert.weights == "frozen" and expert.model is not policy


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


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 0.9), (1.3, 20, 1.0), (0.0, 0, 1.0)])
def test_recorded_logprobs_are_those_of_the_warped_distribution_sampled_from(temperature, top_k, top_p):
    """Temperature, top-k and top-p change the distribution a token is drawn from; the recorded
    log-prob is under that distribution (greedy: under the raw logits), and a drawn token is
    always inside the kept set (finite log-prob)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(1)
    tok, model = tiny_tokenizer(), tiny_model(hidden_size=64)
    problems = DigitsTask(train_size=50, test_size=10).problems("test")[:2]
    prompts = [builder().student_prompt_ids(p) for p in problems]
    params = SamplingParams(max_new_tokens=6, temperature=temperature, top_k=top_k, top_p=top_p)
    n = 4 if temperature > 0 else 1  # HF's greedy search returns one sequence per prompt
    rollouts = Generator(model, tok, params).sample(prompts, [p.id for p in problems], n=n)
    logits, tokens, _ = response_logits(model, [r.prompt_ids for r in rollouts],
                                        [r.response_ids for r in rollouts], tok.pad_token_id)
    warped = logits.float()
    if temperature > 0:
        rows, steps, vocab = warped.shape
        flat = warped.reshape(rows * steps, vocab)
        for warper in ([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []) + \
                ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else []):
            flat = warper(None, flat)
        warped = flat.reshape(rows, steps, vocab)
    expected = torch.log_softmax(warped, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    for b, r in enumerate(rollouts):
        got = torch.tensor(r.sampling_logprobs)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(expected[b, :len(r.response_ids)], got, rtol=1e-4, atol=1e-4)
    if temperature == 0.0:  # greedy: each token is the argmax
        assert all((logits[b, :len(r.response_ids)].argmax(-1) == tokens[b, :len(r.response_ids)]).all()
                   for b, r in enumerate(rollouts))


def test_keyed_sampling_does_not_depend_on_the_batch_a_problem_is_in():
    """A problem's rollouts depend on (key, problem id, sample index) only: generated alone,
    or behind other prompts of other lengths (other padding), they are the same; another key
    gives other rollouts."""
    torch.manual_seed(0)
    tok, model = tiny_tokenizer(), tiny_model(hidden_size=64)
    problems = DigitsTask(train_size=50, test_size=10).problems("test")[:4]
    problems[0] = problems[0].model_copy(update={"prompt": "sort 12 and then some more words"})
    prompts = [builder().student_prompt_ids(p) for p in problems]
    gen = Generator(model, tok, SamplingParams(max_new_tokens=8, temperature=1.0))
    together = gen.sample(prompts, [p.id for p in problems], n=3, key=11)
    alone = gen.sample(prompts[2:3], [problems[2].id], n=3, key=11)
    assert [r.response_ids for r in together[6:9]] == [r.response_ids for r in alone]
    for a, b in zip(together[6:9], alone):
        torch.testing.assert_close(torch.tensor(a.sampling_logprobs), torch.tensor(b.sampling_logprobs),
                                   rtol=1e-4, atol=1e-4)
    assert len({tuple(r.response_ids) for r in together[6:9]}) > 1  # the samples of a group differ
    other = gen.sample(prompts, [p.id for p in problems], n=3, key=12)
    assert [r.response_ids for r in other] != [r.response_ids for r in together]


def test_keyed_draws_follow_the_distribution_and_never_pick_a_masked_token():
    """Inverse-CDF draws at keyed uniforms: over 40 000 keys the frequencies match the
    distribution within 4 standard errors, a token of probability 0 (masked by top-p, say) is
    never drawn, and the uniforms are a function of (key, position)."""
    from distil_core.rollouts.sampling import inverse_cdf, keyed_uniform, row_key

    logits = torch.tensor([0.0, 1.0, float("-inf"), 2.0, -1.0, 0.5, float("-inf")])
    keys = torch.tensor([row_key(7, f"p{i}", i % 3) for i in range(40_000)], dtype=torch.int64)
    u = keyed_uniform(keys, 3)
    torch.testing.assert_close(u, keyed_uniform(keys, 3))
    assert not torch.equal(u, keyed_uniform(keys, 4))
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean().item() - 0.5) < 0.01
    logprobs = torch.log_softmax(logits, 0).expand(len(keys), -1)
    drawn = inverse_cdf(logprobs, u).squeeze(-1)
    freq = torch.bincount(drawn, minlength=len(logits)).double() / len(keys)
    p = torch.softmax(logits.double(), 0)
    se = (p * (1 - p) / len(keys)).sqrt()
    assert freq[2] == 0 and freq[6] == 0
    assert ((freq - p).abs() <= 4 * se + 1e-12).all(), (freq, p)
    # the largest uniform short of 1 still lands on a token that can be drawn
    assert inverse_cdf(logprobs[:1], torch.tensor([1.0 - 2**-24])).item() == 5
