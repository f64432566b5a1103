"""The method registry: one entry per training method, and the only place a method's facts live."""

import typing

import pytest
import torch

from distil_core.config import Method as ConfigMethod
from distil_core.config import EXPERT_TEMPERATURES, METHOD_SPLITS, LossConfig, load_config
from distil_core.errors import ConfigError
from distil_core.losses.chunked import chunked_loss
from distil_core.losses.chunk_terms import ExpertHead
from distil_core.losses.methods import METHODS, Share, method_named
from distil_core.plugin_host import PluginHost
from distil_core.training.runtime import build_runtime


def test_the_config_accepts_exactly_the_registered_methods():
    assert set(typing.get_args(ConfigMethod)) == set(METHODS)
    assert all(name == entry.name for name, entry in METHODS.items())
    # the one fact kept in the config layer: a misspelt name there would silently give τ 1
    assert set(EXPERT_TEMPERATURES) <= set(METHODS)
    # and each method's split of a step's rollouts: one missing would leave it at 16 × 8 unnoticed
    assert set(METHOD_SPLITS) == set(METHODS)


def test_each_method_splits_the_same_rollouts_per_step_and_grpo_keeps_a_group():
    """Switching method must not change what a step costs, only how it is spent: GRPO needs
    several samples of a problem for its advantage, a distillation loss only the expert."""
    assert len({problems * samples for problems, samples in METHOD_SPLITS.values()}) == 1
    for name, (_problems, samples) in METHOD_SPLITS.items():
        assert samples >= 2 if METHODS[name].group_advantages else samples < 8


def test_the_registry_says_which_methods_ask_an_expert_and_run_chunked():
    assert {n for n, m in METHODS.items() if m.needs_expert} == {"distil", "distil_local", "jsd", "reverse_kl"}
    assert {n for n, m in METHODS.items() if m.chunkable} == {"distil", "distil_local", "jsd", "reverse_kl"}
    assert [n for n, m in METHODS.items() if m.future_credit] == ["distil"]
    assert [n for n, m in METHODS.items() if m.group_advantages] == ["grpo"]


def test_an_unknown_method_is_refused_naming_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        method_named("dpo")
    assert "'dpo'" in str(err.value)
    for name in METHODS:
        assert name in str(err.value)


def test_the_runtime_refuses_an_unregistered_method_before_loading_a_model(monkeypatch):
    """A config built around validation still fails at the runtime's door, not after the model loads."""
    from distil_core.training import runtime

    def no_model(*args, **kwargs):
        raise AssertionError("the policy was loaded before the method was checked")

    monkeypatch.setattr(runtime, "load_policy", no_model)
    config = load_config(None, []).model_copy(update={"method": "dpo"})
    with pytest.raises(ConfigError, match="'dpo' is not a training method"):
        build_runtime(config, PluginHost(load_entrypoints=False))


@pytest.mark.parametrize("loss_type, expected", [("dapo", 1.0), ("bnpo", 0.25), ("grpo", 0.5), ("dr_grpo", 0.5)])
def test_grpo_weights_micro_batches_by_its_aggregation_and_distillation_by_tokens(loss_type, expected):
    share = Share(micro_rows=8, rows=16, micro_batches=4, micro_tokens=30, total_tokens=120)
    cfg = LossConfig(loss_type=loss_type)
    assert METHODS["grpo"].scale(cfg, share) == expected
    assert METHODS["distil"].scale(cfg, share) == 0.25


def test_only_distil_has_a_success_term_and_only_with_rewards_to_centre_it_on():
    cfg = LossConfig(reward_weight=1.0, baseline="group_loo")
    assert METHODS["distil"].rewarded(cfg, 4) and not METHODS["distil"].rewarded(cfg, 1)
    # centred on the other problems' rollouts (the default), the success term needs no sibling
    assert METHODS["distil"].rewarded(LossConfig(reward_weight=1.0), 1)
    assert not METHODS["distil_local"].rewarded(cfg, 4)
    assert not METHODS["distil"].rewarded(LossConfig(reward_weight=0.0), 4)
    assert METHODS["grpo"].reads_every_row(LossConfig(reward_weight=0.0), 4)
    assert not METHODS["jsd"].reads_every_row(cfg, 4)


