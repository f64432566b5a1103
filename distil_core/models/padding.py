"""Token rows into model inputs: padded ids, attention masks, and positions that skip padding."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, *, side: str = "right", device: Any = "cpu"
) -> tuple[Tensor, Tensor]:
    """Pad id lists into ``[B, L]`` ids and a 0/1 attention mask."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), max(width, 1)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, seq in enumerate(sequences):
        if not seq:
            continue
        row = torch.as_tensor(list(seq), dtype=torch.long)
        cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[i, cols] = row
        mask[i, cols] = 1
    return ids.to(device), mask.to(device)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip padding, as ``generate`` computes them, for either padding side."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
