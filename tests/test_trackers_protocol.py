"""A third-party tracker through ``register_loggers``: what it is handed and when, that only
rank 0 builds one, and the failure policy (a tracker that raises is dropped, the run and its
JSONL logs go on; a run that fails still closes its trackers)."""

import json

import pytest

from distil_core import Logger, hookimpl
from distil_core.cli.main import main
from distil_core.config import load_config
from distil_core.errors import ConfigError, DistilError
from distil_core.testing import FAST_RUN
from distil_core.tracking import Trackers
from distil_core.training.trainer import Trainer

# z / τ overflows float32 for a τ this small: NaN gradients, so the run stops after max_nonfinite_steps
NAN_GRADIENT = ["loss.expert_temperature=1e-45", "loss.no_signal=keep", "train.max_nonfinite_steps=1"]


class Recorder:
    """Keeps every call; ``fail_in`` names a method that raises (on its second call)."""

    built: list["Recorder"] = []

    def __init__(self, run_dir, fail_in=None, label="recorder"):
        self.run_dir, self.fail_in, self.label = run_dir, fail_in, label
        self.calls: list[tuple] = []
        Recorder.built.append(self)

    def record(self, *call):
        self.calls.append(call)
        if call[0] == self.fail_in and sum(c[0] == call[0] for c in self.calls) == 2:
            raise RuntimeError("the tracking server went away")

    def log_config(self, config):
        self.record("config", config)

    def log_metrics(self, step, metrics):
        self.record("log_metrics", step, metrics)

    def log_table(self, step, rows):
        self.record("log_table", step, rows)

    def close(self, failed=False):
        self.record("close", failed)

    def of(self, kind):
        return [c[1:] for c in self.calls if c[0] == kind]


class RecorderPlugin:
    @hookimpl
    def register_loggers(self, register):
        register("recorder", Recorder)


@pytest.fixture
def host(plugin_host):
    Recorder.built.clear()
    plugin_host.register_plugin(RecorderPlugin(), "recorder-plugin")
    return plugin_host


def run(run_dir, *overrides, echo=lambda *_: None):
    config = load_config(None, FAST_RUN + ["train.steps=3", "train.eval_every=2", "train.save_every=0",
                                           "train.report_to=[recorder]", *overrides])
    return Trainer(config, run_dir=str(run_dir), echo=echo)


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_recorder_meets_the_logger_protocol():
    assert isinstance(Recorder("x"), Logger)


@pytest.mark.slow
def test_a_plugin_tracker_gets_config_every_row_every_evaluation_and_the_tables(tmp_path, host):
    run(tmp_path, "train.log_rollout_table_every=2").fit()
    (rec,) = Recorder.built
    assert rec.run_dir == str(tmp_path)
    assert rec.calls[0][0] == "config" and rec.calls[-1] == ("close", False)
    config = rec.of("config")[0][0]
    assert config["train"]["report_to"] == ["recorder"] and config["train"]["steps"] == 3
    assert config["method"] == "distil" and config["task"]["options"]["length"] == 2

    logged = {step: values for step, values in rec.of("log_metrics") if "loss" in values}
    for row in jsonl(tmp_path / "metrics.jsonl"):
        expected = {k: float(v) for k, v in row.items()
                    if k != "step" and isinstance(v, (int, float))}
        assert logged[row["step"]] == expected
    evals = [(step, values) for step, values in rec.of("log_metrics") if "eval/pass@1" in values]
    assert [(e["step"], e["pass@1"]) for e in jsonl(tmp_path / "eval.jsonl")] == [(s, v["eval/pass@1"]) for s, v in evals]
    assert [step for step, _ in rec.of("log_table")] == [2]
    (rows,) = [rows for _, rows in rec.of("log_table")]
    assert 1 <= len(rows) <= 4 and all(r["step"] == 2 and isinstance(r["reward"], float) for r in rows)


