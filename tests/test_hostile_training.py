"""A run under attack from its own numbers and its own disk: NaN gradients never move the
weights, a run directory that cannot be one is refused in one line, a full disk while
checkpointing keeps the last good checkpoint, and what the run writes is private."""

import contextlib
import errno
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest
import torch

from distil_core.config import load_config
from distil_core.errors import DistilError
from distil_core.testing import FAST_RUN, distil_env, use_cache
from distil_core.training import checkpointing
from distil_core.training.checkpointing import latest_checkpoint, load_checkpoint
from distil_core.training.guards import RunGuard, nonfinite_remedies
from distil_core.training.trainer import Trainer
from distil_core.training.update import merged_steps, optimizer_step

# z / τ overflows float32 for τ this small: the expert's distribution, and so the gradient, is
# NaN, though every input is a finite, valid config value
NAN_GRADIENT = ["loss.expert_temperature=1e-45", "loss.no_signal=keep"]


@pytest.fixture(scope="module", autouse=True)
def _cache(tiny_base_cache_dir):
    with use_cache(tiny_base_cache_dir):
        yield


def trainer_for(run_dir, *overrides):
    return Trainer(load_config(None, FAST_RUN + list(overrides)), run_dir=str(run_dir), echo=lambda *_: None)


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- non-finite steps ------------------------------------------------------------------------


def test_a_nan_gradient_skips_the_update_and_leaves_the_weights_as_they_were(tmp_path):
    trainer = trainer_for(tmp_path, *NAN_GRADIENT)
    start = weights(trainer.model)
    row = trainer.train_step(1)
    assert row["skipped_nonfinite"] == 1 and math.isnan(row["grad_norm"])
    assert all(torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert not trainer.optimizer.state  # AdamW's moments never saw the NaN
    assert all(p.grad is None for p in trainer.model.parameters())
    assert trainer.scheduler.last_epoch == 0


def test_an_optimizer_step_with_nan_or_inf_gradients_or_loss_is_skipped(tmp_path):
    trainer = trainer_for(tmp_path)
    learner, start = trainer.learner, weights(trainer.model)
    for loss, poison in ((1.0, math.nan), (1.0, math.inf), (math.nan, 0.0), (math.inf, 0.0)):
        for p in trainer.model.parameters():
            p.grad = torch.full_like(p, poison)
        totals = optimizer_step(learner, {"loss": loss})
        assert totals["skipped_nonfinite"] == 1, (loss, poison)
        assert all(torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))
    for p in trainer.model.parameters():  # a finite step still moves them
        p.grad = torch.full_like(p, 0.01)
    assert optimizer_step(learner, {"loss": 1.0})["skipped_nonfinite"] == 0
    assert any(not torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))


def test_non_finite_steps_in_a_row_stop_the_run_in_one_line(tmp_path):
    trainer = trainer_for(tmp_path, *NAN_GRADIENT, "train.max_nonfinite_steps=2", "train.save_every=0")
    start = weights(trainer.model)
    with pytest.raises(DistilError) as err:
        trainer.fit()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("step 2: the loss or gradient norm was not finite for 2 steps in a row")
    assert "none of them moved the weights, which are those after step 0" in message and "train.max_nonfinite_steps" in message
    assert "raise loss.expert_temperature (now 1e-45)" in message
    assert [r["skipped_nonfinite"] for r in rows(tmp_path)] == [1, 1]
    assert all(torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))


def test_a_batch_of_several_optimizer_steps_is_a_non_finite_step_only_when_none_moved_the_weights():
    """With optim.epochs or optim.minibatches above 1, a batch takes several optimizer steps.
    Before, one skipped step of two marked the batch ``skipped_nonfinite: 1`` and counted it
    towards train.max_nonfinite_steps, whose message then said no step had moved the weights."""
    good = {"loss": 1.0, "grad_norm": 0.5, "skipped_nonfinite": 0}
    bad = {"loss": math.nan, "grad_norm": math.nan, "skipped_nonfinite": 1}
    partial, none_taken = merged_steps([bad, good, good]), merged_steps([bad, bad])
    assert (partial["skipped_nonfinite"], partial["optimizer_steps"]) == (1, 3)
    assert (none_taken["skipped_nonfinite"], none_taken["optimizer_steps"]) == (2, 2)
    guard = RunGuard(load_config(None, FAST_RUN + ["train.max_nonfinite_steps=2"]))
    for step in range(1, 6):
        guard.observe({"step": step, **partial})  # the weights moved on every step: no stop
    guard.observe({"step": 6, **none_taken})
    guard.observe({"step": 7, **partial})  # resets the count
    guard.observe({"step": 8, **none_taken})
    with pytest.raises(DistilError, match="not finite for 2 steps in a row .* which are those after step 7"):
        guard.observe({"step": 9, **none_taken})


