"""Experiment trackers (train.report_to): each built-in writes a 3-step run that its own
library's reader gives back equal to metrics.jsonl and eval.jsonl; errors name the fix."""

import json
import sys

import pytest

from distil_core.config import load_config
from distil_core.errors import ConfigError
from distil_core.testing import FAST_RUN
from distil_core.training.trainer import Trainer

from tracker_readers import mlflow_run, tensorboard_run, trackio_run, wandb_run

STEPS = 3
TRACKERS = ["tensorboard", "trackio", "wandb", "mlflow"]
READERS = {"tensorboard": tensorboard_run, "trackio": trackio_run, "wandb": wandb_run, "mlflow": mlflow_run}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Nothing reaches a network and nothing outside tmp_path is written, whatever the shell set."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for key in ("MLFLOW_TRACKING_URI", "TRACKIO_DIR", "MLFLOW_ALLOW_FILE_STORE", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)  # restored after the test, whatever a tracker set


def train(run_dir, *overrides, echo=lambda *_: None):
    config = load_config(None, FAST_RUN + [f"train.steps={STEPS}", "train.eval_every=2", "train.save_every=0",
                                           "train.log_rollout_table_every=2", *overrides])
    Trainer(config, run_dir=str(run_dir), echo=echo).fit()
    return config


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("tracker", TRACKERS)
def test_a_tracker_holds_what_the_jsonl_logs_hold(tmp_path, tracker):
    config = train(tmp_path, f"train.report_to=[{tracker}]")
    metrics, evals = jsonl(tmp_path / "metrics.jsonl"), jsonl(tmp_path / "eval.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3] and [e["label"] for e in evals] == ["before", "step 2", "after"]

    run = READERS[tracker](tmp_path)  # read back with the tracker's own reader

    exact = tracker != "tensorboard"  # TensorBoard stores scalars as float32
    close = (lambda v: pytest.approx(v)) if exact else (lambda v: pytest.approx(v, rel=1e-6, abs=1e-7))
    for key in ("loss", "reward", "pass_rate", "grad_norm", "response_tokens", "lr", "signal_rollouts"):
        assert run.series(key) == {r["step"]: close(r[key]) for r in metrics}, key
    assert run.series("eval/pass@1") == {e["step"]: close(e["pass@1"]) for e in evals}
    assert run.series("eval/maj@4") == {e["step"]: close(e["maj@4"]) for e in evals}
    assert not run.series("expert_access") and not run.series("step")  # text and the step itself are not scalars

    assert run.config["optim.lr"] == pytest.approx(config.optim.lr)
    assert run.config["train.report_to"] == str([tracker]) if tracker in ("tensorboard", "mlflow") else True
    assert run.config["task.name"] == "digits" and run.config["rollout.problems_per_step"] == 4

    table = run.table(2)
    step2 = {r["response_text"] for r in jsonl(tmp_path / "rollouts.jsonl") if r["step"] == 2}
    assert table and all(row["response"] in step2 for row in table), table
    assert {"prompt", "reward", "passed", "feedback", "expert_context"} <= set(table[0])
    assert any(row["expert_context"] for row in table)  # distil asks the self expert
    assert run.table(1) is None and run.table(3) is None  # every 2nd step only
    assert run.finished


def test_an_unknown_tracker_is_named_with_the_closest_spelling(tmp_path):
    config = load_config(None, FAST_RUN + ["train.report_to=[tensorbord]"])
    with pytest.raises(ConfigError) as err:
        Trainer(config, run_dir=str(tmp_path / "run"), echo=lambda *_: None)
    message = str(err.value)
    assert "No logger named 'tensorbord'" in message and "Did you mean 'tensorboard'?" in message
    assert "mlflow, tensorboard, trackio, wandb" in message and "distil plugins" in message
    assert not (tmp_path / "run").exists()  # refused before the model loads, and the run directory went


@pytest.mark.parametrize("tracker,module", [("wandb", "wandb"), ("mlflow", "mlflow"), ("trackio", "trackio"),
                                            ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_library_names_the_extra_to_install(tmp_path, monkeypatch, tracker, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    config = load_config(None, FAST_RUN + [f"train.report_to=[{tracker}]"])
    with pytest.raises(ConfigError) as err:
        Trainer(config, run_dir=str(tmp_path / "run"), echo=lambda *_: None)
    assert f"train.report_to names {tracker!r}" in str(err.value)
    assert f"pip install 'distil-toolkit[{tracker}]'" in str(err.value)


def test_options_for_a_tracker_not_reported_to_are_refused(tmp_path):
    config = load_config(None, FAST_RUN + ["train.report_to=[tensorboard]", "train.tracker_options={wandb: {mode: online}}"])
    with pytest.raises(ConfigError, match="train.tracker_options has options for 'wandb'"):
        Trainer(config, run_dir=str(tmp_path / "run"), echo=lambda *_: None)


def test_a_misspelt_tracker_option_names_the_valid_ones(tmp_path):
    config = load_config(None, FAST_RUN + ["train.report_to=[wandb]", "train.tracker_options={wandb: {projet: x}}"])
    with pytest.raises(ConfigError, match="Unknown option 'projet' for logger 'wandb'.*Did you mean 'project'"):
        Trainer(config, run_dir=str(tmp_path / "run"), echo=lambda *_: None)


@pytest.mark.slow
def test_every_tracker_at_once_and_the_jsonl_logs_stay_complete(tmp_path):
    train(tmp_path, "train.report_to=[tensorboard, trackio, wandb, mlflow]")
    plain = tmp_path / "plain"
    train(plain)
    for name in ("metrics.jsonl", "eval.jsonl", "rollouts.jsonl", "provenance.jsonl"):
        tracked, untracked = jsonl(tmp_path / name), jsonl(plain / name)
        assert len(tracked) == len(untracked) > 0, name
        drop = {"time_generate", "time_verify", "time_feedback", "time_expert", "time_update", "time_step",
                "tokens_per_s"}  # wall-clock times differ between two runs; the rest is seeded
        assert [{k: v for k, v in r.items() if k not in drop} for r in tracked] == \
               [{k: v for k, v in r.items() if k not in drop} for r in untracked], name
    for tracker in TRACKERS:
        assert READERS[tracker](tmp_path).series("loss") == {
            r["step"]: pytest.approx(r["loss"], rel=1e-6) for r in jsonl(tmp_path / "metrics.jsonl")}
