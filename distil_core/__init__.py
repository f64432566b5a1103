"""DistIL toolkit: train language models from rich feedback with Distributional DAgger.

The package root is the plugin contract — the data types, the protocols a component
implements, the hook marker, the errors a plugin raises, and the plugin host — and imports
neither torch nor transformers, so a plugin that only grades text or gives feedback stays
light. Everything a plugin needs is importable from here; the subpackages (``training``,
``losses``, ``rollouts``, ``models``, ``serving``, ``cli``) export their own public names in
their ``__all__``, and :mod:`distil_core.testing` holds the builders and pytest fixtures for
plugin tests.
"""

from distil_core.version import __version__

from distil_core.context import ContextTemplate, prompt_ids
from distil_core.errors import ConfigError, DistilError, PluginError, did_you_mean, nearest
from distil_core.templates import check_format_template
from distil_core.redaction import SECRET_NAME, redacted, redacted_url, url_secrets
from distil_core.text import SURROGATE, as_text
from distil_core.hookspecs import hookimpl
from distil_core.plugin_host import PluginHost, Registration, Registry, get_host
from distil_core.protocols import (
    AnswerTextTask,
    BatchFeedbackSource,
    BatchVerifier,
    CapabilityExpert,
    ClosableVerifier,
    Expert,
    FeedbackSource,
    HiddenStateExpert,
    Logger,
    Register,
    Runtime,
    StatefulExpert,
    FrozenCopyExpert,
    SyncedGenerator,
    Task,
    UpdatingExpert,
    Verifier,
    WrongAnswerTask,
    resolve,
    resolve_all,
)
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
    # the data
    "ExpertCapability",
    "ExpertQuery",
    "ExpertSignal",
    "Feedback",
    "Problem",
    "Rollout",
    "Verdict",
    # the components and their optional methods
    "Task",
    "AnswerTextTask",
    "WrongAnswerTask",
    "Verifier",
    "ClosableVerifier",
    "BatchVerifier",
    "FeedbackSource",
    "BatchFeedbackSource",
    "Expert",
    "CapabilityExpert",
    "HiddenStateExpert",
    "UpdatingExpert",
    "StatefulExpert",
    "FrozenCopyExpert",
    "SyncedGenerator",
    "Logger",
    "Runtime",
    # registering
    "hookimpl",
    "Register",
    "Registry",
    "Registration",
    "PluginHost",
    "get_host",
    # errors
    "DistilError",
    "ConfigError",
    "PluginError",
    "did_you_mean",
    "nearest",
    # helpers
    "resolve",
    "resolve_all",
    "prompt_ids",
    "ContextTemplate",
    "check_format_template",
    "SECRET_NAME",
    "redacted",
    "redacted_url",
    "url_secrets",
    "SURROGATE",
    "as_text",
]
