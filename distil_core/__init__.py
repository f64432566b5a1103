"""DistIL toolkit: train language models from rich feedback with Distributional DAgger.

The package root holds what a plugin author needs — the types, the protocols and the hook
marker — and imports neither torch nor transformers.
"""

__version__ = "0.1.0"

from distil_core.hookspecs import hookimpl
from distil_core.protocols import Expert, FeedbackSource, Task, Verifier
from distil_core.types import (
    ExpertCapability,
    ExpertQuery,
    ExpertSignal,
    Feedback,
    Problem,
    Rollout,
    Verdict,
)

__all__ = [
    "__version__",
    "hookimpl",
    "Expert",
    "FeedbackSource",
    "Task",
    "Verifier",
    "ExpertCapability",
    "ExpertQuery",
    "ExpertSignal",
    "Feedback",
    "Problem",
    "Rollout",
    "Verdict",
]
