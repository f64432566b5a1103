"""Shared set-up: the suite runs offline and sees only the built-in plugins.

The environment is set when this file is imported, before any test module imports
distil_core, so no installed plugin and no network access can change a result.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DISTIL_NO_ENTRYPOINTS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.pop("DISTIL_PLUGINS", None)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_plugin_host():
    """Each test starts from a process-wide plugin host built for it (the allow-list and
    entry-point settings it sees are its own)."""
    from distil_core.plugin_host import reset_host

    reset_host()
    yield
    reset_host()
