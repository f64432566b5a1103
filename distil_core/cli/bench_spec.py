"""What a ``distil bench`` spec holds, read and checked: its suites, methods, seeds, the
overrides every run shares and the ``--quick`` changes (the module docstring of
:mod:`distil_core.cli.bench` says what each means)."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from distil_core.config import Method, Seed, format_validation_error, read_yaml, yaml_problem
from distil_core.config import SPLIT_KEYS as ROLLOUT_SPLIT_KEYS
from distil_core.errors import ConfigError

__all__ = ["DEFAULT_SPEC", "LABEL", "SHARED_KEYS", "SPLIT_KEYS", "BenchSpec", "SuiteSpec", "MethodSpec", "QuickSpec", "load_spec",
           "spec_overrides", "dotted"]

DEFAULT_SPEC = os.path.join(os.path.dirname(__file__), "bench.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuiteSpec(_Strict):
    config: Optional[str] = Field(default=None, description="A run config file, relative to the spec file.")
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides, e.g. rollout.max_new_tokens: 8")
    description: str = ""
    base: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="The range, as fractions, each named metric of the starting model must fall in for "
        "the suite to be what it says (a sparse suite: pass@1 in [0, 0.1]); the report flags a mean "
        "over seeds outside it.",
    )

    @field_validator("base")
    @classmethod
    def _ranges(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for metric, (low, high) in value.items():
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"{metric}: [{low}, {high}] is not a range of fractions (0 <= low <= high <= 1)")
        return value


class MethodSpec(_Strict):
    method: Method
    set: dict[str, Any] = Field(default_factory=dict)
    samples_per_problem: Optional[int] = Field(
        default=None, ge=1,
        description="The samples this method draws per problem: each suite's rollouts per step are then spent on "
        "that many fewer problems (16 × 8 → 64 × 2 for 2), so the budget stays the suite's. A --set of either "
        "rollout split key for every run replaces it.",
    )


class QuickSpec(_Strict):
    seeds: Optional[list[Seed]] = None
    set: dict[str, Any] = Field(default_factory=dict)


class BenchSpec(_Strict):
    suites: dict[str, SuiteSpec]
    methods: dict[str, MethodSpec]
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    common: dict[str, Any] = Field(default_factory=dict)
    quick: QuickSpec = Field(default_factory=QuickSpec)
    plot_metric: str = "pass@1"


def load_spec(path: Optional[str] = None) -> tuple[BenchSpec, str]:
    """The spec at ``path`` (default: the embedded one) and the directory its paths are relative to."""
    path = path or DEFAULT_SPEC
    if not os.path.exists(path):
        raise ConfigError(f"Bench spec {path!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as fh:
            data = read_yaml(fh.read(), path)  # the same alias budget as a run config
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: the bench spec is not valid YAML{yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the bench spec ({' '.join(str(exc).split())}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with suites, methods, seeds, common.")
    try:
        spec = BenchSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path)) from None
    if not spec.suites or not spec.methods:
        raise ConfigError(f"{path}: name at least one suite and one method.")
    for kind, names in (("suites", spec.suites), ("methods", spec.methods)):
        odd = next((name for name in names if not LABEL.fullmatch(name)), None)
        if odd is not None:
            raise ConfigError(f"{path}: {kind}: {odd!r} is not a plain name; a suite or method label becomes a "
                              "directory, a file name, a markdown table cell and a plot legend, so use letters, "
                              "digits and _ . + - only (starting with a letter or digit).")
    return spec, os.path.dirname(os.path.abspath(path))


LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
"""What a suite or method label may be: it names ``OUTPUT_DIR/<suite>/<method>/`` and
``bench-<suite>.png`` (no ``/``, no ``..``), a cell of bench.md (no ``|``, no HTML, no line
break) and a legend entry (no ``$``, which matplotlib would read as math)."""


def spec_overrides(values: dict[str, Any]) -> list[str]:
    """A spec's ``set`` mapping as ``--set`` items (values written as JSON, which YAML reads back)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


SPLIT_KEYS = tuple(f"rollout.{key}" for key in ROLLOUT_SPLIT_KEYS)
"""How a step's rollouts split into problems × samples: a method's own (``samples_per_problem``)."""

SHARED_KEYS = ("task", "verifier", "model.name", "model.tiny", "system_prompt", "rollout.temperature", "rollout.top_p",
               "eval")
"""What every method of a suite must share besides its rollout budget (:meth:`Bench.measured_alike`)."""


def dotted(data: dict[str, Any], key: str) -> Any:
    """The value at dotted ``key`` of a config's dump."""
    for part in key.split("."):
        data = data[part]
    return data
