"""response_logits projects only the response positions, and equals full logits + slicing
(whether every row's prompt is its own, or rows share prompts that are then computed once).

The reference here is what a user would write: the model's own forward on the whole padded
batch (right-padded, and left-padded with positions that skip the padding), logits at every
position, sliced per row to the ones that predict the response.
"""

import pytest
import torch

from distil_core.models.forward import projects_plainly, response_logits
from distil_core.models.padding import pad_batch, position_ids
from distil_core.models.shared_prefix import plan_sharing
from distil_core.testing import tiny_model

PREFIXES = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
RESPONSES = [[20, 21, 22], [23], [24, 25, 26, 27, 28]]
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
GROUPS = (  # three samples of each prompt, as GRPO samples them: each prompt is computed once
    [p for p in PROMPTS for _ in range(3)],
    [[20, 21, 22], [23], [24, 25, 26, 27, 28], [29, 30], [], [31, 32, 33, 34], [35], [36, 37, 38], [39, 40]],
)
FAMILIES = (  # prefixes that only begin alike, as an expert's contexts for one problem: the beginning is computed once
    [[5, 6, 7, 8, 9, 40], [5, 6, 7, 8, 9, 41, 42], [5, 6, 7, 8, 9, 43, 44, 45, 46], [11, 12, 13, 14, 47],
     [11, 12, 13, 14, 48, 49]],
    [[20, 21, 22], [23], [24, 25, 26, 27, 28], [29, 30], []],
)


def sliced_full_logits(model, side, prefixes=PREFIXES, responses=RESPONSES):
    """[B, T, V] logits sliced from a full forward over ``side``-padded rows (zeros past each response)."""
    rows = [p + r for p, r in zip(prefixes, responses)]
    ids, mask = pad_batch(rows, 0, side=side)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).logits
    width = max(len(r) for r in responses)
    out = torch.zeros(len(rows), width, logits.shape[-1])
    for b, (p, r) in enumerate(zip(prefixes, responses)):
        start = len(p) - 1 + (0 if side == "right" else ids.shape[1] - len(p) - len(r))
        out[b, : len(r)] = logits[b, start : start + len(r)]
    return out


def masked_loss(logits, tokens, mask):
    """A loss that reads every response position, with position-dependent weights."""
    weights = torch.linspace(0.5, 1.5, logits.shape[1]).unsqueeze(0)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")
    return (nll * mask * weights).sum()


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def lora_model():
    from distil_core.config import load_config
    from distil_core.models.lora import attach_lora

    torch.manual_seed(0)
    model = attach_lora(tiny_model(hidden_size=64), load_config(None, ["model.lora=true"]).model.lora)
    with torch.no_grad():  # lora_B starts at zero: make the adapters change the outputs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


class ScaledHead(torch.nn.Module):
    """A causal LM whose logits are its head's output times 0.5 (as logit-scaling models do)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_decoder(self):
        return self.inner.get_decoder()

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kw):
        out = self.inner(**kw)
        out.logits = out.logits * 0.5
        return out


@pytest.mark.parametrize("build", [lambda: tiny_model(hidden_size=64), lora_model, lambda: ScaledHead(tiny_model())],
                         ids=["plain", "lora", "scaled-logits"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("rows", [(PREFIXES, RESPONSES), GROUPS, FAMILIES],
                         ids=["distinct-prompts", "shared-prompts", "common-beginnings"])
def test_response_logits_equal_full_logits_sliced_in_values_and_gradients(build, side, rows):
    prefixes, responses = rows
    assert (plan_sharing(prefixes, responses) is not None) == (prefixes is not PREFIXES)
    model = build()
    model.train()
    logits, tokens, mask = response_logits(model, prefixes, responses, 0)
    reference = sliced_full_logits(model, side, prefixes, responses)
    assert tokens.tolist() == [r + [0] * (5 - len(r)) for r in responses]
    assert mask.tolist() == [[1.0] * len(r) + [0.0] * (5 - len(r)) for r in responses]
    keep = mask.bool()
    torch.testing.assert_close(logits[keep], reference[keep], rtol=1e-5, atol=1e-5)

    masked_loss(logits, tokens, mask).backward()
    ours = grads(model)
    model.zero_grad(set_to_none=True)
    masked_loss(sliced_full_logits(model, side, prefixes, responses), tokens, mask).backward()
    theirs = grads(model)
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-6, msg=name)


def test_only_the_response_positions_go_through_the_output_projection():
    model = tiny_model()
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    assert projects_plainly(model)
    seen.clear()
    logits, _, _ = response_logits(model, PREFIXES, RESPONSES, 0)
    # one projection of B × T rows (T the longest response), not of T + 1 columns, not of the prefixes
    assert seen == [(3, 5, model.config.hidden_size)] and logits.shape[:2] == (3, 5)


def test_a_model_with_scaled_logits_keeps_the_models_own_forward():
    model = ScaledHead(tiny_model())
    assert not projects_plainly(model)
    full = sliced_full_logits(model, "left")
    logits, _, mask = response_logits(model, PREFIXES, RESPONSES, 0)
    torch.testing.assert_close(logits[mask.bool()], full[mask.bool()], rtol=1e-5, atol=1e-5)
