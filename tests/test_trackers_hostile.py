"""Trackers given what a run may hold but a tracker's library may refuse: numbers no float holds,
lone surrogates, names MLflow refuses or that collide once made MLflow names, a secret on the
command line, steps that go back, a tracker failing at each call. Each is read back with the
library's own reader: the run never stops, no tracker is lost over one value, and what a
tracker cannot hold is left out with a warning naming the tracker and the key."""

import json
import math
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distil_core.tracking import Trackers
from distil_core.tracking.mlflow_logger import MlflowLogger
from distil_core.tracking.tensorboard_logger import TensorBoardLogger
from distil_core.tracking.wandb_logger import WandbLogger


pytestmark = pytest.mark.usefixtures("offline_trackers")


class Kept:
    """A plugin tracker that keeps what it is given; ``fail_in`` names a method that raises."""

    def __init__(self, fail_in=None):
        self.fail_in, self.calls = fail_in, []

    def call(self, method, *args):
        self.calls.append((method, *args))
        if method == self.fail_in:
            raise RuntimeError(f"{method} broke")

    def log_config(self, config):
        self.call("log_config", config)

    def log_metrics(self, step, metrics):
        self.call("log_metrics", step, metrics)

    def log_table(self, step, rows):
        self.call("log_table", step, rows)

    def resume(self, step):
        self.call("resume", step)

    def close(self, failed=False):
        self.call("close", failed)


def batch(text):
    """A one-rollout step whose prompt, response and feedback are ``text``."""
    return SimpleNamespace(
        rollouts=[SimpleNamespace(response_text=text)], n=1, queries=[],
        problems=[SimpleNamespace(id="p1", user_text=lambda: text)],
        verdicts=[SimpleNamespace(score=1.0, passed=True)],
        feedback=[[SimpleNamespace(source="judge", text=text)]])


def test_a_number_no_float_holds_is_left_out_and_the_run_goes_on():
    """10**400 or a complex raised out of log_metrics, on the trainer's path: the run died."""
    kept = Kept()
    trackers = Trackers([("kept", kept)], warn=pytest.fail)
    trackers.log_metrics(1, {"loss": 0.5, "huge": 10**400, "complex": np.complex64(1j), "text": "x",
                             "nan": math.nan, "inf": -math.inf, "flag": True, "np": np.float32(0.25),
                             "tensor": torch.tensor(2), "none": None})
    ((_, step, metrics),) = kept.calls
    assert step == 1 and set(metrics) == {"loss", "nan", "inf", "flag", "np", "tensor"}
    assert math.isnan(metrics["nan"]) and metrics["inf"] == -math.inf
    assert (metrics["loss"], metrics["flag"], metrics["np"], metrics["tensor"]) == (0.5, 1.0, 0.25, 2.0)


def tensorboard_text(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(f"{tag}/text_summary")]


def test_a_lone_surrogate_reaches_every_tracker_as_a_replacement_character(tmp_path):
    """"\\ud83d" (half an emoji) in a rollout or the config: TensorBoard's and MLflow's encoders
    refused it and the tracker was dropped; trackio dropped the whole table."""
    from mlflow import MlflowClient

    said, kept = [], Kept()
    loggers = [("tensorboard", TensorBoardLogger(str(tmp_path))), ("mlflow", MlflowLogger(str(tmp_path))),
               ("kept", kept)]
    trackers = Trackers(loggers, table_every=1, warn=said.append)
    trackers.log_config({"task": {"options": {"note": "a\ud83db", "\ud83d": 1}}})
    trackers.log_rollouts(1, batch("cut\ud83d here\x00"))
    trackers.close()
    assert not said and len(trackers.loggers) == 0  # closed at the end, none dropped on the way

    (table,) = tensorboard_text(tmp_path, "rollouts")
    assert "cut\ufffd here\x00" in table and "\ud83d" not in table
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("distil").experiment_id])
    assert run.data.params["task.options.note"] == "a\ufffdb" and run.info.status == "FINISHED"
    assert kept.calls[0][1] == {"task": {"options": {"note": "a\ufffdb", "\ufffd": 1}}}
    (rows,) = [c[2] for c in kept.calls if c[0] == "log_table"]
    assert rows[0]["prompt"] == rows[0]["response"] == "cut\ufffd here\x00"


