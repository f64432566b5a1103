"""Gradient (activation) checkpointing of the policy: ``model.gradient_checkpointing``.

A decoder layer's activations are dropped after the forward pass and recomputed in the backward
pass, which trades about one more forward pass of time for activation memory that no longer
grows with the number of layers: what lets longer responses or bigger micro-batches fit.

transformers does the work (``activation_checkpointing_enable``, formerly
``gradient_checkpointing_enable``); the non-reentrant ``torch.utils.checkpoint`` is asked for,
which needs no input that requires grad and recomputes under the same autocast and RNG state.
Under LoRA the call reaches the wrapped model through peft; transformers also makes the input
embeddings' output require grad there, so gradients reach the adapters of every checkpointed
layer even though the embeddings are frozen. Checkpointing acts only in training mode: sampling
and the expert's scoring run the model in eval mode and keep their KV cache.
"""

from __future__ import annotations

from typing import Any

from distil_core.errors import ConfigError

KWARGS = {"use_reentrant": False}


def enable_gradient_checkpointing(model: Any) -> None:
    """Turn checkpointing on for ``model`` (an HF model, or a peft model around one)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers ≥ 5
    try:
        if callable(enable):
            enable(activation_checkpointing_kwargs=dict(KWARGS))
        elif callable(getattr(model, "gradient_checkpointing_enable", None)):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(KWARGS))
        else:
            raise ValueError(f"{type(model).__name__} has no gradient_checkpointing_enable")
    except ValueError as exc:
        raise ConfigError(f"model.gradient_checkpointing: {exc}; set it to false for this model") from None


def is_checkpointing(model: Any) -> bool:
    """Whether any layer of ``model`` recomputes its activations in the backward pass."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


__all__ = ["enable_gradient_checkpointing", "is_checkpointing"]
