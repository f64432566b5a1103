"""Puts this folder on sys.path (for tools_testlib), keeps installed plugins out as the core
suite does (tests that need entry points ask for them), and gives every test a fresh
process-wide tool registry."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["DISTIL_NO_ENTRYPOINTS"] = "1"
os.environ.pop("DISTIL_PLUGINS", None)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_tool_registry():
    from distil_tools.registry import reset_registry

    reset_registry()
    yield
    reset_registry()