@pytest.mark.parametrize("overrides, said", [
    (["method=distil"], "raise loss.expert_temperature (now unset, so distil's own 0.5)"),
    (["method=distil", "loss.expert_temperature=2"], "raise loss.expert_temperature (now 2)"),
    (["method=jsd"], "raise loss.expert_temperature (now unset, so jsd's own 0.5)"),
    (["method=reverse_kl"], "raise loss.expert_temperature (now unset, so reverse_kl's own 1)"),
])
def test_the_advice_after_non_finite_steps_names_the_expert_temperature_the_run_uses(overrides, said):
    """Before: "raise loss.expert_temperature" whether it was set or left to the method, which
    tempers its expert at 0.5 (`distil`) without the config saying so."""
    assert said in nonfinite_remedies(load_config(None, overrides))


def test_the_advice_after_non_finite_steps_names_no_expert_setting_for_a_method_without_one():
    assert nonfinite_remedies(load_config(None, ["method=grpo"])) == "Lower optim.lr"


# -- the run directory -------------------------------------------------------------------------


def read_only_place(tmp_path):
    """A directory this process cannot create anything in (root ignores permission bits; sysfs
    refuses even root)."""
    if os.geteuid() == 0:
        return "/sys/distil-run"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return str(locked / "run")


@pytest.mark.parametrize("place", ["read_only", "file_in_the_way", "file_as_parent"])
def test_an_output_dir_that_cannot_be_a_run_directory_is_one_line_before_any_work(tmp_path, place):
    (tmp_path / "a_file").write_text("not a directory")
    target = {"read_only": read_only_place(tmp_path), "file_in_the_way": str(tmp_path / "a_file"),
              "file_as_parent": str(tmp_path / "a_file" / "run")}[place]
    with pytest.raises(DistilError) as err:
        trainer_for(target)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"run directory {target!r} (--output-dir / train.output_dir)")
    assert "Choose a directory you can write to." in message


def test_the_cli_says_so_in_one_line_without_a_traceback(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    result = subprocess.run([sys.executable, "-m", "distil_core.cli", "train", "--output-dir", str(tmp_path / "a_file"),
                             "--set", "train.progress=false"], capture_output=True, text=True, timeout=120,
                            env=distil_env())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be created: File exists" in lines[0]


class FullAfter:
    """A file that takes ``room`` bytes, then refuses every write as a full disk does."""

    def __init__(self, fh, room: int):
        self.fh, self.room = fh, room

    def write(self, data):
        data = memoryview(data).cast("B")
        if len(data) > self.room:
            self.fh.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def flush(self):
        self.fh.flush()


def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = trainer_for(tmp_path)  # 4 steps, a checkpoint every 2
    real_atomic_file = checkpointing.atomic_file

    @contextlib.contextmanager
    def atomic_file(path, **kwargs):  # the disk fills up after the first checkpoint
        with real_atomic_file(path, **kwargs) as fh:
            yield FullAfter(fh, 4096) if path.endswith("step-000004.pt") else fh

    # torch's own writer meets the refused write (it answers with a RuntimeError of its own)
    monkeypatch.setattr(checkpointing, "atomic_file", atomic_file)
    with pytest.raises(DistilError) as err:
        trainer.fit()
    message, kept = str(err.value), os.path.join(str(tmp_path), "checkpoints", "step-000002.pt")
    assert "\n" not in message
    assert message == (f"step 4: the checkpoint could not be written to {tmp_path}/checkpoints (No space left on "
                       f"device); the last good checkpoint, {kept}, is kept: free some space, then continue from "
                       f"it with --output-dir {tmp_path} --resume.")
    assert latest_checkpoint(str(tmp_path)) == kept and load_checkpoint(kept)["step"] == 2
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step-000002.pt"]  # no half-written file


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device every write to fails with ENOSPC)")
def test_a_log_write_the_disk_refuses_is_one_line_and_the_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = trainer_for(run, "train.save_every=2")  # 4 steps
    metrics, real_save = run / "metrics.jsonl", Trainer.save

    def save_then_fill_the_disk(self):
        real_save(self)
        if self.step == 2:  # from now on every write of metrics.jsonl meets a full disk (ENOSPC)
            os.replace(metrics, tmp_path / "kept.jsonl")
            os.symlink("/dev/full", metrics)

    monkeypatch.setattr(Trainer, "save", save_then_fill_the_disk)
    with pytest.raises(DistilError) as err:
        trainer.fit()
    assert str(err.value) == (f"could not write {metrics} (No space left on device); the checkpoints are kept: free "
                              f"some space (or fix the directory), then continue from the last one with --output-dir "
                              f"{run} --resume.")
    # space again, and the line the refused write had begun on disk
    os.unlink(metrics)
    os.replace(tmp_path / "kept.jsonl", metrics)
    with open(metrics, "a") as fh:
        fh.write('{"step": 3, "loss": 0.1')
    monkeypatch.undo()
    resumed = Trainer(load_config(None, FAST_RUN + ["train.save_every=2"]), run_dir=str(run), resume=True,
                      echo=lambda *_: None)
    resumed.fit()
    assert [row["step"] for row in rows(run)] == [1, 2, 3, 4]


