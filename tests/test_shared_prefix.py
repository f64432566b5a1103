"""When rows that continue the same prompt compute it once, and when they keep the single pass.

That the shared pass gives the single pass's values and gradients (plain and LoRA models) is
checked in tests/test_response_logits.py; here, which pass runs, what it costs in token
positions, its fallbacks, and a whole trainer step both ways.
"""

import warnings

import pytest
import torch

from distil_core.config import load_config
from distil_core.models import shared_prefix
from distil_core.models.activation_checkpointing import enable_gradient_checkpointing
from distil_core.models.forward import projects_plainly, response_hidden, response_logits
from distil_core.models.lora import attach_lora
from distil_core.plugin_host import PluginHost
from distil_core.testing import FAST_RUN, tiny_model
from distil_core.training.trainer import Trainer

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
PREFIXES = [p for p in PROMPTS for _ in range(3)]  # three samples of each prompt, as a GRPO group
RESPONSES = [[20, 21, 22], [23], [24, 25, 26, 27, 28], [29, 30], [], [31, 32, 33, 34], [35], [36, 37, 38], [39, 40]]


def reference_logits(model, prefixes, responses):
    """[B, T, V] logits from the single pass over every whole row (sharing turned off); that it
    equals the model's own forward, sliced, is tests/test_response_logits.py's."""
    saved, shared_prefix.MIN_SAVING = shared_prefix.MIN_SAVING, 2.0
    try:
        return response_logits(model, prefixes, responses, 0)[0]
    finally:
        shared_prefix.MIN_SAVING = saved


class TokenCount:
    """Token positions that go through the model's input embeddings, summed over calls (after
    the model's one-time check of its output projection)."""

    def __init__(self, model):
        projects_plainly(model)
        self.total = 0
        model.get_input_embeddings().register_forward_hook(lambda m, args, out: self.add(args[0]))

    def add(self, ids):
        self.total += ids.numel()


def test_the_hidden_states_of_the_chunked_losses_are_shared_too():
    model = tiny_model()
    with torch.no_grad():
        hidden, _, mask = response_hidden(model, PREFIXES, RESPONSES, 0)
        reference = reference_logits(model, PREFIXES, RESPONSES)
    projected = model.get_output_embeddings()(hidden)
    torch.testing.assert_close(projected[mask.bool()], reference[mask.bool()], rtol=1e-5, atol=1e-5)


def test_each_distinct_prompt_goes_through_the_decoder_once():
    model = tiny_model()
    count = TokenCount(model)
    with torch.no_grad():
        response_logits(model, PREFIXES, RESPONSES, 0)
    width = max(len(r) for r in RESPONSES)
    # the distinct prompts but their last token (left-padded to the longest), then every row's
    # last prompt token and response but its last, instead of every whole row padded
    assert count.total == len(PROMPTS) * (max(map(len, PROMPTS)) - 1) + len(PREFIXES) * width
    assert count.total < 0.75 * len(PREFIXES) * max(len(p) + len(r) for p, r in zip(PREFIXES, RESPONSES))


def test_prefixes_that_begin_alike_compute_their_common_beginning_once():
    """An expert's contexts for one problem: the question, then each rollout's own feedback."""
    question, other = [5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15]
    prefixes = [question + [40, 41], question + [42], question + [43, 44, 45], other + [46], other + [47, 48]]
    responses = [[20, 21, 22], [23], [24, 25, 26, 27], [28, 29], [30]]
    plan = shared_prefix.plan_sharing(prefixes, responses)
    assert plan.heads == [question, other] and plan.index == [0, 0, 0, 1, 1]
    # each row's tail: the rest of its prefix, then its response but the last token
    assert plan.width == max(len(p) - len(plan.heads[g]) + len(r) - 1 for p, r, g in zip(prefixes, responses, plan.index))
    model = tiny_model()
    count = TokenCount(model)
    with torch.no_grad():
        logits, _, mask = response_logits(model, prefixes, responses, 0)
        assert count.total == len(plan.heads) * len(question) + len(prefixes) * plan.width
        reference = reference_logits(model, prefixes, responses)
    torch.testing.assert_close(logits[mask.bool()], reference[mask.bool()], rtol=1e-5, atol=1e-5)
    # a prefix that holds another whole still leaves it a token of its own to run
    short = [5, 6, 7, 8, 9, 10, 11, 12]
    plan = shared_prefix.plan_sharing([short, short + [13]] * 4, [[1]] * 8)
    assert plan.heads == [short[:-1]]
    # a family is formed only where it costs fewer positions than each prefix on its own
    plan = shared_prefix.plan_sharing([[5, 6, 7, 8], [5, 6, 7, 8, 9, 10]] * 2, [[1, 2]] * 4)
    assert plan.heads == [[5, 6, 7], [5, 6, 7, 8, 9]]
    # beginnings shorter than half the family's first prefix are not worth a family
    assert shared_prefix.plan_sharing([[5, 6, 7, 8, 9, 10], [5, 6, 11, 12, 13, 14]], [[1], [2]]) is None


