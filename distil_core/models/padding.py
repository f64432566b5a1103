"""Token rows into model inputs: padded ids, attention masks, and positions that skip padding."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, *, side: str = "right", device: Any = "cpu"
) -> tuple[Tensor, Tensor]:
    """Pad id lists into ``[B, L]`` ids and a 0/1 attention mask (L ≥ 1), built as Python lists
    and converted once (a tensor write per row costs more than the whole conversion)."""
    width = max(max((len(s) for s in sequences), default=0), 1)
    ids, mask = [], []
    for seq in sequences:
        seq = list(seq)
        gap = width - len(seq)
        if side == "right":
            ids.append(seq + [pad_id] * gap)
            mask.append([1] * len(seq) + [0] * gap)
        else:
            ids.append([pad_id] * gap + seq)
            mask.append([0] * gap + [1] * len(seq))
    shape = (len(ids), width)
    ids_t = torch.tensor(ids, dtype=torch.long).reshape(shape)
    mask_t = torch.tensor(mask, dtype=torch.long).reshape(shape)
    return ids_t.to(device), mask_t.to(device)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip padding, as ``generate`` computes them, for either padding side."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
