"""The ``api`` expert's options, checked when the expert is built.

A value out of range or of the wrong type is a ConfigError naming each option at fault, before
anything is sent and before training starts, rather than a failure inside a scoring call. A
secret's value is never shown in it.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from distil_core import ConfigError

Access = Literal["auto", "prompt_scoring", "topk", "text"]


class ApiExpertOptions(BaseModel):
    """The options, validated (their defaults live in the signature of
    :class:`~distil_api_expert.expert.ApiExpert`). Numbers must be finite: an infinite cap or
    price would only fail later, inside a scoring call."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1)
    api_base: Optional[str]
    api_key: Optional[str]
    api_key_env: str
    client: Literal["openai", "litellm"]
    access: Access
    k: int = Field(ge=1, le=20)
    max_concurrency: int = Field(ge=1)
    max_retries: int = Field(ge=0)
    timeout_s: float = Field(gt=0)
    max_answer_mb: float = Field(gt=0)
    backoff_s: float = Field(ge=0)
    backoff_max_s: float = Field(ge=0)
    cache_dir: Optional[str]
    price_prompt_per_1k: Optional[float] = Field(ge=0)
    price_completion_per_1k: Optional[float] = Field(ge=0)
    temperature: float = Field(ge=0)
    max_tokens: Optional[int] = Field(ge=1)
    seed: Optional[StrictInt]
    text_endpoint: Literal["chat", "completions"]
    misaligned: Literal["text", "skip"]
    probe: bool
    litellm_kwargs: Optional[dict[str, Any]]


def validated_options(values: dict[str, Any]) -> ApiExpertOptions:
    """``values`` (the expert's arguments, by name) as options; ConfigError naming every one that is wrong."""
    try:
        return ApiExpertOptions(**values)
    except ValidationError as exc:
        raise ConfigError(f"expert 'api': invalid options: {_problems(exc)}.") from None


def _problems(exc: ValidationError) -> str:
    """The validation errors, each naming its option; the value given is shown except for
    secrets (a key given as a number is still a key)."""
    out = []
    for error in exc.errors():
        where = ".".join(map(str, error["loc"]))
        secret = any(name in ("api_key", "litellm_kwargs") for name in map(str, error["loc"]))
        given = error.get("input")
        shown = f"a value of type {type(given).__name__}, not shown" if secret else repr(given)
        out.append(f"{where}: {error['msg']} (got {shown})")
    return "; ".join(out)
