"""A damaged run resumes, or says in one line what is damaged and what to do, and loses nothing:
a bad log line names ``file:line`` (only an unfinished last line, a crash's cut-off write, is
dropped), a bad checkpoint names the file, a bad model directory names the file it lacks."""

import errno
import gzip
import os
import shutil

import pytest
import torch

from distil_core.cli.main import main
from distil_core.config import load_config
from distil_core.errors import ConfigError, DistilError
from distil_core.models.lora import load_policy_state
from distil_core.testing import FAST_RUN, use_cache
from distil_core.training.checkpointing import latest_checkpoint, load_checkpoint
from distil_core.training.distributed import World
from distil_core.training.runlock import LOCK_NAME
from distil_core.training.runlog import RunLog
from distil_core.training.runtime import load_policy
from distil_core.training.trainer import Trainer

RUN = ["train.steps=2", "train.save_every=1"]  # as the shared `trained` run (conftest.py)


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the trained run, to damage."""
    return shutil.copytree(trained, tmp_path / "run")


def snapshot(root):
    """Every file's bytes, but the lock file's (it names the last process to take the run)."""
    found = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name == LOCK_NAME:
                continue
            with open(os.path.join(folder, name), "rb") as fh:
                found[os.path.relpath(os.path.join(folder, name), root)] = fh.read()
    return found


def one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# -- the step logs ---------------------------------------------------------------------------


def write_log(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() for line in lines))


BAD_LINES = {
    "cut_short": ('{"step": 0, "note": "precious"\n', "not a JSON line (Expecting ',' delimiter)"),
    "list": ("[1, 2]\n", 'not a step record (a JSON object with a numeric "step")'),
    "string_step": ('{"step": "3"}\n', 'not a step record (a JSON object with a numeric "step")'),
    "null_step": ('{"step": null}\n', 'not a step record (a JSON object with a numeric "step")'),
    "not_utf8": (b'{"step": 0, "note": "\xff"}\n', "not UTF-8 text"),
}


@pytest.mark.parametrize("name", ["metrics.jsonl", "eval.jsonl", "rollouts.jsonl", "provenance.jsonl"])
@pytest.mark.parametrize("bad", sorted(BAD_LINES))
def test_a_damaged_line_stops_the_resume_naming_file_and_line_and_changes_nothing(tmp_path, name, bad):
    line, said = BAD_LINES[bad]
    write_log(tmp_path / name, ['{"step": 1}\n', line, '{"step": 2}\n', '{"step": 3}\n'])
    before = snapshot(tmp_path)
    with pytest.raises(DistilError) as err:
        RunLog(str(tmp_path), World()).truncate(2)
    assert one_line(err) == (f"{tmp_path / name}:2: {said}; the log is damaged and --resume changed nothing: "
                             "fix or delete that line, then resume again.")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("refused", [1, 2, 4])
def test_a_disk_too_full_to_cut_the_logs_is_one_line_and_cuts_none(tmp_path, monkeypatch, refused):
    """Before: the resume died with a raw OSError (Errno 28) from the log it was rewriting, with
    metrics.jsonl already cut and the other logs not. Here the disk refuses the ``refused``-th
    file the resume makes durable (a full disk often says so only then, at fsync)."""
    for name in ("metrics.jsonl", "provenance.jsonl", "rollouts.jsonl", "eval.jsonl"):
        write_log(tmp_path / name, [f'{{"step": {step}, "log": "{name}"}}\n' for step in range(1, 5)])
    write_log(tmp_path / "rollouts.000001.jsonl", ['{"step": 0}\n', '{"step": 3}\n'])  # a rotation cut short
    before = snapshot(tmp_path)
    calls, real_fsync = [], os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == refused:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DistilError) as err:
        RunLog(str(tmp_path), World()).truncate(2)
    monkeypatch.undo()
    message = one_line(err)
    assert message.startswith("--resume could not cut ") and "back to step 2 (No space left on device)" in message
    assert "no log was changed: free some space" in message
    assert snapshot(tmp_path) == before and not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    RunLog(str(tmp_path), World()).truncate(2)  # with room again, every log is cut
    assert all((tmp_path / n).read_text().count("step") == 2 for n in ("metrics.jsonl", "eval.jsonl", "rollouts.jsonl"))
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("rollouts.0")) == ["rollouts.000001.jsonl.gz"]


def test_a_damaged_first_line_is_kept_and_named(tmp_path):
    write_log(tmp_path / "metrics.jsonl", ['{"step": 0, "note": "precious"\n', '{"step": 1}\n'])
    with pytest.raises(DistilError, match=r"metrics\.jsonl:1: not a JSON line"):
        RunLog(str(tmp_path), World()).truncate(1)
    assert (tmp_path / "metrics.jsonl").read_text().startswith('{"step": 0, "note": "precious"\n')


def test_a_damaged_line_in_a_rotated_segment_is_named_there(tmp_path):
    segment = tmp_path / "rollouts.000001.jsonl.gz"
    segment.write_bytes(gzip.compress(b'{"step": 1}\n[1, 2]\n'))
    (tmp_path / "rollouts.jsonl").write_text('{"step": 2}\n')
    with pytest.raises(DistilError, match=rf"^{segment}:2: not a step record"):
        RunLog(str(tmp_path), World()).truncate(2)


@pytest.mark.parametrize("tail", ['{"step": 4, "lo', b'{"step": 4, "note": "\xe2\x82', "[1, "])
def test_an_unfinished_last_line_is_dropped(tmp_path, tail):
    """The tail of a write a crash cut short (no newline) is written again by the resumed run."""
    write_log(tmp_path / "metrics.jsonl", ['{"step": 1}\n', '{"step": 2}\n', '{"step": 3}\n', tail])
    RunLog(str(tmp_path), World()).truncate(2)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_a_whole_last_line_without_its_newline_is_kept_and_ended(tmp_path):
    """The next line appended starts a line of its own instead of running into this one."""
    write_log(tmp_path / "eval.jsonl", ['{"step": 1}\n', '{"step": 2}'])
    RunLog(str(tmp_path), World()).truncate(2)
    assert (tmp_path / "eval.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_the_cli_says_which_line_in_one_line_and_the_run_is_left_as_it_was(run, capsys):
    metrics = run / "metrics.jsonl"
    metrics.write_text('{"step": 0, "note": "precious"\n' + metrics.read_text())
    before = snapshot(run)
    args = ["train", "--quiet", "--output-dir", str(run), "--resume"]
    for item in FAST_RUN + ["train.steps=3", "train.save_every=1"]:
        args += ["--set", item]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{metrics}:1: not a JSON line" in err.strip().splitlines()[-1]
    assert snapshot(run) == before


# -- checkpoints -----------------------------------------------------------------------------


def resume(run, *overrides):
    return Trainer(load_config(None, FAST_RUN + RUN + list(overrides)), run_dir=str(run), resume=True,
                   echo=lambda *_: None)


DAMAGES = {
    "cut_short": (lambda p: os.truncate(p, os.path.getsize(p) // 2), "cut short or not a checkpoint: PytorchStreamReader"),
    "text": (lambda p: open(p, "w").write("not a checkpoint\n"), "not a checkpoint: Unsupported operand"),
    "empty": (lambda p: open(p, "w").close(), "not a checkpoint: it ends before its data"),
    "lacks_keys": (lambda p: torch.save({"step": 2}, p), "it lacks 'model', 'optimizer', 'scheduler', 'rng'"),
    "not_a_dict": (lambda p: torch.save([1, 2], p), "it holds a list, not a checkpoint"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_checkpoint_is_one_line_that_says_to_delete_it(run, damage):
    spoil, said = DAMAGES[damage]
    path = latest_checkpoint(str(run))
    assert path.endswith("step-000002.pt")
    spoil(path)
    with pytest.raises(DistilError) as err:
        load_checkpoint(path)
    message = one_line(err)
    assert message.startswith(f"checkpoint {path} is damaged ({said}")
    assert message.endswith("); delete it to resume from an earlier one, or start the run again (--overwrite).")


class RunsACommand:
    """What a crafted checkpoint can hold: unpickling it calls ``os.system``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_checkpoint_that_would_run_code_when_loaded_is_refused_and_runs_nothing(run, tmp_path):
    path = latest_checkpoint(str(run))
    state = load_checkpoint(path)
    marker = tmp_path / "ran"
    state["expert"] = {"model": RunsACommand(f"touch {marker}")}
    torch.save(state, path)
    with pytest.raises(DistilError) as err:
        resume(run)
    assert not marker.exists()
    assert one_line(err).startswith(f"checkpoint {path} holds GLOBAL posix.system, which is not a tensor or a "
                                    "plain value; loading it would run code stored in the file, so it is refused.")