# The run directory on a small tmpfs in a mount namespace of its own; what the disk held is
# copied out before the namespace, and the tmpfs with it, goes away. A checkpoint of FAST_RUN's
# model is about 2,450 KiB, the logs about 50 KiB, the final model directory about 615 KiB.
ON_A_SMALL_DISK = """
mount -t tmpfs -o size="$3" distil-full "$1" || exit 99
"$0" -m distil_core.cli train --output-dir "$1/run" "${@:4}" >"$2/stdout" 2>"$2/stderr"
echo $? >"$2/rc"
ls -A "$1/run" >"$2/run"
ls -A "$1/run/checkpoints" >"$2/checkpoints"
cat "$1/run/checkpoints/latest" >"$2/latest"
"""
FULL_DISKS = {  # what fills the disk: (its size, the checkpoints, what the one line says)
    "second_checkpoint": ("3584k", "train.save_every=2", "step-000002.pt",
                          "step 4: the checkpoint could not be written to {run}/checkpoints (No space left on "
                          "device); the last good checkpoint, {run}/checkpoints/step-000002.pt, is kept: free some "
                          "space, then continue from it with --output-dir {run} --resume."),
    "final_model": ("2800k", "train.save_every=4", "step-000004.pt",
                    "the final model could not be written to {run}/final (Error while serializing: I/O error: No "
                    "space left on device (os error 28)); the checkpoint of step 4 is kept: free some space, then "
                    "run again with --output-dir {run} --resume."),
}


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="mounting a small tmpfs needs root")
@pytest.mark.parametrize("filled_by", sorted(FULL_DISKS))
def test_a_really_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, filled_by):
    size, save_every, kept, said = FULL_DISKS[filled_by]
    disk, seen = tmp_path / "disk", tmp_path / "seen"
    disk.mkdir()
    seen.mkdir()
    overrides = [arg for override in FAST_RUN + [save_every] for arg in ("--set", override)]
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", ON_A_SMALL_DISK,
                             sys.executable, str(disk), str(seen), size, *overrides],
                            capture_output=True, text=True, timeout=300, env=distil_env())
    assert result.returncode == 0, result.stderr  # the script's own status; the run's is in seen/rc
    stderr = (seen / "stderr").read_text()
    assert (seen / "rc").read_text().strip() == "1" and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "error: " + said.format(run=f"{disk}/run")  # after the run's header
    assert (seen / "checkpoints").read_text().split() == ["latest", kept]  # nothing half-written
    assert (seen / "latest").read_text() == kept
    assert "final" not in (seen / "run").read_text().split()


