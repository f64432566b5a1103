"""The ``rollout`` section: how rollouts are sampled, in this process or by a server."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, field_validator, model_validator

from distil_core.config.base import BIG, MAX_ROLLOUTS_PER_STEP
from distil_core.config.base import Section as _Section

GREEDY_BELOW = 1e-5
"""A temperature under this is greedy decoding (temperature 0), for local generation and the
server alike, as in vLLM: dividing the logits by it would overflow them to infinity, and the
distribution to NaN."""


class RolloutServer(_Section):
    """An OpenAI-compatible inference server that samples the rollouts (``rollout.backend: server``).

    See :mod:`distil_core.rollouts.server` and the guide's "Rollouts from an inference server".
    """

    base_url: str = Field(description="The server's address, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted).")
    model: str = Field(description="The served name of the policy's base model (what GET /v1/models lists).")
    api_key: Optional[str] = Field(default=None, description="Sent as 'Authorization: Bearer KEY'.")
    api_key_env: Optional[str] = Field(default=None, description="Name of an environment variable holding the key.")
    timeout_s: float = Field(default=300.0, gt=0.0, description="Per HTTP request, the whole answer (connecting and reading all of it); retries get their own.")
    max_concurrency: int = Field(default=16, ge=1, le=65536, description="Completion requests in flight at once (one per prompt).")
    retries: int = Field(default=2, ge=0, le=1000, description="Retries of a request the server refused for load (429, 503) or dropped.")
    sync: Literal["auto", "lora", "weights", "none"] = Field(
        default="auto",
        description="How the server gets the trained policy: 'lora' (adapters, hot-loaded), 'weights' (full "
        "safetensors, reloaded), 'none' (never; rollouts stay on the server's weights). 'auto': lora when "
        "model.lora is set, else weights.",
    )
    sync_every: int = Field(default=1, ge=1, le=BIG, description="Sync after every k training steps (and before evaluations and at the end).")
    sync_dir: Optional[str] = Field(
        default=None,
        description="Where adapters/weights are written for the server to read; it must see the same path. "
        "Default: <train.output_dir>/sync, else a temporary directory.",
    )
    adapter_name: str = Field(default="distil-policy", description="The lora_name the adapters are served under.")
    lora_inplace: bool = Field(
        default=True,
        description="Replace the adapter under one name (load_inplace: true, recent vLLM). false: a new name "
        "per version, the previous one unloaded (any vLLM with runtime LoRA updating).",
    )
    initial_sync: bool = Field(
        default=True,
        description="Push the policy before the first rollouts. false: trust that the server already serves "
        "the policy's starting weights (saves one full-weight write).",
    )
    reset_prefix_cache: bool = Field(
        default=True,
        description="POST /reset_prefix_cache after each sync, so no KV computed by older weights is reused.",
    )

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://, e.g. http://127.0.0.1:8000")
        return value


METHOD_SPLITS: dict[str, tuple[int, int]] = {
    "grpo": (32, 4), "distil": (64, 2), "distil_local": (64, 2), "jsd": (64, 2), "reverse_kl": (64, 2)}
"""Each method's problems × samples per step where a run config sets neither ``rollout`` key: 128
rollouts, split as the bench's validation split of five suites chose for each (docs/results/split).
GRPO's advantage compares samples of one problem and needs a group of them; a distillation loss
gets its signal from the expert on every rollout, so the same rollouts teach it more spread over
more problems. A config that sets one key keeps the other at its field default (16 or 8), as
before there were method splits."""

SPLIT_KEYS = ("problems_per_step", "samples_per_problem")
"""The ``rollout`` keys that split a step's rollouts into problems × samples per problem."""


