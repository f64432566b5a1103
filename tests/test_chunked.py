"""Chunked losses equal the reference losses on full logits: values and gradients, float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distil_core import losses
from distil_core.losses.chunked import ExpertHead, ExpertTopK, chunked_loss

B, T, H, V, GROUP = 4, 7, 5, 11, 2
RTOL = 1e-5


def _problem(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype)
    bias = torch.randn(V, generator=g, dtype=dtype)
    expert_hidden = torch.randn(B, T, H, generator=g, dtype=dtype)
    expert_weight = torch.randn(V, H, generator=g, dtype=dtype)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=dtype)
    mask[0, 5:] = 0  # a short row
    mask[1, 2] = 0  # a gap
    mask[3, 1:] = 0  # one token only
    return hidden, weight, bias, expert_hidden, expert_weight, tokens, mask


def _grads(loss, leaves):
    return torch.autograd.grad(loss, leaves)


def _compare(reference_fn, chunked_fn, seed: int = 0):
    hidden, weight, bias, eh, ew, tokens, mask = _problem(seed)
    leaves = [hidden.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()]
    teacher_logits = F.linear(eh, ew)
    ref = reference_fn(F.linear(hidden, weight, bias), teacher_logits, tokens, mask)
    ref_grads = _grads(ref, leaves)
    for chunk in (1, 3, T, 100):
        got = chunked_fn(hidden, weight, bias, ExpertHead(eh, ew), tokens, mask, chunk)
        got_grads = _grads(got, leaves)
        torch.testing.assert_close(got, ref, rtol=RTOL, atol=1e-12)
        for g, r in zip(got_grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("baseline", ["none", "group_loo", "batch"])
@pytest.mark.parametrize("gamma", [1.0, 0.6])
@pytest.mark.parametrize("future_cost, stop_credit", [("kl", "full"), ("ce", "full"), ("kl", "local")])
def test_distil_equals_the_reference(baseline, gamma, future_cost, stop_credit):
    options = dict(baseline=baseline, gamma=gamma, group_size=GROUP if baseline != "none" else None,
                   future_cost=future_cost, stop_credit=stop_credit, eos_id=3)
    _compare(
        lambda logits, teacher, tokens, mask: losses.distil_loss(logits, teacher, tokens, mask, **options),
        lambda h, w, b, expert, tokens, mask, chunk: chunked_loss(
            "distil", h, w, tokens, mask, expert, bias=b, chunk_size=chunk, **options
        ),
    )


@pytest.mark.parametrize("stop_credit", ["full", "local"])
def test_distil_with_a_credit_floor_equals_the_reference(stop_credit):
    options = dict(baseline="group_loo", group_size=GROUP, stop_credit=stop_credit, eos_id=3, credit_floor=0.05)
    _compare(
        lambda logits, teacher, tokens, mask: losses.distil_loss(logits, teacher, tokens, mask, **options),
        lambda h, w, b, expert, tokens, mask, chunk: chunked_loss(
            "distil", h, w, tokens, mask, expert, bias=b, chunk_size=chunk, **options
        ),
    )


def test_distil_with_exclusions_and_a_success_term_equals_the_reference():
    exclude = torch.zeros(B, GROUP, dtype=torch.bool)
    exclude[0, 1] = True
    response = torch.ones(B, T, dtype=torch.float64)
    response[0, 5:] = 0
    options = dict(baseline="group_loo", group_size=GROUP, baseline_exclude=exclude, stop_credit="local", eos_id=2,
                   rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]), reward_weight=0.7, response_mask=response)
    _compare(
        lambda logits, teacher, tokens, mask: losses.distil_loss(logits, teacher, tokens, mask, **options),
        lambda h, w, b, expert, tokens, mask, chunk: chunked_loss(
            "distil", h, w, tokens, mask, expert, bias=b, chunk_size=chunk, **options
        ),
    )


@pytest.mark.parametrize("group_size", [1, GROUP])
def test_distil_with_the_batch_baseline_and_a_success_term_equals_the_reference(group_size):
    options = dict(baseline="batch", group_size=group_size, stop_credit="local", eos_id=3, future_reduce="mean",
                   rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]), reward_weight=0.5)
    _compare(
        lambda logits, teacher, tokens, mask: losses.distil_loss(logits, teacher, tokens, mask, **options),
        lambda h, w, b, expert, tokens, mask, chunk: chunked_loss(
            "distil", h, w, tokens, mask, expert, bias=b, chunk_size=chunk, **options
        ),
    )


@pytest.mark.parametrize("gamma", [1.0, 0.6])
def test_distil_with_the_mean_future_cost_equals_the_reference(gamma):
    # chunks carry the future sums; the mean divides them by the whole sequence's weights
    options = dict(baseline="group_loo", group_size=GROUP, gamma=gamma, stop_credit="local", eos_id=3,
                   future_reduce="mean", rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]), reward_weight=0.5)
    _compare(
        lambda logits, teacher, tokens, mask: losses.distil_loss(logits, teacher, tokens, mask, **options),
        lambda h, w, b, expert, tokens, mask, chunk: chunked_loss(
            "distil", h, w, tokens, mask, expert, bias=b, chunk_size=chunk, **options
        ),
    )


def test_distil_local_equals_the_reference():
    _compare(
        lambda logits, teacher, tokens, mask: losses.distil_loss(logits, teacher, tokens, mask, future_credit=False),
        lambda h, w, b, expert, tokens, mask, chunk: chunked_loss(
            "distil_local", h, w, tokens, mask, expert, bias=b, chunk_size=chunk
        ),
    )


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_equals_the_reference(beta, temperature):
    _compare(
        lambda logits, teacher, tokens, mask: losses.generalized_jsd(logits, teacher, mask, beta=beta, temperature=temperature),
        lambda h, w, b, expert, tokens, mask, chunk: chunked_loss(
            "jsd", h, w, tokens, mask, expert, bias=b, chunk_size=chunk, beta=beta, temperature=temperature
        ),
    )


@pytest.mark.parametrize("gamma", [0.0, 0.7, 1.0])
def test_reverse_kl_equals_the_reference(gamma):
    def reference(logits, teacher, tokens, mask):
        return losses.reverse_kl_sampled(
            losses.token_logprobs(logits, tokens), losses.token_logprobs(teacher, tokens), mask, gamma=gamma
        )

    _compare(
        reference,
        lambda h, w, b, expert, tokens, mask, chunk: chunked_loss(
            "reverse_kl", h, w, tokens, mask, expert, bias=b, chunk_size=chunk, reverse_kl_gamma=gamma
        ),
    )


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("method", ["distil", "distil_local", "jsd", "reverse_kl"])
def test_top_k_with_tail_equals_the_reference(method, temperature):
    hidden, weight, bias, eh, ew, tokens, mask = _problem(3)
    ids, lps = losses.topk_with_tail(F.linear(eh, ew), 4)
    leaves = [hidden.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()]
    logits = F.linear(hidden, weight, bias)
    if method in ("distil", "distil_local"):
        ref = losses.distil_loss_topk(logits, ids, lps, tokens, mask, future_credit=method == "distil")
    elif method == "jsd":
        ref = losses.generalized_jsd_topk(logits, ids, lps, mask, beta=0.5, temperature=temperature)
    else:
        ref = losses.reverse_kl_sampled(
            losses.token_logprobs(logits, tokens), losses.topk_token_logprobs(ids, lps, tokens), mask
        )
    ref_grads = _grads(ref, leaves)
    for chunk in (2, 5, T):
        got = chunked_loss(method, hidden, weight, tokens, mask, ExpertTopK(ids, lps), bias=bias, chunk_size=chunk,
                           temperature=temperature)
        torch.testing.assert_close(got, ref, rtol=RTOL, atol=1e-12)
        for g, r in zip(_grads(got, leaves), ref_grads):
            torch.testing.assert_close(g, r, rtol=RTOL, atol=1e-12)


def test_a_live_self_expert_shares_the_students_projection_without_a_gradient_through_it():
    """ExpertHead(weight=the student's own weight): the expert side is never differentiated."""
    hidden, weight, _, eh, _, tokens, mask = _problem(5)
    leaves = [hidden.requires_grad_(), weight.requires_grad_()]
    ref = losses.distil_loss(F.linear(hidden, weight), F.linear(eh, weight.detach()), tokens, mask)
    got = chunked_loss("distil", hidden, weight, tokens, mask, ExpertHead(eh, weight), chunk_size=3)
    torch.testing.assert_close(got, ref, rtol=RTOL, atol=1e-12)
    for g, r in zip(_grads(got, leaves), _grads(ref, leaves)):
        torch.testing.assert_close(g, r, rtol=RTOL, atol=1e-12)


def test_dense_expert_logits_and_an_expert_head_agree():
    hidden, weight, _, eh, ew, tokens, mask = _problem(7)
    a = chunked_loss("distil", hidden, weight, tokens, mask, F.linear(eh, ew), chunk_size=2)
    b = chunked_loss("distil", hidden, weight, tokens, mask, ExpertHead(eh, ew), chunk_size=2)
    torch.testing.assert_close(a, b)


def test_an_all_masked_batch_gives_zero_loss_and_zero_gradient():
    hidden, weight, _, eh, ew, tokens, mask = _problem(9)
    hidden.requires_grad_()
    loss = chunked_loss("distil", hidden, weight, tokens, torch.zeros_like(mask), ExpertHead(eh, ew), chunk_size=3)
    assert float(loss.detach()) == 0.0
    (grad,) = torch.autograd.grad(loss, [hidden])
    assert torch.count_nonzero(grad) == 0


def test_the_loss_backpropagates_into_a_model_and_scales_with_the_upstream_gradient():
    hidden, weight, _, eh, ew, tokens, mask = _problem(11)
    layer = torch.nn.Linear(H, H, dtype=torch.float64)
    out = chunked_loss("distil", layer(hidden), weight, tokens, mask, ExpertHead(eh, ew), chunk_size=3)
    (3.0 * out).backward()
    chunked_grad = layer.weight.grad.clone()
    layer.zero_grad()
    ref = losses.distil_loss(F.linear(layer(hidden), weight), F.linear(eh, ew), tokens, mask)
    (3.0 * ref).backward()
    torch.testing.assert_close(chunked_grad, layer.weight.grad, rtol=RTOL, atol=1e-12)


def test_bfloat16_hidden_states_compute_in_float32_and_match_closely():
    hidden, weight, _, eh, ew, tokens, mask = _problem(13, dtype=torch.float32)
    ref = losses.distil_loss(F.linear(hidden, weight), F.linear(eh, ew), tokens, mask)
    got = chunked_loss("distil", hidden.bfloat16(), weight.bfloat16(), tokens, mask, ExpertHead(eh, ew), chunk_size=3)
    assert got.dtype == torch.float32
    assert abs(float(got) - float(ref)) < 0.05 * abs(float(ref))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="grpo"), "no chunked loss for method 'grpo'"),
        (dict(method="dpo"), "no chunked loss for method 'dpo'"),
        (dict(chunk_size=0), "chunk_size must be at least 1"),
        (dict(baseline="group_loo"), "needs group_size"),
        (dict(gamma=1.5), "gamma must lie in"),
    ],
)
def test_bad_options_are_refused_with_the_reason(kwargs, message):
    hidden, weight, _, eh, ew, tokens, mask = _problem()
    options = dict(method="distil", chunk_size=3)
    options.update(kwargs)
    method = options.pop("method")
    with pytest.raises(ValueError, match=message):
        chunked_loss(method, hidden, weight, tokens, mask, ExpertHead(eh, ew), **options)