def test_a_lone_surrogate_keeps_the_trackio_table(tmp_path):
    from distil_core.tracking.trackio_logger import TrackioLogger, point_store

    trackers = Trackers([("trackio", TrackioLogger(str(tmp_path)))], table_every=1, warn=pytest.fail)
    trackers.log_metrics(1, {"loss": 1.0})
    trackers.log_rollouts(1, batch("half\ud83d"))
    trackers.close()
    point_store(str(tmp_path / "trackio"))
    from trackio.sqlite_storage import SQLiteStorage

    tables = [log["rollouts"]["_value"] for log in SQLiteStorage.get_logs("distil", tmp_path.name) if "rollouts" in log]
    assert [[row["prompt"] for row in table] for table in tables] == [["half\ufffd"]]


def test_names_mlflow_refuses_or_that_collide_are_left_out_and_mlflow_goes_on(tmp_path):
    """One metric or parameter name MLflow refuses (over 250 characters, empty, a path that
    resolves elsewhere) failed the whole batch, and the tracker was dropped for the rest of the
    run; pass@1 and pass_at_1 in the config were refused as duplicates, and as metrics mixed into
    one series."""
    from mlflow import MlflowClient

    said, long = [], "k" * 300
    trackers = Trackers([("mlflow", MlflowLogger(str(tmp_path)))], warn=said.append)
    with pytest.warns(UserWarning) as caught:
        trackers.log_config({"eval": {"pass@1": 1, "pass_at_1": 2}, long: 3, "": 4, "/x": 5, "note": "n" * 7000})
        trackers.log_metrics(1, {"loss": 1.0, long: 2.0, "a/../b": 3.0, "..": 4.0, "": 5.0,
                                 "pass@1": 0.5, "pass_at_1": 0.25, "a b:c": 6.0})
        trackers.log_metrics(2, {"loss": 2.0, "pass_at_1": 0.75})
    trackers.close()
    assert not said  # never dropped
    messages = [str(w.message) for w in caught]
    assert all(m.startswith("tracker 'mlflow' leaves out the ") for m in messages)
    for what in ("param 'eval.pass_at_1'", "param 'kkkk", "param ''", "param '/x'", "metric 'kkkk", "metric 'a/../b'",
                 "metric '..'", "metric ''", "metric 'pass_at_1'"):
        assert sum(what in m for m in messages) == 1, (what, messages)  # one warning per key, not per step
    assert any("'pass_at_1', which 'pass@1' already is" in m for m in messages)

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("distil").experiment_id])
    params = run.data.params
    assert params["eval.pass_at_1"] == "1" and len(params["note"]) == 500 and params["note"].endswith("…")
    assert set(params) == {"eval.pass_at_1", "note"}
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] for key in run.data.metrics}
    assert history == {"loss": [(1, 1.0), (2, 2.0)], "pass_at_1": [(1, 0.5)], "a b:c": [(1, 6.0)]}
    assert run.info.status == "FINISHED"


def test_wandb_keeps_no_command_line(tmp_path, monkeypatch):
    """wandb recorded sys.argv in its run file: ``--set expert.options.api_key=sk-…`` went past
    the redaction every tracker's config gets."""
    monkeypatch.setattr(sys, "argv", ["distil", "train", "--set", "expert.options.api_key=sk-live-123"])
    trackers = Trackers([("wandb", WandbLogger(str(tmp_path)))], warn=pytest.fail)
    trackers.log_config({"expert": {"options": {"api_key": "sk-live-123"}}})
    trackers.log_metrics(1, {"loss": 1.0})
    trackers.close()
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    for path in run_file.parent.rglob("*"):
        assert not path.is_file() or b"sk-live-123" not in path.read_bytes(), path


