"""distil-api-expert's tests, isolated by distil_core.testing and never reaching a real provider;
api_expert_testlib sits beside this file. Serves a tiny model with real log-probs on 127.0.0.1."""
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # noqa: E401,E702
from distil_core.testing import isolate; isolate(unset=["OPENAI_API_KEY", "OPENAI_BASE_URL"])  # noqa: E402,E702

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