def test_stats_report_the_token_mean_ce_and_kl_to_the_expert():
    from distil_core.losses.methods import dense_stats

    hidden, weight, _, eh, ew, tokens, mask = _problem(17)
    stats: dict = {}
    chunked_loss("jsd", hidden, weight, tokens, mask, ExpertHead(eh, ew), chunk_size=2, stats=stats)
    expected = dense_stats(F.linear(hidden, weight), F.linear(eh, ew), mask)
    assert stats == pytest.approx(expected, rel=1e-9)


def test_hidden_state_signals_give_the_dense_loss_on_the_full_logits_path():
    """An expert that sends hidden states + its projection is a dense expert to the reference path."""
    from distil_core.config import LossConfig
    from distil_core.losses.methods import RowContext, distillation_loss, stack_signals
    from distil_core.types import ExpertSignal

    hidden, weight, _, eh, ew, tokens, mask = _problem(19, dtype=torch.float32)
    lengths = mask.sum(1).long().tolist()
    logits = F.linear(hidden, weight)
    dense = [ExpertSignal(access="dense", logits=F.linear(eh[b, :n], ew)) for b, n in enumerate(lengths)]
    head = (ew, None)
    hid = [ExpertSignal(access="hidden", hidden=eh[b, :n], head=head) for b, n in enumerate(lengths)]
    rows = RowContext(GROUP, eos_id=0, rewards=torch.tensor([1.0, 0.0, 0.0, 0.0]))
    for temperature in (1.0, 0.5):
        cfg = LossConfig(expert_temperature=temperature)
        a = distillation_loss("distil", cfg, logits, tokens, mask, stack_signals(dense, T, V, "cpu"), rows)
        b = distillation_loss("distil", cfg, logits, tokens, mask, stack_signals(hid, T, V, "cpu"), rows)
        torch.testing.assert_close(a.loss, b.loss)
        assert a.stats == pytest.approx(b.stats)
    # the expert's temperature is what the loss learns towards: q = softmax(z / 0.5)
    sharp = [ExpertSignal(access="dense", logits=2.0 * F.linear(eh[b, :n], ew)) for b, n in enumerate(lengths)]
    c = distillation_loss("distil", LossConfig(expert_temperature=1.0), logits, tokens, mask,
                          stack_signals(sharp, T, V, "cpu"), rows)
    torch.testing.assert_close(c.loss, b.loss)