def test_a_deleted_damaged_checkpoint_resumes_from_the_earlier_one(run):
    newest = latest_checkpoint(str(run))
    os.truncate(newest, 100)
    with pytest.raises(DistilError, match="is damaged"):
        resume(run)
    os.unlink(newest)  # as the error says
    assert latest_checkpoint(str(run)).endswith("step-000001.pt")
    assert resume(run).step == 1


def test_a_latest_pointer_that_is_a_directory_is_one_line(run):
    latest = run / "checkpoints" / "latest"
    latest.unlink()
    latest.mkdir()
    with pytest.raises(DistilError) as err:
        latest_checkpoint(str(run))
    assert one_line(err).startswith(f"checkpoint pointer {latest} is damaged (a directory")
    latest.rmdir()  # as the error says
    assert latest_checkpoint(str(run)).endswith("step-000002.pt")


def test_a_checkpoint_of_another_model_size_is_one_line(run):
    path = latest_checkpoint(str(run))
    state = load_checkpoint(path)
    width = state["model"]["model.embed_tokens.weight"].shape
    state["model"]["model.embed_tokens.weight"] = torch.zeros(width[0], width[1] * 2)
    torch.save(state, path)
    with pytest.raises(ConfigError) as err:
        resume(run)
    assert one_line(err) == (
        f"checkpoint {path} does not fit this run's model ('model.embed_tokens.weight' is "
        f"[{width[0]}, {width[1] * 2}] in it, [{width[0]}, {width[1]}] in this model): resume with the config the "
        "run was started with (its config.yaml, without --set changes to the model).")


