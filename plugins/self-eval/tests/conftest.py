"""Puts this folder on sys.path (for self_eval_testlib), keeps the suite offline, and keeps
installed plugins out, as the core suite does; tests that need the entry point ask for it."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# the core suite's helpers (tiny model, FAST_RUN); pytest's pythonpath has it when run from the root
sys.path.append(os.path.normpath(os.path.join(HERE, "..", "..", "..", "tests")))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["DISTIL_NO_ENTRYPOINTS"] = "1"
os.environ.pop("DISTIL_PLUGINS", None)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_plugin_host():
    """The process-wide host is rebuilt for each test, under the environment that test sets."""
    from distil_core.plugin_host import reset_host

    reset_host()
    yield
    reset_host()
