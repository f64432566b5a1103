"""model.gradient_checkpointing: layers recompute in the backward pass, the gradients stay the same."""

import pytest
import torch

from distil_core.config import load_config
from distil_core.models.activation_checkpointing import enable_gradient_checkpointing, is_checkpointing
from distil_core.models.forward import response_logits
from distil_core.models import shared_prefix
from distil_core.models.lora import attach_lora
from distil_core.plugin_host import PluginHost
from distil_core.testing import FAST_RUN, tiny_model
from distil_core.training.trainer import Trainer


class Calls:
    """Counts the calls of a module (a recomputation in the backward pass is one more). transformers
    checkpoints a decoder layer's ``forward``, so the hooks that see the recomputation are its
    children's; a pre-hook, since torch stops recomputing once the last saved tensor is back."""

    def __init__(self, module):
        self.count = 0
        module.register_forward_pre_hook(self)

    def __call__(self, *_):
        self.count += 1


def _gradients(checkpointing, lora):
    """(grads by name, forward calls of layer 0 before / after backward) for one loss on a tiny model."""
    model = tiny_model(hidden_size=64)
    if lora:
        torch.manual_seed(0)  # peft draws lora_A from the global generator
        model = attach_lora(model, load_config(None, ["model.lora=true"]).model.lora)
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    with torch.no_grad():  # the first call settles how response_logits projects (it may run the model to check)
        response_logits(model, [[5, 6, 7]], [[10]], 0)
    calls = Calls(model.get_decoder().layers[0].mlp)
    logits, tokens, mask = response_logits(model, [[5, 6, 7], [8, 9]], [[10, 11, 12], [13]], 0)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")
    loss = (nll * mask).sum() / mask.sum()
    before = calls.count
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, (before, calls.count), is_checkpointing(model)


@pytest.mark.parametrize("lora", [False, True])
def test_checkpointed_layers_recompute_and_give_the_same_gradients(lora):
    loss, grads, calls, on = _gradients(False, lora)
    loss_ckpt, grads_ckpt, calls_ckpt, on_ckpt = _gradients(True, lora)
    assert (on, on_ckpt) == (False, True)
    assert calls == (1, 1) and calls_ckpt == (1, 2)  # the layer ran again in the backward pass
    assert torch.equal(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys() and all(g is not None for g in grads_ckpt.values())
    if lora:
        assert all(".lora_" in name for name in grads)  # adapters only, reached through frozen layers
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_a_training_step_is_the_same_with_checkpointing(tmp_path, monkeypatch):
    # one pass per update either way (checkpointing turns the shared-prompt pass off; here it is off
    # in both runs), so that the counts below differ by the recomputation alone
    monkeypatch.setattr(shared_prefix, "MIN_SAVING", 2.0)
    rows, weights, recomputed = [], [], []
    for on in (False, True):
        config = load_config(None, FAST_RUN + [f"model.gradient_checkpointing={str(on).lower()}", "optim.grad_clip=0"])
        trainer = Trainer(config, run_dir=str(tmp_path / str(on)), host=PluginHost(load_entrypoints=False),
                          echo=lambda *_: None)
        assert is_checkpointing(trainer.model) is on
        calls = Calls(trainer.model.get_decoder().layers[0].mlp)
        rows.append(trainer.train_step(1))
        weights.append([p.detach().clone() for p in trainer.model.parameters()])
        recomputed.append(calls.count)
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-6)
    assert rows[0]["grad_norm"] == pytest.approx(rows[1]["grad_norm"], rel=1e-5)
    assert recomputed[1] > recomputed[0]  # generation is unchanged (eval mode); the update recomputed
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