def test_sharing_stands_aside_where_it_saves_too_little_or_cannot_apply():
    distinct = [[5, 6, 7], [8, 9, 10], [11, 12]]
    assert shared_prefix.plan_sharing(distinct, [[1], [2], [3]]) is None  # nothing shared
    assert shared_prefix.plan_sharing([[5, 6]] * 2, [[1, 2, 3, 4, 5, 6]] * 2) is None  # saves under 25 %
    assert shared_prefix.plan_sharing([[5]] * 4, [[1]] * 4) is None  # a one-token prompt: nothing to cache
    assert shared_prefix.plan_sharing([[5, 6, 7]] * 4, [[]] * 4) is None  # no response
    plan = shared_prefix.plan_sharing([[5, 6, 7, 8], [9, 10, 11, 12]] * 2, [[1]] * 4)
    assert plan.heads == [[5, 6, 7], [9, 10, 11]] and plan.index == [0, 1, 0, 1]

    # a model with the single pass's own numbers: counted, the prompts go through once per row
    model = tiny_model()
    count = TokenCount(model)
    with torch.no_grad():
        response_logits(model, distinct, [[1], [2], [3]], 0)
    assert count.total == 3 * 4


def single_pass_positions(model, prefixes, responses):
    """Token positions through the embeddings for one call (the single pass: every whole row)."""
    count = TokenCount(model)
    response_logits(model, prefixes, responses, 0)
    return count.total


SINGLE = len(PREFIXES) * max(len(p) + len(r) for p, r in zip(PREFIXES, RESPONSES))


def test_gradient_checkpointing_or_dropout_in_training_keep_the_single_pass():
    model = tiny_model()
    enable_gradient_checkpointing(model)
    model.train()
    assert single_pass_positions(model, PREFIXES, RESPONSES) == SINGLE  # the checkpointed layers would drop the cache
    with torch.no_grad():  # in training mode without gradients too (older transformers drop it there as well)
        assert single_pass_positions(model, PREFIXES, RESPONSES) == SINGLE
    model.eval()
    with torch.no_grad():
        assert single_pass_positions(model, PREFIXES, RESPONSES) < SINGLE
    model.train()
    logits, tokens, mask = response_logits(model, PREFIXES, RESPONSES, 0)
    torch.testing.assert_close(logits[mask.bool()], reference_logits(model, PREFIXES, RESPONSES)[mask.bool()],
                               rtol=1e-5, atol=1e-5)

    # dropout: the siblings would share one draw of their prompt's dropout instead of each their own
    dropped = attach_lora(tiny_model(), load_config(None, ["model.lora={dropout: 0.1}"]).model.lora)
    dropped.train()
    assert shared_prefix.has_dropout(dropped)
    assert single_pass_positions(dropped, PREFIXES, RESPONSES) == SINGLE
    dropped.eval()
    assert not shared_prefix.has_dropout(dropped)
    with torch.no_grad():
        assert single_pass_positions(dropped, PREFIXES, RESPONSES) < SINGLE
    functional = tiny_model()
    functional.config.attention_dropout = 0.1  # applied functionally in training: no module to see
    functional.train()
    assert shared_prefix.has_dropout(functional)
    assert single_pass_positions(functional, PREFIXES, RESPONSES) == SINGLE


