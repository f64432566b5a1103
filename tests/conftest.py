"""Fixtures the core tests share: a real `distil serve` on 127.0.0.1 over the untrained tiny
model (one per test module), the official openai client pointed at it, and offline trackers."""

import openai
import pytest

from distil_core.config import load_config
from distil_core.serving import LocalOpenAIServer
from distil_core.testing import FAST_RUN, tiny_model, tiny_tokenizer, use_cache


@pytest.fixture(scope="module")
def server():
    with LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny") as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base_cache_dir):
    """A finished two-step run (``train.steps=2``, a checkpoint at each step), made once per test
    module, for tests that resume or damage a copy of it."""
    from distil_core.training.trainer import Trainer

    run = tmp_path_factory.mktemp("trained") / "run"
    with use_cache(tiny_base_cache_dir):
        Trainer(load_config(None, FAST_RUN + ["train.steps=2", "train.save_every=1"]), run_dir=str(run),
                echo=lambda *_: None).fit()
    return run


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
