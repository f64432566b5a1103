"""What every config section shares: strict validation and the bounds of counts."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_ROLLOUTS_PER_STEP = 1 << 20
"""Rollouts one step may sample (problems_per_step × samples_per_problem): each is a sequence
held in memory with its logits, so past this the run would fail allocating, not train."""

BIG = 1_000_000_000
"""The upper bound of counts of steps and problems: far above any real run, low enough that a
typo (an extra zero or three) is an error naming the key rather than an allocation that fails
deep inside torch."""


def not_a_boolean(value: Any) -> Any:
    """pydantic reads ``true`` as 1 for an integer; a boolean seed is a mistake, not seed 1."""
    if isinstance(value, bool):
        raise ValueError(f"is {str(value).lower()}; give an integer")
    return value


Seed = Annotated[int, BeforeValidator(not_a_boolean),
                 Field(ge=-(2**63), le=2**63 - 1, description="A random seed, a signed 64-bit integer.")]
"""A seed: a signed 64-bit integer, as torch's generators and the run's keyed sampling take it (a
larger one failed deep inside ``torch.manual_seed``), and never a boolean."""


class Section(BaseModel):
    # NaN and ±inf are refused in every float (a learning rate of .inf trains nothing but NaN)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


__all__ = ["Section", "BIG", "MAX_ROLLOUTS_PER_STEP", "Seed"]
