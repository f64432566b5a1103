"""Experiment trackers (train.report_to): each built-in writes a 3-step run that its own
library's reader gives back equal to metrics.jsonl and eval.jsonl; errors name the fix."""

import json
import os
import signal
import subprocess
import sys

import pytest

from distil_core.config import load_config
from distil_core.errors import ConfigError
from distil_core.testing import FAST_RUN, wait_until
from distil_core.training.trainer import Trainer

from distil_core.tracking import flat_config
from distil_core.tracking.trackio_logger import point_store

STEPS = 3
TRACKERS = ["tensorboard", "trackio", "wandb", "mlflow"]


pytestmark = pytest.mark.usefixtures("offline_trackers")


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
    said = []
    config = train(tmp_path, f"train.report_to=[{tracker}]", echo=said.append)
    assert not [m for m in said if "tracker" in m], said  # no tracker was dropped along the way
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

    assert float(run.config["optim.lr"]) == config.optim.lr and run.config["task.name"] == "digits"
    assert float(run.config["rollout.problems_per_step"]) == 4 and run.config["train.report_to"] == str([tracker])

    table = run.table(2)
    step2 = {r["response_text"] for r in jsonl(tmp_path / "rollouts.jsonl") if r["step"] == 2}
    assert table and all(row["response"] in step2 for row in table), table
    assert {"prompt", "reward", "passed", "feedback", "expert_context"} <= set(table[0])
    assert any(row["expert_context"] for row in table)  # distil asks the self expert
    assert run.table(1) is None and run.table(3) is None  # every 2nd step only
    assert run.finished is not False  # where the tracker records it (wandb, mlflow): a clean finish


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
    with pytest.raises(ConfigError, match="Unknown option 'projet' for logger 'wandb'.*Did you mean 'project'") as err:
        Trainer(config, run_dir=str(tmp_path / "run"), echo=lambda *_: None)
    valid = str(err.value).split("Valid: ")[1]
    assert "project" in valid and "run_dir" not in valid  # the run supplies run_dir; a config may not set it


@pytest.mark.slow
def test_every_tracker_at_once_and_the_jsonl_logs_stay_complete(tmp_path):
    train(tmp_path, "train.report_to=[tensorboard, trackio, wandb, mlflow]")
    plain = tmp_path / "plain"
    train(plain)
    for name in ("metrics.jsonl", "eval.jsonl", "rollouts.jsonl", "provenance.jsonl"):
        tracked, untracked = jsonl(tmp_path / name), jsonl(plain / name)
        assert len(tracked) == len(untracked) > 0, name
        assert [seeded(r) for r in tracked] == [seeded(r) for r in untracked], name
    for tracker in TRACKERS:
        assert READERS[tracker](tmp_path).series("loss") == {
            r["step"]: pytest.approx(r["loss"], rel=1e-6) for r in jsonl(tmp_path / "metrics.jsonl")}


def interrupted_then_resumed(run_dir, tracker, logged):
    """A session checkpoints at step 2, logs step 3 and dies; a second session resumes the run
    and trains steps 3 and 4. ``logged(run_dir)`` gives the steps the tracker holds for loss
    after the first session (None: not read). What the second session said is returned."""
    overrides = ["train.steps=4", "train.save_every=2", "train.eval_every=0", f"train.report_to=[{tracker}]"]
    config = load_config(None, FAST_RUN + overrides)
    first = Trainer(config, run_dir=str(run_dir), echo=lambda *_: None)
    observe = first.guard.observe

    def dies_after_step_3(row):
        observe(row)
        if row["step"] == 3:
            raise KeyboardInterrupt  # the process stops after step 3 is logged, before its checkpoint

    first.guard.observe = dies_after_step_3
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-000002.pt"
    assert logged is None or logged(run_dir) == [1, 2, 3]  # step 3 reached the tracker

    said = []
    Trainer(config, run_dir=str(run_dir), resume=True, echo=said.append).fit()
    assert any("Resumed" in m for m in said) and not [m for m in said if "tracker" in m], said
    return said


@pytest.mark.slow
@pytest.mark.parametrize("tracker", ["tensorboard", "trackio"])
def test_a_resumed_run_shows_each_step_once(tmp_path, tracker):
    """After :func:`interrupted_then_resumed`, the tracker's own reader holds one value per step,
    the resumed session's, as metrics.jsonl does."""
    interrupted_then_resumed(tmp_path, tracker, lambda d: [step for step, _ in LOGGED[tracker](d, "loss")])
    metrics = jsonl(tmp_path / "metrics.jsonl")
    logged = LOGGED[tracker](tmp_path, "loss")
    assert [step for step, _ in logged] == [r["step"] for r in metrics] == [1, 2, 3, 4]
    assert [value for _, value in logged] == [pytest.approx(r["loss"], rel=1e-6, abs=1e-7) for r in metrics]