def with_method_split(data: Any, default_method: str) -> tuple[Any, tuple[str, ...]]:
    """A run config's raw ``data`` with the method's :data:`METHOD_SPLITS` filled in where its
    ``rollout`` names neither split key (``default_method`` where it names no method), and the
    keys it filled (none where it left ``data`` as it was). Anything else, an unknown method
    included, is left for validation to judge.

    The filled split is a default that follows the method, not a choice: the run config unmarks
    the filled keys once validated (:func:`validated_with_method_split`), so its rollout section handed to
    a run config of another method gets that method's split. A section given as an object is
    copied, never changed.
    """
    if not isinstance(data, dict):
        return data, ()
    method = data.get("method", default_method)
    split = METHOD_SPLITS.get(method) if isinstance(method, str) else None
    if split is None:
        return data, ()
    chosen = dict(zip(SPLIT_KEYS, split))
    rollout = data.get("rollout", {})
    if isinstance(rollout, BaseModel) and not rollout.model_fields_set & chosen.keys():
        return {**data, "rollout": rollout.model_copy(update=chosen)}, SPLIT_KEYS
    if isinstance(rollout, dict) and not rollout.keys() & chosen.keys():
        return {**data, "rollout": {**rollout, **chosen}}, SPLIT_KEYS
    return data, ()


def validated_with_method_split(data: Any, handler: Any, default_method: str) -> Any:
    """The run config validated (``handler``, pydantic's) from ``data`` with the method's split
    filled in (:func:`with_method_split`), the filled keys then counted as unset again (pydantic's
    ``__pydantic_fields_set__``): they hold the method's split, which nobody chose. Assigning to a
    validated config passes the config itself, which is left as it is."""
    data, filled = with_method_split(data, default_method)
    config = handler(data)
    config.rollout.__pydantic_fields_set__.difference_update(filled)
    return config


class RolloutConfig(_Section):
    problems_per_step: int = Field(
        default=16, ge=1, le=1_000_000,
        description="Problems sampled per step. Neither split key set: the method's own (METHOD_SPLITS).")
    samples_per_problem: int = Field(
        default=8, ge=1, le=65536,
        description="Rollouts per problem. Neither split key set: the method's own (grpo 4, the distillation "
        "methods 2; METHOD_SPLITS).")
    max_new_tokens: int = Field(default=10, ge=1, le=10_000_000)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    backend: Literal["local", "server"] = Field(
        default="local",
        description="'local': HF generate in this process. 'server': an OpenAI-compatible server (rollout.server).",
    )
    server: Optional[RolloutServer] = Field(default=None, description="Needed with backend: server.")
    overlap_grading: bool = Field(
        default=False,
        description="true: step k+1's rollouts are sampled while step k's are graded, by the policy before step "
                    "k's update, so every method trains one step off-policy (importance-corrected as with "
                    "optim.epochs). Pays where grading is slow (sandboxed code); off: every step on-policy.",
    )

    @model_validator(mode="after")
    def _server_named(self) -> "RolloutConfig":
        rows = self.problems_per_step * self.samples_per_problem
        if rows > MAX_ROLLOUTS_PER_STEP:
            raise ValueError(
                f"rollout.problems_per_step × rollout.samples_per_problem = {rows} rollouts per step, more than "
                f"{MAX_ROLLOUTS_PER_STEP}; lower one of them (or split the work over more steps)")
        if self.backend == "server" and self.overlap_grading:
            raise ValueError(
                "rollout.overlap_grading is not available with rollout.backend: server: the server's weights already "
                "lag the trainer's (rollout.server.sync_every), and the overlap's correction reads the trainer's own "
                "policy as the one that sampled; set rollout.overlap_grading: false")
        if self.backend == "server" and self.server is None:
            raise ValueError(
                "backend 'server' needs a rollout.server section with at least base_url and model, e.g. "
                "--set rollout.server='{base_url: http://127.0.0.1:8000, model: tiny}'"
            )
        return self


__all__ = ["METHOD_SPLITS", "SPLIT_KEYS", "RolloutServer", "RolloutConfig", "with_method_split"]