def test_wandb_says_when_a_step_goes_back(tmp_path):
    """wandb dropped a row at an earlier step without a word under WANDB_SILENT."""
    trackers = Trackers([("wandb", WandbLogger(str(tmp_path)))], warn=pytest.fail)
    with pytest.warns(UserWarning, match=r"tracker 'wandb' leaves out 'loss' at step 3: .* step 5 is logged"):
        for step in (1, 5, 3, 5, 6):
            trackers.log_metrics(step, {"loss": float(step)})
    trackers.close()


@pytest.mark.parametrize("content, why", [
    (b"{not json", "cannot be read (JSONDecodeError)"),
    (b"[1, 2]", "is not a JSON object (a list)"),
    (b'{"mlflow": 7}', "holds 7 as its run id"),
    (b'{"mlflow": ""}', "holds '' as its run id"),
    (b"[" * 100_000, "cannot be read (RecursionError)"),
    (b'{"mlflow": "../../../etc"}', "holds '../../../etc' as its run id"),  # refused by MLflow on every resume
    (b'{"mlflow": "a/b c"}', "holds 'a/b c' as its run id"),
], ids=["not-json", "a-list", "a-number", "empty", "deeply-nested", "a-path", "spaces"])
def test_a_damaged_trackers_json_starts_a_new_run_with_a_warning(tmp_path, content, why):
    """A resumed run reads the trackers' run ids from trackers.json; one it cannot use is named,
    a new run starts, and the file is written anew with that run's id."""
    from mlflow import MlflowClient

    (tmp_path / "trackers.json").write_bytes(content)
    logger = MlflowLogger(str(tmp_path))
    logger.resume(2)
    with pytest.warns(UserWarning, match=f"tracker 'mlflow': .*trackers.json {re.escape(why)}"):
        logger.log_metrics(3, {"loss": 1.0})
    logger.close()
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("distil").experiment_id])
    assert json.loads((tmp_path / "trackers.json").read_text()) == {"mlflow": run.info.run_id}


@pytest.mark.parametrize("gone", ["never there", "deleted"])
def test_a_remembered_mlflow_run_the_store_lacks_starts_a_new_run_with_a_warning(tmp_path, gone):
    """A run deleted from the store (or a trackers.json from elsewhere) is named, and a new run
    takes its place, rather than the tracker failing on its first write."""
    first = MlflowLogger(str(tmp_path))
    first.log_metrics(1, {"loss": 1.0})
    first.close()
    old = json.loads((tmp_path / "trackers.json").read_text())["mlflow"]
    if gone == "deleted":
        first.client.delete_run(old)
    else:
        (tmp_path / "trackers.json").write_text(json.dumps({"mlflow": "0" * 32}))
    second = MlflowLogger(str(tmp_path))
    second.resume(1)
    said = "was deleted from" if gone == "deleted" else "is not in"
    with pytest.warns(UserWarning, match=f"tracker 'mlflow': the run '.*' that trackers.json names {said} file:"):
        second.log_metrics(2, {"loss": 0.5})
    second.close()
    new = json.loads((tmp_path / "trackers.json").read_text())["mlflow"]
    assert new not in (old, "0" * 32)
    assert [m.step for m in second.client.get_metric_history(new, "loss")] == [2]


def test_the_mlflow_store_is_named_without_its_password(tmp_path):
    logger = MlflowLogger(str(tmp_path), tracking_uri="postgresql://ann:s3cret@db.example:5432/mlflow")
    assert logger.where() == "postgresql://db.example:5432/mlflow"
    assert MlflowLogger(str(tmp_path)).where() == (tmp_path / "mlruns").absolute().as_uri()


def test_trackers_json_that_cannot_be_written_costs_a_warning_not_the_tracker(tmp_path):
    (tmp_path / "trackers.json").mkdir()  # where the file would go, a directory
    said = []
    trackers = Trackers([("mlflow", MlflowLogger(str(tmp_path)))], warn=said.append)
    with pytest.warns(UserWarning, match="tracker 'mlflow': its run id could not be written to .*trackers.json"):
        trackers.log_metrics(1, {"loss": 1.0})
    trackers.log_metrics(2, {"loss": 0.5})
    trackers.close()
    assert not said  # never dropped