@pytest.mark.slow
def test_a_tracker_that_raises_is_dropped_and_the_run_and_its_logs_go_on(tmp_path, host):
    said = []
    run(tmp_path, "train.tracker_options={recorder: {fail_in: log_metrics}}", echo=said.append).fit()
    (rec,) = Recorder.built
    assert rec.calls[-1] == ("close", True)  # closed as failed, once
    assert sum(c[0] == "close" for c in rec.calls) == 1 and len(rec.of("log_metrics")) == 2
    (warning,) = [s for s in said if "tracker 'recorder'" in s]
    assert "failed in log_metrics (RuntimeError: the tracking server went away)" in warning
    assert "the run goes on without it" in warning
    assert [r["step"] for r in jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert [e["label"] for e in jsonl(tmp_path / "eval.jsonl")] == ["before", "step 2", "after"]
    assert (tmp_path / "summary.json").exists()


@pytest.mark.slow
def test_a_run_that_fails_closes_its_trackers_as_failed(tmp_path, host):
    with pytest.raises(DistilError, match="not finite"):
        run(tmp_path, *NAN_GRADIENT).fit()
    (rec,) = Recorder.built
    assert rec.calls[-1] == ("close", True)
    assert [step for step, values in rec.of("log_metrics") if "loss" in values] == [1]  # the row that stopped it


def test_only_rank_0_keeps_trackers_and_every_rank_checks_them(tmp_path, host):
    config = load_config(None, ["train.report_to=[recorder]"])
    other = Trackers.open(host, config.train, str(tmp_path), enabled=False)
    assert not other
    other.log_metrics(1, {"loss": 1.0})
    other.close()
    assert all(rec.calls == [] for rec in Recorder.built)  # built (checked) but never called
    assert Trackers.open(host, config.train, str(tmp_path))
    bad = load_config(None, ["train.report_to=[recorder]", "train.tracker_options={recorder: {lable: x}}"])
    with pytest.raises(ConfigError, match="Unknown option 'lable' for logger 'recorder'.*Did you mean 'label'"):
        Trackers.open(host, bad.train, str(tmp_path), enabled=False)  # the same error on every rank


def test_distil_plugins_lists_the_loggers(capsys, plugin_host):
    assert main(["plugins", "--json"]) == 0
    plugins = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert plugins["distil_core.tracking.plugin"]["registered"]["logger"] == ["tensorboard", "trackio", "wandb", "mlflow"]
    assert main(["plugins"]) == 0
    assert "loggers: tensorboard, trackio, wandb, mlflow" in capsys.readouterr().out


def test_secret_options_never_reach_a_tracker(tmp_path, host):
    trackers = Trackers.open(host, load_config(None, ["train.report_to=[recorder]"]).train, str(tmp_path))
    trackers.log_config({"expert": {"name": "api", "options": {"api_key": "sk-live", "api_key_env": "KEY", "model": "m"}}})
    ((config,),) = Recorder.built[0].of("config")
    assert config["expert"]["options"] == {"api_key": "***", "api_key_env": "KEY", "model": "m"}


def test_provider_credentials_under_any_usual_name_never_reach_a_tracker(tmp_path, host):
    trackers = Trackers.open(host, load_config(None, ["train.report_to=[recorder]"]).train, str(tmp_path))
    secret = {name: f"value-of-{name}" for name in (
        "aws_secret_access_key", "aws_session_token", "vertex_credentials", "client_secret", "db_password",
        "x-api-key", "apikey", "Authorization", "hf_token", "private_key")}
    public = {"api_key_env": "KEY", "aws_region_name": "us-east-1", "max_new_tokens": 64, "future_credit": 0.5,
              "pass_rate": 0.5, "tokenizer": "gpt2"}
    trackers.log_config({"expert": {"options": {"litellm_kwargs": {**secret, **public}}}})
    ((config,),) = Recorder.built[-1].of("config")
    assert config["expert"]["options"]["litellm_kwargs"] == {**dict.fromkeys(secret, "***"), **public}