@pytest.mark.slow
def test_a_resumed_wandb_run_logs_on_under_the_id_it_started_with(tmp_path):
    """Offline, the resumed session is a second ``offline-run-*`` folder with the first's run id
    (for ``wandb sync`` to upload to that run), logging from the step after the checkpoint.

    The interrupted session's own file is not read: wandb's service writes it out when that
    run finishes, and how soon after an interrupt is wandb's affair (once in a CI run it held
    nothing yet when read); the folders' ids and the resumed session's rows are this change's."""
    def folders():
        return sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))

    interrupted_then_resumed(tmp_path, "wandb", None)
    # the interrupted session's file is created by wandb's service, on its own thread: under load
    # it can appear after the resumed session has finished
    wait_until(lambda: len(folders()) == 2, timeout_s=120, what="both sessions' offline run files")
    first, second = folders()
    run_id = json.loads((tmp_path / "trackers.json").read_text())["wandb"]
    assert first.name == second.name == f"run-{run_id}.wandb"
    resumed = wandb_run(tmp_path, second)
    metrics = jsonl(tmp_path / "metrics.jsonl")
    assert resumed.series("loss") == {r["step"]: pytest.approx(r["loss"]) for r in metrics if r["step"] > 2}
    assert resumed.finished and resumed.config["train.steps"] == 4


@pytest.mark.slow
def test_ctrl_c_leaves_a_whole_offline_wandb_run_marked_failed(tmp_path):
    """``distil train`` stopped by Ctrl-C (SIGINT to a real process): once the process has exited,
    its offline run holds every step it logged, with metrics.jsonl's values, and ends with a
    failed exit, so that ``wandb sync`` uploads the run up to the interrupt."""
    overrides = FAST_RUN + ["train.steps=100000", "train.eval_every=0", "train.save_every=0", "train.report_to=[wandb]"]
    command = [sys.executable, "-m", "distil_core", "train", "--output-dir", str(tmp_path)]
    for override in overrides:
        command += ["--set", override]
    metrics = tmp_path / "metrics.jsonl"
    # as from a user's shell: not attached to a wandb service an earlier test of this process started
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT prints every thread's stack: where a run that outlives Ctrl-C is stuck
    # and with Ctrl-C's default action: a test runner started in the background (`cmd &` in a
    # script, nohup) ignores SIGINT, and a child inherits that; it then trained on through SIGINT
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                               env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # four logged steps: the tracker then holds at least three (the last copy may not be made)
        wait_until(lambda: process.poll() is not None or (metrics.exists() and metrics.read_text().count("\n") >= 4),
                   timeout_s=300, what="four logged steps")
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]  # it died before step 3
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            stacks = process.communicate(timeout=60)[1].decode(errors="replace")
            pytest.fail(f"distil train was still running 120 s after SIGINT; its threads:\n{stacks[-12000:]}")
    finally:
        process.kill()
    assert process.returncode == 130, err.decode()[-2000:]
    run, logged = wandb_run(tmp_path), {r["step"]: r["loss"] for r in jsonl(metrics)}
    held = run.series("loss")
    # the interrupt may fall between a step's JSONL line and its copy to the tracker: the last may be missing
    assert sorted(held) in (sorted(logged), sorted(logged)[:-1]) and len(held) >= 3
    assert held == {step: pytest.approx(logged[step]) for step in held}
    assert run.finished is False  # an exit record, with a failure's code


@pytest.mark.slow
def test_a_resumed_mlflow_run_logs_on_into_the_same_run(tmp_path):
    """One run, finished, tagged with the step it resumed at. MLflow deletes no metric point, so
    step 3 holds the interrupted session's value and then the resumed session's."""
    interrupted_then_resumed(tmp_path, "mlflow", lambda d: [m.step for m in mlflow_history(d, "loss")])
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["distil.resumed_at"] == "2"
    assert run.info.run_id == json.loads((tmp_path / "trackers.json").read_text())["mlflow"]
    history = mlflow_history(tmp_path, "loss")
    metrics = {r["step"]: r["loss"] for r in jsonl(tmp_path / "metrics.jsonl")}
    assert [m.step for m in history] == [1, 2, 3, 3, 4]
    assert history[-2].value == pytest.approx(metrics[3]) and history[-1].value == pytest.approx(metrics[4])
    assert run.data.params["train.steps"] == "4"


def mlflow_runs(run_dir):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    return client.search_runs([client.get_experiment_by_name("distil").experiment_id])