def test_a_checkpoint_of_another_methods_run_is_refused(run):
    """Before, a grpo run's checkpoint copied into a distil run resumed without a word: its
    optimizer state and weights trained on as distil's. One older than the method record passes."""
    path = latest_checkpoint(str(run))
    state = load_checkpoint(path)
    assert state["method"] == load_config(None, FAST_RUN + RUN).method
    torch.save({**state, "method": "grpo"}, path)
    with pytest.raises(DistilError) as err:
        resume(run)
    assert one_line(err) == (f"{path}: a checkpoint of a grpo run, and this run trains with "
                             f"{state['method']}; resume it with its own run's config, or start this run again "
                             "(--overwrite).")
    torch.save({k: v for k, v in state.items() if k != "method"}, path)
    resume(run)  # built and restored without the record


def test_a_policy_state_lacking_or_adding_a_weight_is_one_line():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    with pytest.raises(ConfigError, match=r"^checkpoint x does not fit this run's model \(it lacks '0.bias'\)"):
        load_policy_state(model, {"0.weight": torch.zeros(3, 2)}, where="checkpoint x")
    extra = {**model.state_dict(), "1.weight": torch.zeros(1)}
    with pytest.raises(ConfigError, match=r"\(it holds '1.weight', which this model has not\)"):
        load_policy_state(model, extra, where="checkpoint x")


# -- model directories -----------------------------------------------------------------------


def remove_tokenizer(path):
    for name in os.listdir(path):
        if name.startswith("tokenizer"):
            os.unlink(os.path.join(path, name))


MODEL_DAMAGES = {
    "no_weights": (lambda d: os.unlink(d / "model.safetensors"), "it has no weights file (model.safetensors)"),
    "cut_weights": (lambda d: os.truncate(d / "model.safetensors", 100), "model.safetensors is damaged (Error "),
    "no_config": (lambda d: os.unlink(d / "config.json"), "it has no config.json"),
    "bad_config": (lambda d: (d / "config.json").write_text("{"), "config.json is damaged (not valid JSON)"),
    "no_tokenizer": (remove_tokenizer, "it has no tokenizer file (tokenizer.json or "),
}


def assert_damage_is_named(final, damage, kind):
    """``final`` loads whole; spoiled by ``damage`` (spoil, what the error says), loading it is one
    line naming the ``kind`` of directory and its file."""
    config = load_config(None, FAST_RUN + [f"model.name={final}"])
    load_policy(config, None, progress=False)
    spoil, said = damage
    spoil(final)
    with pytest.raises(ConfigError) as err:
        load_policy(config, None, progress=False)
    assert one_line(err).startswith(f"{kind} directory {str(final)!r} cannot be loaded: {said}")


@pytest.mark.parametrize("damage", sorted(MODEL_DAMAGES))
def test_a_damaged_model_directory_names_the_file_in_one_line(run, damage):
    assert_damage_is_named(run / "final", MODEL_DAMAGES[damage], "model")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_base_cache_dir):
    """The final/ of a finished LoRA run: a peft adapter directory on the cached tiny base."""
    run = tmp_path_factory.mktemp("lora") / "run"
    with use_cache(tiny_base_cache_dir):
        Trainer(load_config(None, FAST_RUN + ["model.lora={}", "train.steps=1", "train.save_every=0"]),
                run_dir=str(run), echo=lambda *_: None).fit()
    return run / "final"


ADAPTER_DAMAGES = {
    "no_weights": (lambda d: os.remove(d / "adapter_model.safetensors"),
                   "it has no adapter weights (adapter_model.safetensors)"),
    "cut_weights": (lambda d: os.truncate(d / "adapter_model.safetensors", 20), "adapter_model.safetensors is damaged ("),
    "config_not_json": (lambda d: (d / "adapter_config.json").write_text("{not json"),
                        "adapter_config.json is damaged (not valid JSON)"),
}


@pytest.mark.parametrize("damage", sorted(ADAPTER_DAMAGES))
def test_a_damaged_adapter_directory_names_the_file_in_one_line(adapters, tmp_path, tiny_base_cache, damage):
    assert_damage_is_named(shutil.copytree(adapters, tmp_path / "final"), ADAPTER_DAMAGES[damage], "adapter")
