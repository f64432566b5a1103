"""model.autocast: float32 weights, bfloat16 forward passes, float32 losses; model.dtype checks."""

import json
import math

import pytest
import torch

from distil_core.config import load_config
from distil_core.errors import ConfigError
from distil_core.models.forward import check_projection, response_hidden, response_logits
from distil_core.models.precision import autocast_of, check_dtype, configure_autocast
from distil_core.plugin_host import PluginHost
from distil_core.rollouts.local import Generator, SamplingParams
from distil_core.testing import FAST_RUN, tiny_model, tiny_tokenizer
from distil_core.training.trainer import Trainer

CPU = torch.device("cpu")


def _settings(**kw):
    return load_config(None, [f"model.{k}={v}" for k, v in kw.items()]).model


class MatmulDtypes:
    """The dtypes a linear layer's outputs had, recorded by a forward hook."""

    def __init__(self, layer):
        self.seen, self.grad = [], []
        layer.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.seen.append(output.dtype)
        self.grad.append(torch.is_grad_enabled())


def test_autocast_runs_the_matmuls_in_bfloat16_and_returns_float32():
    model = tiny_model()
    probe = MatmulDtypes(model.model.layers[0].mlp.down_proj)
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12]]
    plain, _, _ = response_logits(model, prompts, responses, 0)  # (checks once that the head is a plain projection)
    assert set(probe.seen) == {torch.float32}
    probe.seen.clear()
    assert configure_autocast(model, _settings(autocast="bfloat16"), CPU) is not None
    logits, _, _ = response_logits(model, prompts, responses, 0)
    hidden, _, _ = response_hidden(model, prompts, responses, 0)
    assert probe.seen == [torch.bfloat16, torch.bfloat16]
    assert logits.dtype == hidden.dtype == torch.float32  # what the losses read
    assert next(model.parameters()).dtype == torch.float32  # the master weights
    assert 0 < (logits - plain).abs().max() < 0.1  # bfloat16 rounding, nothing more
    check_projection(model, 0)  # a structural check, made at full precision


def test_sampling_runs_under_the_policys_autocast():
    model, tok = tiny_model(), tiny_tokenizer()
    configure_autocast(model, _settings(autocast="bfloat16"), CPU)
    probe = MatmulDtypes(model.model.layers[0].mlp.down_proj)
    rollouts = Generator(model, tok, SamplingParams(max_new_tokens=3)).sample([[5, 6, 7]], ["p"], 2, key=1)
    assert len(rollouts) == 2 and probe.seen and set(probe.seen) == {torch.bfloat16}


def test_precision_options_are_checked():
    assert load_config(None, []).model.autocast is None
    assert load_config(None, ["model.autocast=off"]).model.autocast is None  # YAML's off is false
    with pytest.raises(ConfigError, match="float16 autocast needs loss scaling"):
        load_config(None, ["model.autocast=float16"])
    with pytest.raises(ConfigError, match="set model.dtype: float32"):
        load_config(None, ["model.autocast=bfloat16", "model.dtype=bfloat16"])
    with pytest.raises(ConfigError, match="model.dtype: float16 cannot train on cpu"):
        check_dtype(_settings(dtype="float16"), CPU)
    check_dtype(_settings(dtype="bfloat16"), CPU)  # bfloat16 weights do train on a CPU
    with pytest.raises(ConfigError, match="no autocast for device 'meta'"):
        configure_autocast(tiny_model(), _settings(autocast="bfloat16"), torch.device("meta"))


def _trainer(run_dir, *overrides):
    config = load_config(None, FAST_RUN + list(overrides))
    return Trainer(config, run_dir=str(run_dir), host=PluginHost(load_entrypoints=False), echo=lambda *_: None)


@pytest.mark.slow
def test_float16_weights_on_cpu_stop_before_training(tmp_path):
    with pytest.raises(ConfigError, match="model.dtype: float16 cannot train on cpu"):
        _trainer(tmp_path / "run", "model.dtype=float16", "model.device=cpu")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["loss.chunk_size=3"], ["model.lora=true"]])
def test_a_run_under_autocast_trains_in_bfloat16_with_finite_losses(tmp_path, extra):
    trainer = _trainer(tmp_path, "model.autocast=bfloat16", "train.steps=3", *extra)
    assert autocast_of(trainer.model) is not None
    layer = trainer.model.get_decoder().layers[0].mlp.down_proj
    probe = MatmulDtypes(getattr(layer, "base_layer", layer))
    start = [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) and not r["skipped_nonfinite"] for r in rows)
    # the update's forward passes (with grad) and sampling/evaluation (without) all ran in bfloat16
    assert set(probe.seen) == {torch.bfloat16} and {True, False} <= set(probe.grad)
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trained)
    assert any(not torch.equal(a, b) for a, b in zip(start, trained))