def mlflow_history(run_dir, key):
    """Every point of ``key`` in the run's history, in the order logged (by timestamp, then step)."""
    from mlflow import MlflowClient

    (run,) = mlflow_runs(run_dir)
    points = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri()).get_metric_history(run.info.run_id, key)
    return sorted(points, key=lambda m: (m.timestamp, m.step))


def tensorboard_logged(run_dir, key):
    """(step, value) of every event TensorBoard's reader gives for ``key``, in order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(key)]


def trackio_logged(run_dir, key):
    """(step, value) of every row trackio's store gives for ``key``, in order, repeats kept."""
    point_store(str(run_dir / "trackio"))
    from trackio.sqlite_storage import SQLiteStorage

    return [(log["step"], log[key]) for log in SQLiteStorage.get_logs("distil", run_dir.name) if key in log]


LOGGED = {"tensorboard": tensorboard_logged, "trackio": trackio_logged}


def test_dropping_steps_leaves_other_runs_and_earlier_steps(tmp_path):
    """The store keeps rows by run: only the resumed run's rows past the step go; an unknown
    store shape is an error naming the file, and a missing store drops nothing."""
    import sqlite3

    from distil_core.tracking.trackio_logger import drop_steps_after

    db = tmp_path / "distil.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE metrics (id INTEGER PRIMARY KEY, run_id TEXT, run_name TEXT, step INTEGER, metrics TEXT)")
        conn.executemany("INSERT INTO metrics (run_id, run_name, step, metrics) VALUES (?, ?, ?, '{}')",
                         [("a", "run", s) for s in (1, 2, 3, 4)] + [("b", "run", s) for s in (1, 2, 3, 4)])
    assert drop_steps_after(db, "a", "run", 2) == 2
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT run_id, step FROM metrics ORDER BY run_id, step").fetchall()
    assert rows == [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("b", 3), ("b", 4)]

    assert drop_steps_after(tmp_path / "absent.db", "a", "run", 0) == 0
    odd = tmp_path / "odd.db"
    with sqlite3.connect(odd) as conn:
        conn.execute("CREATE TABLE metrics (id INTEGER PRIMARY KEY, name TEXT)")
    with pytest.raises(RuntimeError, match=r"odd\.db.*'run_name' and 'step'"):
        drop_steps_after(odd, "a", "run", 0)


def seeded(row):
    """A log row less its wall-clock times, which differ between two runs of the same config."""
    return {k: v for k, v in row.items() if not k.startswith("time_") and k != "tokens_per_s"}


# -- each tracker's own reader ------------------------------------------------------------------


class Run:
    """What a tracker holds of a run: ``series[key] = {step: value}``, the config as dotted keys,
    ``tables[step]`` (rows as dicts), and whether it recorded a clean finish (None: it keeps no status)."""

    def __init__(self, series, config, tables, finished=None):
        self._series, self.config, self._tables, self.finished = series, config, tables, finished

    def series(self, key):
        return self._series.get(key, {})

    def table(self, step):
        return self._tables.get(step)


