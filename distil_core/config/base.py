"""What every config section shares: strict validation and the bounds of counts."""

from __future__ import annotations

from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

MAX_ROLLOUTS_PER_STEP = 1 << 20
"""Rollouts one step may sample (problems_per_step × samples_per_problem): each is a sequence
held in memory with its logits, so past this the run would fail allocating, not train."""

BIG = 1_000_000_000
"""The upper bound of counts of steps and problems: far above any real run, low enough that a
typo (an extra zero or three) is an error naming the key rather than an allocation that fails
deep inside torch."""


Seed = Annotated[int, Field(ge=0, le=2**63 - 1, description="A random seed: torch takes 0 to 2**63 - 1.")]
"""A seed as torch's generators take it (a larger one fails deep inside ``torch.manual_seed``)."""


class Section(BaseModel):
    # NaN and ±inf are refused in every float (a learning rate of .inf trains nothing but NaN)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads ``true`` as 1 for a number: ``seed: yes`` or ``train.steps: true`` would
        run silently with 1. A boolean where only a number fits is refused."""
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            if numbers_only(cls.model_fields[info.field_name].annotation):
                raise ValueError(f"is {str(value).lower()}; give a number")
        return value


def numbers_only(annotation: Any) -> bool:
    """Whether a field's type takes numbers (int or float, maybe optional) and no boolean."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) is Union:
        kinds = [a for a in get_args(annotation) if a is not type(None)]
        return bool(kinds) and all(numbers_only(a) for a in kinds)
    return False


__all__ = ["Section", "BIG", "MAX_ROLLOUTS_PER_STEP", "Seed"]
