"""Run configuration: the sections of a run (``sections``, with ``rollout_sections`` and the
shared ``base``) and how a YAML file and
``--set`` overrides become one validated :class:`RunConfig` (``loading``); where two configs differ
(``diff``), what a resumed run may change (``resume``), and how a YAML document is read
safely (``yaml_text``).

Part of the contract layer: imports only ``types``, ``errors``, ``context``, ``redaction`` and pydantic/yaml.
"""

from distil_core.config.base import Seed
from distil_core.config.diff import ABSENT, differences
from distil_core.config.loading import (
    apply_override,
    check_keys,
    format_validation_error,
    load_config,
    read_yaml,
    run_dir_config,
    saved_config,
)
from distil_core.config.yaml_text import yaml_problem
from distil_core.config.resume import (RESUMABLE, WATCHING, as_trained, check_resume_config, recorded_changes,
                                       result_changes, resume_changes, trained_record)
from distil_core.config.rollout_sections import METHOD_SPLITS, SPLIT_KEYS, RolloutConfig, RolloutServer
from distil_core.config.sections import (
    EXPERT_TEMPERATURES,
    Component,
    EvalConfig,
    LoraSettings,
    LossConfig,
    Method,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TinyBase,
    TrainConfig,
    method_expert_temperature,
)

__all__ = [
    "RunConfig", "load_config", "read_yaml", "run_dir_config", "saved_config", "apply_override", "check_keys",
    "format_validation_error",
    "RESUMABLE", "WATCHING", "as_trained", "check_resume_config", "recorded_changes", "resume_changes", "result_changes",
    "trained_record", "ABSENT", "differences", "yaml_problem",
    "Component", "EvalConfig", "LoraSettings", "LossConfig", "Method", "ModelConfig",
    "OptimConfig", "RolloutConfig", "RolloutServer", "Seed", "TinyBase", "TrainConfig",
    "EXPERT_TEMPERATURES", "METHOD_SPLITS", "SPLIT_KEYS", "method_expert_temperature",
]