def test_the_chunked_loss_takes_a_registry_entry_as_well_as_its_name():
    torch.manual_seed(0)
    hidden, weight, expert = torch.randn(2, 5, 4), torch.randn(7, 4), ExpertHead(torch.randn(2, 5, 4), torch.randn(7, 4))
    tokens, mask = torch.randint(0, 7, (2, 5)), torch.ones(2, 5)
    by_name = chunked_loss("jsd", hidden, weight, tokens, mask, expert, chunk_size=2)
    by_entry = chunked_loss(METHODS["jsd"], hidden, weight, tokens, mask, expert, chunk_size=2)
    assert torch.equal(by_name, by_entry)
    with pytest.raises(TypeError, match="unexpected options betta"):
        chunked_loss("jsd", hidden, weight, tokens, mask, expert, betta=0.3)


def _expert_rows(access: str, B: int = 2, T: int = 4, V: int = 6, seed: int = 0):
    """A student's logits and an expert batch of ``access`` over the same rows."""
    from distil_core.losses.methods import RowContext, stack_signals
    from distil_core.types import ExpertSignal

    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=g)
    tokens = torch.randint(1, V, (B, T), generator=g)
    mask = torch.ones(B, T)
    if access == "dense":
        signals = [ExpertSignal(access="dense", logits=torch.randn(T, V, generator=g)) for _ in range(B)]
    else:
        signals = [ExpertSignal(access="sampled", sample_ids=torch.randint(1, V, (T, 1), generator=g)) for _ in range(B)]
    rows = RowContext(B, eos_id=0, rewards=torch.tensor([1.0] + [0.0] * (B - 1)))
    return student, tokens, mask, stack_signals(signals, T, V, "cpu"), rows


@pytest.mark.parametrize("method, tau", [("distil", 0.5), ("distil_local", 0.5), ("jsd", 0.5), ("reverse_kl", 1.0)])
def test_an_unset_expert_temperature_is_the_methods_own(method, tau):
    """Forward cross-entropy and JSD learn a tempered expert by default (at τ = 1 both learned
    SmolLM2's self-expert's talk about the feedback); sampled reverse KL reads the expert as is."""
    from distil_core.losses.methods import distillation_loss

    assert LossConfig().expert_temperature is None
    assert load_config(None, []).loss.expert_temperature is None
    student, tokens, mask, expert, rows = _expert_rows("dense")
    unset = distillation_loss(method, LossConfig(), student, tokens, mask, expert, rows)
    own = distillation_loss(method, LossConfig(expert_temperature=tau), student, tokens, mask, expert, rows)
    other = distillation_loss(method, LossConfig(expert_temperature=1.5 - tau), student, tokens, mask, expert, rows)
    torch.testing.assert_close(unset.loss, own.loss)
    assert unset.stats == pytest.approx(own.stats)
    assert not torch.allclose(unset.loss, other.loss)


def test_a_sampled_expert_is_read_as_it_is_unless_a_temperature_is_set():
    from distil_core.losses.methods import distillation_loss

    student, tokens, mask, expert, rows = _expert_rows("sampled")
    unset = distillation_loss("distil_local", LossConfig(), student, tokens, mask, expert, rows)
    plain = distillation_loss("distil_local", LossConfig(expert_temperature=1.0), student, tokens, mask, expert, rows)
    torch.testing.assert_close(unset.loss, plain.loss)
    with pytest.raises(ConfigError, match="loss.expert_temperature needs an expert with log-probs"):
        distillation_loss("distil_local", LossConfig(expert_temperature=0.5), student, tokens, mask, expert, rows)


def test_each_methods_own_expert_temperature_names_a_registered_distillation_method():
    from distil_core.config import EXPERT_TEMPERATURES

    assert set(EXPERT_TEMPERATURES) <= {n for n, m in METHODS.items() if m.needs_expert}
    assert all(t > 0 for t in EXPERT_TEMPERATURES.values())