# A run stopped by a full disk, then resumed on that disk with 8 KiB left: too little to write the
# cut logs. The logs' checksums before and after the resume, and what the run directory holds.
RESUMED_ON_A_FULL_DISK = """
mount -t tmpfs -o size=6m distil-full "$1" || exit 99
"$0" -m distil_core.cli train --output-dir "$1/run" "${@:3}" >"$2/first" 2>&1
avail=$(df -B1 --output=avail "$1" | tail -1)
head -c $((avail - 8192)) /dev/zero >"$1/filler"
sha256sum "$1"/run/*.jsonl >"$2/before"
"$0" -m distil_core.cli train --output-dir "$1/run" --resume >"$2/stdout" 2>"$2/stderr"
echo $? >"$2/rc"
sha256sum "$1"/run/*.jsonl >"$2/after"
ls -A "$1/run" "$1/run/checkpoints" >"$2/run"
"""


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="mounting a small tmpfs needs root")
def test_a_resume_on_a_full_disk_is_one_line_and_cuts_no_log(tmp_path):
    """Before: a raw OSError traceback (Errno 28) out of the resume, metrics.jsonl cut back to the
    checkpoint and the other logs not."""
    disk, seen = tmp_path / "disk", tmp_path / "seen"
    disk.mkdir()
    seen.mkdir()
    overrides = [arg for override in FAST_RUN + ["train.steps=10", "train.save_every=2"] for arg in ("--set", override)]
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", RESUMED_ON_A_FULL_DISK,
                             sys.executable, str(disk), str(seen), *overrides],
                            capture_output=True, text=True, timeout=300, env=distil_env())
    assert result.returncode == 0, result.stderr
    assert "No space left on device" in (seen / "first").read_text()  # the first session stopped at a checkpoint
    stderr = (seen / "stderr").read_text()
    assert (seen / "rc").read_text().strip() == "1" and "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --resume could not cut {disk}/run/"), stderr
    assert "(No space left on device); no log was changed: free some space" in lines[0]
    assert (seen / "after").read_text() == (seen / "before").read_text()
    assert ".tmp-" not in (seen / "run").read_text()


def test_run_files_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        trainer_for(run, "train.steps=1", "train.save_every=1").fit()
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(run) == 0o750 and mode(run / "checkpoints") == 0o750
    for name in ("metrics.jsonl", "rollouts.jsonl", "provenance.jsonl", "eval.jsonl", "config.yaml", "summary.json"):
        assert mode(run / name) == 0o600, name
    assert mode(run / "checkpoints" / "step-000001.pt") == 0o600
    assert "reference" in (run / "rollouts.jsonl").read_text()  # what the privacy is for


# -- plugins that raise -----------------------------------------------------------------------


class Raising:
    """A plugin whose call fails where a real one does: inside a library it calls (a reply that
    is not JSON), from a plain method, a coroutine or a generator."""

    def __init__(self, kind: str):
        self.kind = kind

    def fail(self, *_args, **_kwargs):
        if self.kind == "plain":
            return json.loads("{not json")

        async def later():
            return json.loads("{not json")

        def items():
            yield json.loads("{not json")

        return later() if self.kind == "coroutine" else items()

    feedback = verify = score = fail


@pytest.mark.parametrize("role, kind", [(role, kind) for role in ("feedback source", "verifier", "expert")
                                        for kind in ("plain", "coroutine")] + [("feedback source", "generator")])
def test_a_plugin_that_raises_stops_the_run_with_one_error_naming_it(tmp_path, role, kind):
    """Before, the exception reached the user as a traceback that named neither the plugin nor
    where it was raised; a coroutine's, raised among the step's others, had no owner at all, and a
    feedback source's generator (whose body runs as the toolkit reads it) had none either."""
    trainer = trainer_for(tmp_path)
    rt, plugin = trainer.rt, Raising(kind)
    if role == "feedback source":
        rt.feedback_sources = [(name, source) for name, source in rt.feedback_sources] + [("critic", plugin)]
        name = "critic"
    elif role == "verifier":
        rt.verifier, name = plugin, trainer.config.verifier.name
    else:
        rt.expert, name = plugin, trainer.config.expert.name
    with pytest.raises(DistilError) as caught:
        trainer.train_step(1)
    message = str(caught.value)
    assert message.startswith(f"{role} {name!r} raised JSONDecodeError: Expecting property name")
    # the library's line, and the plugin's own line that called it
    function = {"plain": "fail", "coroutine": "later", "generator": "items"}[kind]
    assert re.search(rf"\(at json/decoder\.py:\d+ in raw_decode, from tests/test_hostile_training\.py:\d+ in "
                     rf"{function}\)\. Check the plugin", message), message
    assert isinstance(caught.value.__cause__, json.JSONDecodeError)  # kept for whoever debugs the plugin