def tensorboard_run(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    series = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    config = {k: getattr(v, v.WhichOneof("kind")) for k, v in hparams.items()}
    tables = {e.step: markdown_rows(e.tensor_proto.string_val[0].decode()) for e in acc.Tensors("rollouts/text_summary")}
    return Run(series, config, tables)


def markdown_rows(text):
    import re

    def cells(line):
        return [c.replace("<br>", "\n").replace("\\|", "|") for c in re.split(r"(?<!\\) \| ", line.strip()[2:-2])]

    header, _, *lines = text.splitlines()
    return [dict(zip(cells(header), cells(line))) for line in lines]


def trackio_run(run_dir):
    assert (run_dir / "trackio" / "distil.db").exists()  # the store is in the run directory
    point_store(str(run_dir / "trackio"))  # as the tracker does: trackio reads its location at import
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("distil", run_dir.name)
    series, tables = {}, {}
    for log in logs:
        for key, value in log.items():
            if isinstance(value, dict) and value.get("_type") == "trackio.table":
                tables[log["step"]] = value["_value"]
            elif isinstance(value, (int, float)) and key != "step":
                series.setdefault(key, {})[log["step"]] = value
    config = SQLiteStorage.get_run_config("distil", run_dir.name)
    return Run(series, flat_config({k: v for k, v in config.items() if not k.startswith("_")}), tables)


def wandb_run(run_dir, path=None):
    """The offline run's transaction log (``run-<id>.wandb``; ``path``: one of several), decoded with wandb's own protobuf
    ``Record``. wandb 0.31 keeps no Python reader for it (its datastore module went with the
    move to wandb-core), so the record framing — LevelDB's log format, which wandb documents —
    is read here."""
    from wandb.proto import wandb_internal_pb2

    if path is None:
        (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    # wandb's service writes the file on its own thread; under load it can still hold only its
    # header when the run has returned from finish() (once in a CI run): read it once the run's
    # exit record is there
    wait_until(lambda: "exit" in wandb_kinds(path), timeout_s=120, what=f"the exit record in {path}")
    series, config, tables, finished, kinds = {}, {}, {}, None, []
    for raw in leveldb_records(path.read_bytes()):
        record = wandb_internal_pb2.Record.FromString(raw)
        kind = record.WhichOneof("record_type")
        kinds.append(kind)
        if kind == "history":
            step = record.history.step.num
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            for key, value in items.items():
                series.setdefault(key, {})[step] = value
            if items.get("rollouts/_type") == "table-file":
                table = json.loads((path.parent / "files" / items["rollouts/path"]).read_text())
                tables[step] = [dict(zip(table["columns"], row)) for row in table["data"]]
        elif kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({u.key: json.loads(u.value_json) for u in updates if u.key != "_wandb"})
        elif kind == "exit":
            finished = record.exit.exit_code == 0
    if not series:  # say what the log held, and what wandb's own service logged, in the failure
        logs = path.parent / "logs" / "debug-internal.log"
        tail = logs.read_text().splitlines()[-20:] if logs.exists() else ["(no debug-internal.log)"]
        raise AssertionError(f"{path} holds no history ({len(path.read_bytes())} bytes; records: {kinds}); "
                             "wandb's debug-internal.log ends:\n" + "\n".join(tail))
    return Run(series, flat_config(config), tables, finished)


def wandb_kinds(path):
    """The kinds of the records an offline wandb run file holds so far (``history``, ``exit``, …);
    none while its last record is still being written."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    try:
        return [wandb_internal_pb2.Record.FromString(raw).WhichOneof("record_type")
                for raw in leveldb_records(path.read_bytes())]
    except DecodeError:
        return []


def leveldb_records(data, block=32768):
    """The records of a LevelDB-format log after wandb's 7-byte header (``:W&B``, magic, version):
    chunks of (crc32c, length, type) headers within 32 KiB blocks; FULL, or FIRST, MIDDLE…, LAST."""
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zeros up to the end of the block
            pos += room
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            pending = chunk
            if kind == 1:
                yield pending
        else:
            pending += chunk
            if kind == 4:
                yield pending


def mlflow_run(run_dir):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    (run,) = mlflow_runs(run_dir)
    run_id = run.info.run_id
    series = {key.replace("_at_", "@"): {m.step: m.value for m in client.get_metric_history(run_id, key)}
              for key in run.data.metrics}  # pass@1 is logged as pass_at_1
    tables = {}
    for info in client.list_artifacts(run_id, "rollouts"):
        table = json.loads(open(client.download_artifacts(run_id, info.path)).read())
        tables[int(info.path.split("step_")[1][:-5])] = [dict(zip(table["columns"], row)) for row in table["data"]]
    return Run(series, run.data.params, tables, run.info.status == "FINISHED")


READERS = {"tensorboard": tensorboard_run, "trackio": trackio_run, "wandb": wandb_run, "mlflow": mlflow_run}


def test_integers_no_tracker_can_store_are_given_as_text():
    """A 20-digit seed emptied trackio's store without a word; a 321-digit one stopped TensorBoard
    (OverflowError: int too large to convert to float)."""
    flat = flat_config({"seed": 10**20, "task": {"options": {"seed": -(10**320), "n": 2**63 - 1}}, "ok": True})
    assert flat == {"seed": str(10**20), "task.options.seed": str(-(10**320)), "task.options.n": 2**63 - 1, "ok": True}


@pytest.mark.slow
def test_a_copied_run_directory_never_writes_mlflow_artifacts_into_the_original(tmp_path):
    """MLflow keeps its store's absolute artifact location in mlruns/: a copy resumed (with or
    without its trackers.json) wrote config.json and the rollout tables into the original's folder."""
    import shutil

    original, copy = tmp_path / "a", tmp_path / "b"
    train(original, "train.report_to=[mlflow]", "train.save_every=2")
    before = sorted(p for p in (original / "mlruns").rglob("*"))
    shutil.copytree(original, copy)
    (copy / "trackers.json").unlink()
    said = []
    config = load_config(None, FAST_RUN + [f"train.steps={STEPS + 2}", "train.eval_every=0", "train.save_every=0",
                                           "train.report_to=[mlflow]"])
    Trainer(config, run_dir=str(copy), resume=True, echo=said.append).fit()
    assert sorted(p for p in (original / "mlruns").rglob("*")) == before
    assert any("keeps its artifacts in" in str(line) and str(original) in str(line) for line in said), said
    assert (copy / "metrics.jsonl").exists() and len(jsonl(copy / "metrics.jsonl")) == STEPS + 2