def test_a_resumed_online_wandb_run_leaves_out_the_steps_it_holds_with_one_warning(tmp_path, monkeypatch):
    """Online, wandb goes on from the step after the last it holds (its ``starting_step``) and drops
    earlier rows silently under WANDB_SILENT; here they are left out, named in one warning. (A
    wandb server cannot run here: ``wandb.init`` gives a stand-in run that records its rows.)"""
    (tmp_path / "trackers.json").write_text(json.dumps({"wandb": "abc12345"}))
    logger = WandbLogger(str(tmp_path))
    given, logged = {}, []
    run = SimpleNamespace(id="abc12345", starting_step=6, log=lambda row, step: logged.append(step),
                          finish=lambda exit_code: None)
    monkeypatch.setattr(logger.wandb, "init", lambda **kw: given.update(kw) or run)
    logger.resume(2)
    with pytest.warns(UserWarning, match="tracker 'wandb' goes on from step 6.*steps 3–5 are left out") as caught:
        for step in (3, 4, 5, 6, 7):
            logger.log_metrics(step, {"loss": float(step)})
    logger.close()
    assert len(caught) == 1 and logged == [6, 7]
    assert given["id"] == "abc12345" and given["resume"] == "allow"


def test_a_resumed_mlflow_run_keeps_each_param_once_and_names_one_that_changed(tmp_path):
    """MLflow refuses to change a parameter: the whole batch failed on resume, and the tracker
    was dropped. Now a param it holds is not sent again, and one that changed is named."""
    from mlflow import MlflowClient

    first = MlflowLogger(str(tmp_path))
    first.log_config({"optim": {"lr": 0.001}, "train": {"steps": 4}})
    first.log_metrics(1, {"loss": 1.0})
    first.close(failed=True)
    said = []
    second = MlflowLogger(str(tmp_path))
    trackers = Trackers([("mlflow", second)], warn=said.append)
    trackers.resume(1)
    with pytest.warns(UserWarning, match="leaves out the param 'train.steps': the resumed run holds '4'"):
        trackers.log_config({"optim": {"lr": 0.001}, "train": {"steps": 8}, "seed": 3})
    trackers.log_metrics(2, {"loss": 0.5})
    trackers.close()
    assert not said  # never dropped
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("distil").experiment_id])
    assert run.data.params == {"optim.lr": "0.001", "train.steps": "4", "seed": "3"}
    assert run.info.status == "FINISHED" and run.data.tags["distil.resumed_at"] == "1"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(1, 1.0), (2, 0.5)]


@pytest.mark.parametrize("fail_in", ["log_config", "log_metrics", "log_table", "resume"])
def test_a_tracker_failing_at_any_call_is_closed_once_named_once_and_the_others_go_on(fail_in):
    said, broken, other = [], Kept(fail_in), Kept()
    trackers = Trackers([("broken", broken), ("other", other)], table_every=1, warn=said.append)
    trackers.resume(0)
    with trackers.session({"seed": 1}):
        for step in (1, 2):
            trackers.log_metrics(step, {"loss": 1.0})
            trackers.log_rollouts(step, batch("x"))
    (warning,) = said
    assert f"tracker 'broken' failed in {fail_in} (RuntimeError: {fail_in} broke)" in warning
    assert broken.calls[-1] == ("close", True) and sum(c[0] == "close" for c in broken.calls) == 1
    assert [c[0] for c in other.calls] == ["resume", "log_config"] + ["log_metrics", "log_table"] * 2 + ["close"]


def test_a_tracker_failing_to_close_is_named_and_the_others_are_closed():
    said, broken, other = [], Kept("close"), Kept()
    with Trackers([("broken", broken), ("other", other)], warn=said.append).session({}):
        pass
    (warning,) = said
    assert "tracker 'broken' could not be closed: RuntimeError: close broke" in warning
    assert other.calls[-1] == ("close", False)
