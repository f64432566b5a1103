"""Puts this folder on sys.path (for api_expert_testlib), keeps the suite offline and installed
plugins out, and serves a tiny model with real log-probs on 127.0.0.1 for the whole session."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["DISTIL_NO_ENTRYPOINTS"] = "1"
os.environ.pop("DISTIL_PLUGINS", None)
for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):  # never reach a real provider
    os.environ.pop(key, None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def served():
    """A LocalOpenAIServer serving the tiny model as 'tiny'."""
    from distil_core.serving.http import LocalOpenAIServer

    from api_expert_testlib import tiny_model, tiny_tokenizer

    server = LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(served):
    """The session's server with an empty fault schedule and fresh counters."""
    served.clear_faults()
    served.reset_stats()
    yield served
    served.clear_faults()
