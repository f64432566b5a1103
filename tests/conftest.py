"""Fixtures the core tests share: a real `distil serve` on 127.0.0.1 over the untrained tiny
model (one per test module), the official openai client pointed at it, and offline trackers."""

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


@pytest.fixture
def offline_trackers(monkeypatch, tmp_path):
    """Nothing a tracker does reaches a network or writes outside tmp_path, whatever the shell set."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for key in ("MLFLOW_TRACKING_URI", "TRACKIO_DIR", "MLFLOW_ALLOW_FILE_STORE", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)  # restored after the test, whatever a tracker set
