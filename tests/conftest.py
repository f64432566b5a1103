"""Fixtures the core tests share: a real `distil serve` on 127.0.0.1 over the untrained tiny
model (one per test module), and the official openai client pointed at it."""

import openai
import pytest

from distil_core.serving import LocalOpenAIServer
from distil_core.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def server():
    with LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny") as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0) as client:
        yield client