def _topk_batch(seed: int):
    """Hidden states, an output projection, tokens, a mask and a top-k expert for 4 rows of 5
    positions: what a chunked loss and its full-logit twin both read."""
    from distil_core import losses
    from distil_core.losses.methods import stack_signals
    from distil_core.types import ExpertSignal

    g = torch.Generator().manual_seed(seed)
    B, T, H, V = 4, 5, 8, 12
    hidden, weight = torch.randn(B, T, H, generator=g, dtype=torch.float64), torch.randn(V, H, generator=g, dtype=torch.float64)
    tokens, mask = torch.randint(1, V, (B, T), generator=g), torch.ones(B, T, dtype=torch.float64)
    signals = []
    for _ in range(B):
        ids, lps = losses.topk_with_tail(torch.randn(T, V, generator=g, dtype=torch.float64), 4)
        signals.append(ExpertSignal(access="topk", topk_ids=ids, topk_logprobs=lps))
    return hidden, weight, tokens, mask, stack_signals(signals, T, V, "cpu")


@pytest.mark.parametrize("method", ["distil", "jsd"])
def test_the_chunked_path_tempers_an_unset_top_k_expert_as_the_method_does(method):
    """From hidden states, a chunk at a time, an unset τ is the method's own too: the same loss
    as the full-logit path and as the method's τ written out."""
    from distil_core.config import method_expert_temperature
    from distil_core.losses.chunked import chunked_distillation_loss
    from distil_core.losses.methods import RowContext, distillation_loss

    hidden, weight, tokens, mask, expert = _topk_batch(3)
    rows = RowContext(2, eos_id=0, rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]))
    own = LossConfig(expert_temperature=method_expert_temperature(method), chunk_size=2)
    unset = LossConfig(chunk_size=2)
    chunked = chunked_distillation_loss(method, unset, hidden, weight, None, tokens, mask, expert, rows)
    written = chunked_distillation_loss(method, own, hidden, weight, None, tokens, mask, expert, rows)
    full = distillation_loss(method, unset, hidden @ weight.T, tokens, mask, expert, rows)
    torch.testing.assert_close(chunked.loss, written.loss)
    assert float(chunked.loss) == pytest.approx(float(full.loss), rel=1e-5)  # the full path computes in float32


def test_the_decayed_success_term_is_the_same_on_the_chunked_and_full_paths():
    """``loss.reward_decay`` reaches both loss paths from the config: from hidden states a chunk at
    a time and from full logits, the same loss, and not the loss without it."""
    from distil_core.losses.chunked import chunked_distillation_loss
    from distil_core.losses.methods import RowContext, distillation_loss

    hidden, weight, tokens, mask, expert = _topk_batch(5)
    rows = RowContext(1, eos_id=0, rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]))
    decayed = LossConfig(chunk_size=2, baseline="batch", reward_weight=2.0, reward_decay=True)
    chunked = chunked_distillation_loss("distil", decayed, hidden, weight, None, tokens, mask, expert, rows)
    full = distillation_loss("distil", decayed, hidden @ weight.T, tokens, mask, expert, rows)
    plain = distillation_loss("distil", decayed.model_copy(update={"reward_decay": False}), hidden @ weight.T,
                              tokens, mask, expert, rows)
    assert float(chunked.loss) == pytest.approx(float(full.loss), rel=1e-5)
    assert float(full.loss) != pytest.approx(float(plain.loss), rel=1e-3)


def test_a_micro_batch_of_one_problem_hands_the_batch_baseline_its_siblings_exclusions():
    """Under the batch baseline a micro-batch that holds a single problem has no other problem:
    the loss falls back to the siblings (test_losses), so the trainer must hand it their
    exclusions and the rewards, and a lone rollout keeps ``batch`` (nothing to compare with)."""
    from distil_core.losses.expert_batch import RowContext
    from distil_core.losses.methods import credit_options

    cfg = LossConfig(reward_weight=1.0)
    mask = torch.ones(4, 3)
    exclude = torch.zeros(4, 4, dtype=torch.bool)
    one_problem = credit_options(METHODS["distil"], cfg, RowContext(group_size=4, rewards=torch.ones(4),
                                                                   baseline_exclude=exclude), mask)
    assert one_problem["baseline"] == "batch" and one_problem["baseline_exclude"] is exclude
    assert one_problem["reward_weight"] == 1.0
    two_problems = credit_options(METHODS["distil"], cfg, RowContext(group_size=2, rewards=torch.ones(4)), mask)
    assert two_problems["baseline"] == "batch" and two_problems["group_size"] == 2
    lone = credit_options(METHODS["distil"], cfg, RowContext(group_size=1, rewards=torch.ones(1)), mask[:1])
    assert lone["baseline"] == "batch" and lone["group_size"] == 1
