"""Mixed precision for the policy: float32 master weights, forward passes under bfloat16 autocast.

Two ways to use less memory and time per weight exist, and ``model.dtype`` / ``model.autocast``
keep them apart:

- ``model.dtype: bfloat16`` stores the weights (and AdamW's moments with them) in bfloat16:
  half the memory, but an update smaller than a weight's last bit (about 1/256 of it) is lost,
  which at usual learning rates is most updates of a long run.
- ``model.autocast: bfloat16`` keeps float32 weights and optimizer state, and runs the forward
  passes under ``torch.autocast``: matmuls in bfloat16 (the time and activation memory), the
  update in float32. bfloat16 has float32's exponent range, so no loss scaling is needed (which
  is why float16 autocast is not offered: it would need a gradient scaler).

The setting travels with the model (an attribute, so a deep copy such as the frozen ``self``
expert keeps it), and the places that run the policy's forward passes —
:func:`distil_core.models.forward.response_logits` / ``response_hidden`` (training, scoring)
and the local generator (rollouts, evaluation) — enter :func:`policy_autocast`. Logits and
hidden states leave it in float32, so every loss is computed in float32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch

from distil_core.errors import ConfigError

ATTRIBUTE = "distil_autocast"
DTYPES = {"bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Autocast:
    """What :func:`policy_autocast` enters: ``torch.autocast(device_type, dtype)``."""

    device_type: str
    dtype: torch.dtype


def check_dtype(settings: Any, device: torch.device) -> None:
    """Refuse weights in a dtype the device cannot train in, before anything runs."""
    if settings.dtype == "float16" and device.type == "cpu":
        raise ConfigError(
            "model.dtype: float16 cannot train on cpu (half-precision weights overflow in sampling and "
            "lose most updates); use float32, with model.autocast: bfloat16 for mixed precision, or a CUDA "
            "device (model.device)")


def configure_autocast(model: Any, settings: Any, device: torch.device) -> Optional[Autocast]:
    """Attach ``model.autocast`` (the ``model`` config section) to ``model`` for ``device``;
    a device without bfloat16 autocast is a ConfigError that names it."""
    check_dtype(settings, device)
    if settings.autocast is None:
        return None
    dtype = DTYPES[settings.autocast]
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"model.autocast: {settings.autocast}: torch has no autocast for device "
                          f"{device.type!r}; set model.autocast: null")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"model.autocast: {settings.autocast}: this GPU ({torch.cuda.get_device_name(device)}) "
                          "has no bfloat16; set model.autocast: null")
    mode = Autocast(device.type, dtype)
    setattr(model, ATTRIBUTE, mode)
    return mode


def autocast_of(model: Any) -> Optional[Autocast]:
    """The autocast ``model`` runs its forward passes under, if any."""
    return getattr(model, ATTRIBUTE, None)


@contextlib.contextmanager
def policy_autocast(model: Any) -> Iterator[Optional[Autocast]]:
    """The block under ``model``'s autocast (nothing at all when it has none)."""
    mode = autocast_of(model)
    if mode is None:
        yield None
        return
    with torch.autocast(mode.device_type, dtype=mode.dtype):
        yield mode


@contextlib.contextmanager
def full_precision(model: Any) -> Iterator[None]:
    """The block with ``model``'s autocast off (checks that compare results to float32 rounding)."""
    mode = autocast_of(model)
    if mode is None:
        yield
        return
    setattr(model, ATTRIBUTE, None)
    try:
        yield
    finally:
        setattr(model, ATTRIBUTE, mode)


def to_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if autocast left it in a half-precision dtype (float64 stays)."""
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor


__all__ = ["ATTRIBUTE", "Autocast", "autocast_of", "check_dtype", "configure_autocast", "full_precision",
           "policy_autocast", "to_float32"]
