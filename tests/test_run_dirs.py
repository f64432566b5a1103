"""Run directories never lose work: a used directory is refused unless the user says --resume or
--overwrite, --overwrite takes the whole old run away (checkpoints too), and the growing logs
rotate into compressed segments that read back whole."""

import gzip
import hashlib
import json
import os

import pytest

from distil_core.cli.main import main
from distil_core.config import load_config
from distil_core.run_files import RUN_CONFIG_HEADER, holds_run, log_exists, log_lines, rotate_if_large, segments
from distil_core.testing import FAST_RUN
from distil_core.training.runlog import RunLog
from distil_core.training.distributed import World


def _train(out, *extra):
    args = ["train", "--quiet", "--output-dir", str(out)]
    for item in FAST_RUN + list(extra):
        args += ["--set", item]
    return args


def _snapshot(root):
    """Every path under ``root`` with its content hash and modification time."""
    found = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                found[os.path.relpath(path, root)] = (hashlib.sha256(fh.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return found


def test_a_used_run_directory_is_refused_and_left_as_it_was(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train(run, "train.steps=2", "train.save_every=2")) == 0
    before = _snapshot(run)
    assert any(p.startswith("checkpoints") for p in before) and "metrics.jsonl" in before
    capsys.readouterr()
    assert main(_train(run, "train.steps=1")) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err and str(run) in err
    assert _snapshot(run) == before  # nothing read, written or deleted


def test_overwrite_replaces_the_old_run_checkpoints_included(tmp_path):
    run = tmp_path / "run"
    assert main(_train(run, "train.steps=4", "train.save_every=2")) == 0
    assert {"step-000002.pt", "step-000004.pt"} <= set(os.listdir(run / "checkpoints"))
    (run / "notes.txt").write_text("mine")  # not the run's: stays
    (run / "tensorboard").mkdir()  # a tracker's output (train.report_to) is the run's: goes
    (run / "tensorboard" / "events.out").write_text("old")
    assert main(_train(run, "train.steps=1", "train.save_every=1") + ["--overwrite"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]
    assert not any(name.startswith(("step-000002", "step-000004")) for name in os.listdir(run / "checkpoints"))
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / "tensorboard").exists()


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    assert main(_train(tmp_path / "run") + ["--resume", "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_empty_or_foreign_directory_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert not holds_run(str(tmp_path)) and not holds_run(str(tmp_path / "missing"))
    (tmp_path / "rollouts.000001.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))
    assert holds_run(str(tmp_path))


def test_a_folder_of_ones_own_files_with_a_runs_names_is_never_overwritten(tmp_path, capsys):
    """Before, config.yaml, mlruns/, wandb/ or checkpoints/ alone made a folder "a run":
    training there was refused with advice to use --overwrite, which then deleted them all."""
    own = tmp_path / "experiment"
    (own / "mlruns" / "0").mkdir(parents=True)
    (own / "mlruns" / "0" / "meta.yaml").write_text("artifact_uri: elsewhere\n")
    (own / "wandb").mkdir()
    (own / "wandb" / "run.txt").write_text("an older project's run")
    (own / "checkpoints").mkdir()
    (own / "checkpoints" / "other-model.bin").write_bytes(b"weights")
    (own / "config.yaml").write_text("# my settings\ntrain: {steps: 1}\n")
    assert not holds_run(str(own))
    before = _snapshot(own)
    for flags in ([], ["--overwrite"]):
        capsys.readouterr()
        assert main(_train(own, "train.steps=1") + flags) == 2, flags
        err = capsys.readouterr().err
        assert f"run directory {str(own)!r} holds " in err and "but no run" in err, err
        assert "config.yaml" in err and "mlruns" in err and "Move them, or choose another --output-dir" in err
        assert ("--overwrite would delete" in err) == bool(flags)
        assert _snapshot(own) == before, flags  # nothing read, written or deleted
    (own / "checkpoints" / "step-000004.pt").write_bytes(b"")  # a run's checkpoint: now it is a run
    assert holds_run(str(own))


@pytest.mark.parametrize("leftover", [".tmp-k2j3h4", "checkpoints/.tmp-x8a2"])
def test_leftovers_of_a_killed_write_alone_do_not_block_a_run(tmp_path, capsys, leftover):
    """A run killed during its first config.yaml write leaves only ``.tmp-*``. Before, every command
    refused the directory: a new run and --overwrite as "names a run writes, but no run", --resume
    as "no checkpoint ... start again with --overwrite"."""
    run = tmp_path / "run"
    (run / leftover).parent.mkdir(parents=True, exist_ok=True)
    (run / leftover).write_text(load_config(None, FAST_RUN).to_yaml())
    assert main(_train(run, "train.steps=1") + ["--resume"]) == 2
    assert "holds no run" in capsys.readouterr().err and (run / leftover).exists()
    assert main(_train(run, "train.steps=1", "train.save_every=1")) == 0
    assert not (run / leftover).exists() and (run / "summary.json").exists()
    (run / leftover).parent.mkdir(exist_ok=True)
    (run / leftover).write_text("half a checkpoint")
    assert main(_train(run, "train.steps=1", "train.save_every=1") + ["--overwrite"]) == 0
    assert not (run / leftover).exists()


def test_a_run_stopped_before_its_first_log_is_still_a_run(tmp_path, capsys):
    """A run stopped during its first evaluation has written config.yaml (and perhaps a tracker's
    folder) but no log. Its config.yaml says a run wrote it, so --overwrite may replace it."""
    run = tmp_path / "run"
    (run / "mlruns").mkdir(parents=True)
    (run / "config.yaml").write_text(RUN_CONFIG_HEADER + load_config(None, FAST_RUN).to_yaml())
    assert holds_run(str(run))
    assert main(_train(run, "train.steps=1")) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(_train(run, "train.steps=1", "train.save_every=1") + ["--overwrite"]) == 0
    assert not (run / "mlruns").exists() and (run / "config.yaml").read_text().startswith(RUN_CONFIG_HEADER)


def _lines(n, start=0, step=1):
    return [json.dumps({"step": step, "i": i, "pad": "x" * 200}) for i in range(start, start + n)]


def test_growing_logs_rotate_into_compressed_segments_and_read_back_whole(tmp_path):
    log = RunLog(str(tmp_path), World(), max_mb=2000 / 2**20, keep_segments=None)
    written = []
    for step in range(1, 11):
        lines = _lines(5, start=5 * step, step=step)
        log.write_lines("rollouts.jsonl", lines)
        written += lines
    parts = segments(str(tmp_path), "rollouts.jsonl")
    assert len(parts) >= 4 and all(p.endswith(".gz") for p in parts)
    assert all(os.stat(p).st_mode & 0o077 == 0 for p in parts)  # private, like the live log
    assert [text.rstrip("\n") for _f, _n, text in log_lines(str(tmp_path), "rollouts.jsonl")] == written
    # a resumed run drops what came after its checkpoint, in segments and live file alike
    log.truncate(4)
    kept = [json.loads(text)["step"] for _f, _n, text in log_lines(str(tmp_path), "rollouts.jsonl")]
    assert kept == [s for s in range(1, 5) for _ in range(5)]


def test_only_the_newest_segments_are_kept(tmp_path):
    log = RunLog(str(tmp_path), World(), max_mb=1000 / 2**20, keep_segments=2)
    for step in range(1, 21):
        log.write_lines("provenance.jsonl", _lines(5, start=5 * step, step=step))
    parts = segments(str(tmp_path), "provenance.jsonl")
    assert len(parts) == 2
    steps = [json.loads(text)["step"] for _f, _n, text in log_lines(str(tmp_path), "provenance.jsonl")]
    assert steps == sorted(steps) and steps[-1] == 20 and steps[0] > 1  # the oldest went, in order


def test_a_rotation_cut_short_loses_and_repeats_nothing(tmp_path):
    """A crash after the live file became a plain segment but before it was compressed (or
    before the plain copy was removed): the reader sees every line exactly once."""
    lines = _lines(30)
    (tmp_path / "rollouts.jsonl").write_text("\n".join(lines) + "\n")
    plain = tmp_path / "rollouts.000001.jsonl"
    os.replace(tmp_path / "rollouts.jsonl", plain)
    assert [t.rstrip("\n") for _f, _n, t in log_lines(str(tmp_path), "rollouts.jsonl")] == lines
    (tmp_path / "rollouts.000001.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    assert [t.rstrip("\n") for _f, _n, t in log_lines(str(tmp_path), "rollouts.jsonl")] == lines
    (tmp_path / "rollouts.jsonl").write_text(lines[0] + "\n")
    assert rotate_if_large(str(tmp_path), "rollouts.jsonl", 1, None, mode=0o600).endswith("000002.jsonl.gz")
    assert len([t for _f, _n, t in log_lines(str(tmp_path), "rollouts.jsonl")]) == 31


def test_rollouts_are_logged_on_every_kth_step_only(tmp_path):
    run = tmp_path / "run"
    assert main(_train(run, "train.steps=4", "train.log_rollouts_every=2")) == 0
    steps = {json.loads(t)["step"] for _f, _n, t in log_lines(str(run), "rollouts.jsonl")}
    assert steps == {2, 4}
    assert {json.loads(t)["step"] for _f, _n, t in log_lines(str(run), "provenance.jsonl")} == {2, 4}
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    assert log_exists(str(run), "rollouts.jsonl") and not log_exists(str(run), "eval_missing.jsonl")


@pytest.mark.parametrize("bad", ["train.log_rollouts_every=0", "train.log_max_mb=-1", "train.log_keep_segments=-2"])
def test_bad_log_settings_name_the_key(tmp_path, capsys, bad):
    assert main(_train(tmp_path / "run", bad)) == 2
    assert bad.split("=")[0] in capsys.readouterr().err