def test_without_gradients_a_large_selected_cache_keeps_the_single_pass(monkeypatch):
    model = tiny_model()
    config = model.config
    rows, positions = len(PREFIXES), (max(map(len, PROMPTS)) - 1) + max(map(len, RESPONSES))
    expected = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4 * rows * positions
    assert shared_prefix.selected_cache_bytes(model, rows, positions) == expected
    monkeypatch.setattr(shared_prefix, "NO_GRAD_CACHE_BYTES", expected - 1)
    with torch.no_grad():
        assert single_pass_positions(model, PREFIXES, RESPONSES) == SINGLE
    assert single_pass_positions(model, PREFIXES, RESPONSES) < SINGLE  # with gradients: kept for backward anyway
    monkeypatch.setattr(shared_prefix, "NO_GRAD_CACHE_BYTES", expected)
    with torch.no_grad():
        assert single_pass_positions(model, PREFIXES, RESPONSES) < SINGLE


class Decoder(torch.nn.Module):
    """The real decoder, changed in what it does with the cache."""

    def __init__(self, inner, returns=True, reads=True):
        super().__init__()
        self.inner, self.returns, self.reads = inner, returns, reads

    def forward(self, **kw):
        if not self.reads:  # takes the cache argument and ignores it
            kw.pop("cache", None)
            kw.pop("past_key_values", None)
        out = self.inner(**kw)
        if not self.returns:
            out["cache" if "cache" in out else "past_key_values"] = None
        return out


@pytest.mark.parametrize("returns, reads", [(False, True), (True, False)], ids=["no-cache", "cache-ignored"])
def test_a_decoder_that_does_not_keep_to_its_cache_falls_back_to_the_single_pass(returns, reads):
    model = tiny_model()
    wrapped = Decoder(model.get_decoder(), returns=returns, reads=reads)
    model.get_decoder = lambda: wrapped
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logits, _, mask = response_logits(model, PREFIXES, RESPONSES, 0)
        reference = reference_logits(model, PREFIXES, RESPONSES)
    torch.testing.assert_close(logits[mask.bool()], reference[mask.bool()], rtol=1e-5, atol=1e-5)
    said = any("cannot be split by rows" in str(w.message) for w in caught)
    assert said == (not returns)  # a cache of the wrong kind is said; one that was not read is not
    with torch.no_grad(), warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        positions = single_pass_positions(model, PREFIXES, RESPONSES)
    assert not any("cannot be split by rows" in str(w.message) for w in again)  # said once
    if not returns:  # not tried again: the single pass alone
        assert positions == SINGLE
    else:  # tried again (the cache may be read next time), then the single pass
        assert positions > SINGLE


def test_only_plain_dynamic_caches_are_split_by_rows():
    model = tiny_model()
    with torch.no_grad():
        out = model.get_decoder()(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True)
    cache = out["cache"] if "cache" in out else out["past_key_values"]
    assert shared_prefix.selectable(cache) and not shared_prefix.selectable(None)
    if hasattr(cache, "layers"):  # transformers >= 5
        cache.layers.append(type("LinearAttentionLayer", (), {})())  # a hybrid model's recurrent state
        assert not shared_prefix.selectable(cache)


def test_a_training_step_is_the_same_with_and_without_sharing(tmp_path, monkeypatch):
    rows, gradients, tokens = [], [], []
    for share in (True, False):
        monkeypatch.setattr(shared_prefix, "MIN_SAVING", 0.25 if share else 2.0)
        config = load_config(None, FAST_RUN + ["optim.grad_clip=0"])
        trainer = Trainer(config, run_dir=str(tmp_path / str(share)), host=PluginHost(load_entrypoints=False),
                          echo=lambda *_: None)
        count = TokenCount(trainer.model)
        step = trainer.learner.optimizer.step

        def record_then_step(*args, step=step, model=trainer.model, **kw):  # the gradients, before they are freed
            gradients.append([p.grad.clone() for p in model.parameters()])
            return step(*args, **kw)

        monkeypatch.setattr(trainer.learner.optimizer, "step", record_then_step)
        rows.append(trainer.train_step(1))
        tokens.append(count.total)
    assert len(gradients) == 2 and tokens[0] < tokens[1]  # the update (and any local expert) ran fewer positions
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-5)
    assert rows[0]["grad_norm"] == pytest.approx(rows[1]["grad_norm"], rel=1e-4)
    for a, b in zip(*gradients):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