@pytest.mark.parametrize("vocab", [3, 500])
def test_tempering_a_hidden_state_expert_divides_the_smaller_tensor(vocab):
    """z / τ for z = h Wᵀ + b: the micro-batch's hidden states are divided when they are smaller
    than the head (the head is then used as it is, not copied), else the head."""
    from distil_core.losses.expert_batch import ExpertBatch, tempered

    torch.manual_seed(0)
    hidden, weight, bias = torch.randn(2, 4, 8), torch.randn(vocab, 8), torch.randn(vocab)
    expert = ExpertBatch("hidden", torch.ones(2), hidden=hidden, head=(weight, bias))
    out = tempered(expert, 0.5)
    torch.testing.assert_close(out.dense_logits(), F.linear(hidden, weight, bias) / 0.5)
    assert (out.head[0] is weight) == (hidden.numel() <= weight.numel())
    assert (out.hidden is hidden) == (hidden.numel() > weight.numel())
    assert tempered(expert, 1.0) is expert


def test_importance_ratio_stats_cover_the_positions_the_loss_counts():
    """With a success term the loss counts every response token, with an expert signal or not;
    the importance weights apply there, and the ratio stats are over exactly those positions,
    as the full-logit path's ``ratio_stats``."""
    from distil_core.losses.importance import ratio_stats
    from distil_core.losses.reference import token_logprobs

    hidden, weight, bias, eh, ew, tokens, response = _problem(5)
    signal = response.clone()
    signal[2] = 0  # a row without an expert signal, still counted by the success term
    current = token_logprobs(F.linear(hidden, weight, bias), tokens)
    old = current + 0.8 * torch.randn(current.shape, generator=torch.Generator().manual_seed(1), dtype=current.dtype)
    stats: dict = {}
    chunked_loss("distil", hidden, weight, tokens, signal, ExpertHead(eh, ew), bias=bias, chunk_size=3, stats=stats,
                 old_logprobs=old, is_clip=2.0, baseline="group_loo", group_size=GROUP,
                 rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]), reward_weight=1.0, response_mask=response)
    expected = ratio_stats(current, old, response, 2.0)
    assert 0 < expected["is_truncated_fraction"] < 1
    assert stats["ratio_mean"] == pytest.approx(expected["ratio_mean"], rel=1e-9)
    assert stats["is_truncated_fraction"] == pytest.approx(expected["is_truncated_fraction"], rel=1e-9)
