"""What ``--resume`` checks before it continues a run: that the config changes only how the run
is run (never what it trains), that every part of the checkpoint fits the run, that the logs and
the checkpoint folder can be read; and what it tidies (writes a killed run left unfinished)."""

import gzip
import json
import os
import shutil

import pytest
import torch

from distil_core.cli.main import main
from distil_core.config import load_config, resume_changes
from distil_core.errors import ConfigError, DistilError
from distil_core.run_files import RUN_CONFIG_HEADER, temporaries
from distil_core.testing import FAST_RUN, use_cache
from distil_core.training.checkpointing import checkpoint_names, latest_checkpoint, load_checkpoint, save_checkpoint
from distil_core.training.runlock import LOCK_NAME
from distil_core.training.trainer import Trainer

RUN = ["train.steps=2", "train.save_every=1"]  # as the shared `trained` run (conftest.py)


@pytest.fixture
def run(trained, tmp_path, tiny_base_cache_dir):
    """A copy of the trained run, to resume or damage."""
    with use_cache(tiny_base_cache_dir):
        yield shutil.copytree(trained, tmp_path / "run")


def resume(run, *overrides):
    return Trainer(load_config(None, FAST_RUN + RUN + list(overrides)), run_dir=str(run), resume=True,
                   echo=lambda *_: None)


def files(root):
    """Every file's modification time, but the lock file's (it names the last process to take the run)."""
    return {os.path.relpath(os.path.join(d, n), root): os.path.getmtime(os.path.join(d, n))
            for d, _, names in os.walk(root) for n in names if n != LOCK_NAME}


# -- the config --------------------------------------------------------------------------------


@pytest.mark.parametrize("change, named", [
    ("optim.lr=0.05", "optim.lr: 0.0003 → 0.05"),
    ("method=grpo", "method: 'distil' → 'grpo'"),
    ("seed=7", "seed: 0 → 7"),
    ("task.options.length=4", "task.options.length: 2 → 4"),
])
def test_a_resume_that_changes_what_the_run_trains_is_refused_naming_the_key_and_touches_nothing(run, change, named):
    """Before: accepted; config.yaml said the new value while the optimizer's saved state kept
    the old learning rate, and a changed task compared a "before" on one task with an "after"
    on another."""
    before = files(run)
    with pytest.raises(ConfigError) as err:
        resume(run, change)
    message = str(err.value)
    assert "\n" not in message and named in message and "--resume continues the run" in message
    assert files(run) == before


@pytest.mark.parametrize("line, edit, named", [
    ("  lr: 0.0003\n", "  lr: 0.05\n", "optim.lr: 0.0003 → 0.05"),
    ("    length: 2\n", "    length: 4\n", "task.options.length: 2 → 4"),
])
def test_an_edited_config_yaml_is_refused_against_the_config_the_checkpoint_records(run, capsys, line, edit, named):
    """Before: --resume compared the config it read from config.yaml with config.yaml itself, so an
    edited learning rate resumed silently (the optimizer kept 0.0003), an edited task trained on
    another task. The checkpoint records the config it was trained with."""
    saved = (run / "config.yaml").read_text()
    assert saved.count(line) == 1
    (run / "config.yaml").write_text(saved.replace(line, edit))
    before = files(run)
    assert main(["train", "--quiet", "--output-dir", str(run), "--resume", "--set", "train.steps=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and named in err and "step-000002.pt was trained with" in err, err
    assert f"config.yaml says so too ({named.split(':')[0]})" in err and "put its old values back" in err
    assert files(run) == before


def test_a_checkpoint_without_the_record_is_compared_with_config_yaml(run):
    """Checkpoints written before they recorded their config resume as they did: against config.yaml."""
    path = latest_checkpoint(str(run))
    state = load_checkpoint(path)
    assert state["config"]["optim"]["lr"] == 0.0003
    del state["config"]
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"with the config it started with \(.*config.yaml\).*optim.lr: 0.0003 → 0.05"):
        resume(run, "optim.lr=0.05")
    resume(run, "train.steps=3").fit()


def test_the_recorded_config_hides_secrets_and_a_rotated_one_is_no_change():
    from distil_core.config import recorded_changes, trained_record

    saved = load_config(None, ["expert.options={weights: frozen, api_key: old}"])
    record = trained_record(saved)
    assert record["expert"]["options"]["api_key"] == "***"
    assert recorded_changes(record, load_config(None, ["expert.options={weights: frozen, api_key: new}"])) == []
    assert recorded_changes(record, load_config(None, ["expert.options={weights: live, api_key: old}"])) == [
        ("expert.options.weights", "frozen", "live")]


def test_length_logging_saving_and_device_may_change_on_resume(run):
    trainer = resume(run, "train.steps=3", "train.save_every=3", "train.eval_every=0", "train.log_every=2",
                     "model.device=cpu", "train.progress=false")
    trainer.fit()
    assert trainer.step == 3 and "steps: 3" in (run / "config.yaml").read_text()


def test_a_rotated_secret_is_not_a_change_but_a_plugin_option_is():
    saved = load_config(None, ["expert.options={weights: frozen, api_key: old}"])
    rotated = load_config(None, ["expert.options={weights: frozen, api_key: new}"])
    other = load_config(None, ["expert.options={weights: live, api_key: old}"])
    assert resume_changes(saved, rotated) == []
    assert resume_changes(saved, other) == [("expert.options.weights", "frozen", "live")]


def test_a_finished_run_is_the_same_result_whatever_it_logged_but_not_whatever_it_resumed_with():
    """A bench reuses a finished run where the configs differ only in how the run was watched and
    kept (logs, saving, trackers, a secret); a longer run, another evaluation interval or device
    are other results, though a resume may change them."""
    from distil_core.config import WATCHING, result_changes

    saved = load_config(None, ["expert.options={weights: frozen, api_key: old}"])
    watched = load_config(None, ["expert.options={weights: frozen, api_key: new}", "train.log_rollouts=false",
                                 "train.report_to=[wandb]", "train.save_every=5", "train.output_dir=elsewhere",
                                 "train.log_every=3", "train.progress=false"])
    assert result_changes(saved, watched) == []
    assert {key for key, _old, _new in resume_changes(saved, watched)} == set()
    other = load_config(None, ["expert.options={weights: frozen, api_key: old}", "train.steps=7",
                               "train.eval_every=1", "model.device=cpu", "optim.lr=0.5"])
    changed = {key for key, _old, _new in result_changes(saved, other)}
    assert changed == {"train.steps", "train.eval_every", "model.device", "optim.lr"}
    assert {key for key, _old, _new in resume_changes(saved, other)} == {"optim.lr"}
    assert {key for key, _old, _new in result_changes(saved, watched, watching=True)} == {
        "train.log_rollouts", "train.report_to", "train.save_every", "train.output_dir", "train.log_every",
        "train.progress"} <= set(WATCHING)


def test_what_a_finished_run_differs_in_is_told_without_its_secrets():
    """The bench's refusal quotes both values of every key that differs: a password inside an
    address, or a header that holds a token, must not reach the terminal."""
    from distil_core.config import result_changes

    saved = load_config(None, ["expert.options={weights: frozen, base_url: 'https://u:hunter2@h/v1'}"])
    given = load_config(None, ["expert.options={weights: live, base_url: 'https://u:other@h/v1', "
                               "headers: {Authorization: 'Bearer sk-xyz'}}"])
    changes = result_changes(saved, given)
    assert [key for key, _old, _new in changes] == ["expert.options.headers", "expert.options.weights"]
    assert "hunter2" not in repr(changes) and "sk-xyz" not in repr(changes) and "other" not in repr(changes)


@pytest.fixture
def empty_cache(tmp_path):
    """A tiny-base cache with nothing in it: what a command builds before it refuses shows there."""
    with use_cache(tmp_path / "empty-cache") as cache:
        os.mkdir(cache)
        yield tmp_path / "empty-cache"


def test_resume_of_a_missing_directory_is_refused_at_once_and_creates_nothing(tmp_path, capsys, empty_cache):
    """Before: a mistyped --output-dir loaded the config, created the directory and built the tiny
    base (minutes, for the default run) before it said there was no checkpoint."""
    typo = tmp_path / "runs" / "typo"
    sets = [a for item in FAST_RUN for a in ("--set", item)]
    assert main(["train", "--quiet", *sets, "--output-dir", str(typo), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{str(typo)!r} is not a run directory (no such directory)" in err, err
    assert "leave --resume out to start a new run" in err
    with pytest.raises(ConfigError, match="no such directory"):  # the library refuses it alike
        Trainer(load_config(None, FAST_RUN), run_dir=str(typo), resume=True, echo=lambda *_: None)
    assert not (tmp_path / "runs").exists() and os.listdir(empty_cache) == []


def test_resume_of_a_directory_without_a_run_or_checkpoint_is_refused_before_anything_is_built(
        tmp_path, capsys, empty_cache):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--quiet", "--output-dir", str(empty), "--resume"]) == 2
    assert f"{str(empty)!r} holds no run" in capsys.readouterr().err
    assert os.listdir(empty) == []
    # a run stopped before its first checkpoint (it wrote config.yaml, then was killed)
    (empty / "config.yaml").write_text(RUN_CONFIG_HEADER + load_config(None, FAST_RUN).to_yaml())
    assert main(["train", "--quiet", "--output-dir", str(empty), "--resume"]) == 1
    assert "no checkpoint in" in capsys.readouterr().err
    assert os.listdir(empty_cache) == []  # refused before the tiny base was built


def test_the_cli_refuses_to_guess_the_config_of_a_run_without_config_yaml(run, capsys):
    """Before: the embedded default config was used without a word."""
    (run / "config.yaml").unlink()
    assert main(["train", "--quiet", "--output-dir", str(run), "--resume"]) == 2
    assert "has no config.yaml" in capsys.readouterr().err


def test_a_resume_to_fewer_steps_than_the_run_has_taken_is_refused_and_changes_nothing(run):
    """Before: accepted; config.yaml was rewritten to say 1 step while summary.json said 2."""
    before = files(run)
    with pytest.raises(ConfigError, match=r"is at step 2, past train.steps = 1; a run cannot be resumed backwards"):
        resume(run, "train.steps=1")
    assert files(run) == before


def test_a_cut_config_yaml_stops_the_resume_before_anything_trains(run, capsys):
    """Before: a config.yaml cut to its first lines was read as the defaults wherever it lacked a
    section; the resume trained a step under them, wrote a checkpoint, then failed on a missing
    metric (KeyError)."""
    (run / "config.yaml").write_text("method: distil\nseed: 0\n")
    before = files(run)
    assert main(["train", "--quiet", "--output-dir", str(run), "--resume", "--set", "train.steps=5"]) == 2
    err = capsys.readouterr().err
    assert "config.yaml: the run's saved config cannot be read: it is not whole (it lacks model, task, verifier" in err, err
    assert "so --resume cannot tell whether the run would change" in err and "Traceback" not in err
    assert files(run) == before


def test_a_finished_run_resumed_twice_holds_one_after_evaluation(run):
    """Before: the last checkpoint was written before the final evaluation, so every resume of a
    finished run evaluated again and appended another "after" row."""
    for _ in range(2):
        resume(run).fit()
    labels = [line for line in (run / "eval.jsonl").read_text().splitlines() if '"label": "after"' in line]
    assert len(labels) == 1


# -- the checkpoint's parts --------------------------------------------------------------------


def spoil_shape(state):
    slots = next(iter(state["optimizer"]["state"].values()))
    slots["exp_avg"] = torch.zeros(3)


PART_DAMAGES = {
    "optimizer_empty": (lambda s: s.update(optimizer={}), "its optimizer state does not fit this run: it lacks 'param_groups'"),
    "optimizer_none": (lambda s: s.update(optimizer=None), "its optimizer state is a NoneType, not a mapping"),
    "optimizer_shape": (spoil_shape, "its optimizer state does not fit this run: exp_avg has shape (3,)"),
    "scheduler_empty": (lambda s: s.update(scheduler={}), "its scheduler state does not fit this run: it lacks"),
    "rng_empty": (lambda s: s.update(rng={}), "its rng state does not fit this run: it lacks 'python'"),
    "rng_not_bytes": (lambda s: s["rng"].update(torch=torch.zeros(3)), "its rng state does not fit this run: RNG state"),
    "evals_list": (lambda s: s.update(evals=[1]), "its evals state is a list, not a mapping"),
    "elapsed_text": (lambda s: s.update(elapsed="x"), "its elapsed time is 'x', not a number of seconds"),
    "step_negative": (lambda s: s.update(step=-5), "its step is -5, outside 0…1000000000"),
}


@pytest.mark.parametrize("damage", sorted(PART_DAMAGES))
def test_a_checkpoint_part_that_does_not_fit_is_one_line_naming_it(run, damage):
    """Before: a raw KeyError or ValueError, an error in the first update step (the moments'
    shape), or a run that trained steps -4…2 and dropped every log line."""
    spoil, said = PART_DAMAGES[damage]
    path = latest_checkpoint(str(run))
    state = load_checkpoint(path)
    spoil(state)
    torch.save(state, path)
    with pytest.raises(DistilError) as err:
        resume(run)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"checkpoint {path} is damaged ({said}")


def test_checkpoints_past_step_999999_are_ordered_by_step(tmp_path):
    """Before: names sorted as text, so step-1000000.pt came before step-999999.pt: pruning
    deleted the newest and the fallback resumed from an older one."""
    for step in (999_998, 999_999, 1_000_000, 1_000_001):
        save_checkpoint(str(tmp_path), step, {"step": step}, keep=2)
    assert checkpoint_names(str(tmp_path / "checkpoints")) == ["step-1000000.pt", "step-1000001.pt"]
    (tmp_path / "checkpoints" / "latest").unlink()
    assert latest_checkpoint(str(tmp_path)).endswith("step-1000001.pt")


@pytest.mark.parametrize("pointer", ["../summary.json", "/etc/passwd", "step-2.pt.bak"])
def test_a_latest_pointer_naming_no_checkpoint_file_is_refused(run, pointer):
    (run / "checkpoints" / "latest").write_text(pointer)
    with pytest.raises(DistilError, match=r"checkpoint pointer .* is damaged \(it names .*not a step-N.pt file"):
        latest_checkpoint(str(run))


def test_a_checkpoints_entry_that_is_a_file_is_one_line(run):
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("x")
    with pytest.raises(DistilError, match=r"checkpoints is not a directory, so it holds no checkpoints"):
        resume(run)


# -- logs and leftovers ------------------------------------------------------------------------


@pytest.mark.parametrize("spoil, said", [
    (lambda p: p.write_bytes(gzip.compress(b'{"step": 1}\n' * 50)[:30]), "cut short"),
    (lambda p: p.write_bytes(b"hello, not gzip\n"), "Not a gzipped file"),
    (lambda p: p.mkdir(), "Is a directory"),
])
def test_a_damaged_rotated_segment_is_one_line_naming_it_and_changes_nothing(run, spoil, said):
    """Before: a raw EOFError, BadGzipFile or IsADirectoryError out of the resume."""
    segment = run / "metrics.000001.jsonl.gz"
    spoil(segment)
    before = files(run)
    with pytest.raises(DistilError) as err:
        resume(run)
    assert str(err.value).startswith(f"{segment}: log metrics.jsonl cannot be read ({said}")
    assert files(run) == before


def test_writes_a_killed_run_left_unfinished_go_on_resume_and_on_overwrite(run, tiny_base_cache_dir):
    """Before: a checkpoint-sized ``.tmp-*`` stayed for good after a kill mid-save."""
    (run / "checkpoints" / ".tmp-abc").write_bytes(b"x" * 1000)
    (run / ".tmp-final").mkdir()
    assert len(temporaries(str(run))) == 2
    resume(run)
    assert temporaries(str(run)) == []
    (run / ".tmp-final").mkdir()
    Trainer(load_config(None, FAST_RUN + RUN), run_dir=str(run), overwrite=True, echo=lambda *_: None).fit()
    assert temporaries(str(run)) == []


# -- config values -----------------------------------------------------------------------------


@pytest.mark.parametrize("item, said", [
    ("optim.betas=[1.5, 0.99]", "optim.betas.0: Input should be less than 1"),
    ("loss.eps_high=-2", "loss.eps_high: Input should be greater than or equal to 0"),
    ("loss.eps_low=-0.5", "loss.eps_low: Input should be greater than or equal to 0"),
    ("expert.options={a: " + "[" * 40 + "]" * 40 + "}", "is nested more than 32 levels deep"),
])
def test_config_values_torch_or_the_losses_would_reject_are_refused_naming_the_key(item, said):
    """Before: a raw ValueError from AdamW or the GRPO loss, a run whose negative-advantage tokens
    had no gradient (eps_low < 0), or a pydantic error while config.yaml was written."""
    with pytest.raises(ConfigError, match=said):
        load_config(None, [item])


@pytest.mark.parametrize("device, said", [("banana", "is not a device name torch knows"),
                                          ("cuda:0", "this torch sees no CUDA device")])
def test_a_device_torch_cannot_use_is_one_line_naming_model_device(tmp_path, device, said):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=f"model.device: '{device}'.*{said}"):
        Trainer(load_config(None, FAST_RUN + [f"model.device={device}"]), run_dir=str(tmp_path / "r"),
                echo=lambda *_: None)
    assert not (tmp_path / "r").exists()


def test_an_expert_temperature_written_out_or_left_to_the_method_compares_as_it_trains():
    """A run saved with τ = 1 written out (as every run was before a method could have its own τ)
    resumes under a config that leaves τ to the method where that method's τ is 1, and is refused,
    naming the τ it would train with, where the method's own τ differs."""
    for method, changed in (("grpo", []), ("reverse_kl", []), ("jsd", [("loss.expert_temperature", 1.0, 0.5)]),
                            ("distil", [("loss.expert_temperature", 1.0, 0.5)])):
        saved = load_config(None, [f"method={method}", "loss.expert_temperature=1.0"])
        given = load_config(None, [f"method={method}"])
        assert given.loss.expert_temperature is None
        assert resume_changes(saved, given) == changed
    explicit = load_config(None, ["loss.expert_temperature=0.5"])
    assert resume_changes(explicit, load_config(None, [])) == []


def test_a_run_saved_before_future_reduce_existed_resumes_with_the_sum_it_trained_with(run, capsys):
    """Runs saved before ``loss.future_reduce`` existed summed their future costs; today's default
    is the mean. Read at the default, such a run would resume (or a bench would reuse it) as a
    mean-trained run. Its own config.yaml resumes it as it trained; a config that asks for the
    mean is refused, naming the key."""
    from distil_core.config import recorded_changes, saved_config

    path = latest_checkpoint(str(run))
    state = load_checkpoint(path)
    del state["config"]["loss"]["future_reduce"]  # the record as an older version wrote it
    torch.save(state, path)
    text = (run / "config.yaml").read_text()
    assert text.count("  future_reduce: mean\n") == 1
    (run / "config.yaml").write_text(text.replace("  future_reduce: mean\n", ""))
    assert saved_config(str(run)).loss.future_reduce == "sum"
    assert recorded_changes(state["config"], load_config(None, FAST_RUN + RUN)) == [
        ("loss.future_reduce", "sum", "mean")]
    with pytest.raises(ConfigError, match="loss.future_reduce: 'sum' → 'mean'"):
        resume(run, "train.steps=3")
    assert main(["train", "--quiet", "--output-dir", str(run), "--resume", "--set", "train.steps=3"]) == 0, (
        capsys.readouterr().err)
    assert load_checkpoint(latest_checkpoint(str(run)))["config"]["loss"]["future_reduce"] == "sum"


def test_only_runs_whose_future_credit_read_future_reduce_are_read_as_summed():
    """A saved jsd, grpo or distil_local run (or distil without future credit) never read the key:
    it compares equal to today's config, so a bench reuses it and a resume goes on. The built-in
    methods with future credit are exactly those read as summed."""
    from distil_core.config.loading import SUMMED_METHODS, as_saved_then
    from distil_core.losses.methods import METHODS

    assert SUMMED_METHODS == tuple(name for name, method in METHODS.items() if method.future_credit)
    for method, extra, expected in (("distil", [], "sum"), ("distil", ["loss.future_credit=false"], "mean"),
                                    ("jsd", [], "mean"), ("grpo", [], "mean"), ("distil_local", [], "mean")):
        data = load_config(None, [f"method={method}", *extra]).model_dump(mode="json")
        del data["loss"]["future_reduce"]
        assert as_saved_then(data)["loss"].get("future_reduce", "mean") == expected, (method, extra)
        assert "future_reduce" not in data["loss"]  # the record read is left as it was


def test_differences_name_each_leaf_and_report_a_section_whole_where_the_other_side_has_none():
    """The review found {'a': None} against {} reported as "options is null but {}" plus a null
    leaf, and a section against a value named by its leaves."""
    from distil_core.config import ABSENT, differences

    a = {"task": {"name": "digits", "options": {"length": 5, "alphabet": [1, 2]}}}
    b = {"task": {"name": "digits", "options": {"length": 6}}, "extra": {}}
    assert differences(a, b) == [("extra", ABSENT, {}), ("task.options.alphabet", [1, 2], ABSENT),
                                 ("task.options.length", 5, 6)]
    assert differences(a["task"], b["task"], "task")[0] == ("task.options.alphabet", [1, 2], ABSENT)
    assert differences(a, a) == [] and differences(3, 4, "k") == [("k", 3, 4)]
    assert differences({"options": {"a": None}}, {"options": {}}, "task") == [("task.options.a", None, ABSENT)]
    assert differences({"options": {"a": None}}, {"options": {}}, "task", null_is_absent=True) == []
    assert differences({"options": {"a": 1}}, {"options": 3}, "task") == [("task.options", {"a": 1}, 3)]
    assert repr(ABSENT) == "(not set)"


# -- the base model the run started from -----------------------------------------------------------


@pytest.fixture
def base_copy(tmp_path, tiny_base_cache_dir):
    """A model directory of one's own: a copy of the session's tiny base."""
    from distil_core.plugin_host import get_host
    from distil_core.training.runtime import ensure_tiny_base

    with use_cache(tiny_base_cache_dir):
        config = load_config(None, FAST_RUN)
        base = ensure_tiny_base(config, get_host().build("task", config.task.name, config.task.options),
                                progress=False)
    return shutil.copytree(base, tmp_path / "mymodel")


def replace_weights(model_dir):
    """The directory's model re-exported with other weights (same names and shapes)."""
    from safetensors.torch import load_file, save_file

    path = str(model_dir / "model.safetensors")
    weights = load_file(path)
    torch.manual_seed(1)
    save_file({k: (v + 0.5 * torch.randn_like(v)).contiguous() for k, v in weights.items()}, path,
              metadata={"format": "pt"})


def test_lora_adapters_are_not_resumed_onto_a_base_that_changed(tmp_path, base_copy):
    """Before: the adapters went silently onto the new weights (pass@1 57.8 → 0.0)."""
    lora = FAST_RUN + RUN + [f"model.name={base_copy}", "model.lora={r: 4}"]
    run = tmp_path / "lorarun"
    Trainer(load_config(None, lora), run_dir=str(run), echo=lambda *_: None).fit()
    kept = tmp_path / "kept.safetensors"
    shutil.copy(base_copy / "model.safetensors", kept)
    replace_weights(base_copy)
    more = load_config(None, lora + ["train.steps=3"])
    before = files(run)
    with pytest.raises(DistilError) as err:
        Trainer(more, run_dir=str(run), resume=True, echo=lambda *_: None)
    message = str(err.value)
    assert "\n" not in message and f"the run started from the base model in {base_copy} with weights fingerprint" in message
    assert "the checkpoint holds LoRA adapters trained on those weights" in message and f"put the run's base model back in {base_copy}".lower() in message.lower()
    assert files(run) == before
    # a checkpoint from before the record resumes as it did; the base put back resumes as well
    path = latest_checkpoint(str(run))
    state = load_checkpoint(path)
    del state["base"]
    torch.save(state, path)
    Trainer(more, run_dir=str(run), resume=True, echo=lambda *_: None)
    shutil.copy(kept, base_copy / "model.safetensors")
    Trainer(more, run_dir=str(run), resume=True, echo=lambda *_: None).fit()
    assert load_checkpoint(latest_checkpoint(str(run)))["base"]["path"] == str(base_copy)


def spoil_base_record(run):
    """The run's latest checkpoint as if its base had other weights than the cache holds now."""
    path = latest_checkpoint(str(run))
    state = load_checkpoint(path)
    started = state["base"]["sha256"]
    state["base"]["sha256"] = "0123456789ab"
    torch.save(state, path)
    return started


def test_a_full_weight_run_resumes_on_a_rebuilt_base_and_keeps_the_fingerprint_it_started_from(run):
    """A full-weight checkpoint holds the policy and the frozen expert's copy: a tiny base rebuilt
    with other weights (another machine) resumes, and summary.json names the weights it started from."""
    started = spoil_base_record(run)
    assert json.loads((run / "summary.json").read_text())["model_sha256"] == started
    resume(run, "train.steps=3").fit()
    assert json.loads((run / "summary.json").read_text())["model_sha256"] == "0123456789ab"


def test_a_full_weight_run_whose_kl_reference_is_rebuilt_from_the_base_is_refused_another(tmp_path):
    """Without a frozen expert to lend its copy, the initial KL reference is a copy of the base made
    when the run is set up: on another base it would change, with nothing said."""
    config = load_config(None, FAST_RUN + ["train.steps=1", "train.save_every=1", "expert.options.weights=live",
                                           "loss.kl_to_reference.coef=0.1"])
    run = tmp_path / "klrun"
    Trainer(config, run_dir=str(run), echo=lambda *_: None).fit()
    spoil_base_record(run)
    config.train.steps = 2
    with pytest.raises(DistilError, match=r"with weights fingerprint 0123456789ab, and that directory now holds "
                                          r"other weights .*the run's KL reference \(loss.kl_to_reference, reference: "
                                          r"initial\) is a copy of those weights"):
        Trainer(config, run_dir=str(run), resume=True, echo=lambda *_: None)


def test_a_method_without_future_credit_is_the_same_run_whatever_distils_keys_say():
    """DistIL's future-credit keys change what a distil run trains and nothing in a jsd, grpo or
    distil_local run: a run saved before one of their defaults changed (loss.baseline was
    group_loo) is reused by a bench and resumed; a distil run that trained with it is not."""
    from distil_core.config import LossConfig, result_changes, resume_changes
    from distil_core.config.resume import FUTURE_CREDIT_KEYS

    assert set(FUTURE_CREDIT_KEYS) <= set(LossConfig.model_fields)
    for method in ("jsd", "grpo", "distil_local", "reverse_kl"):
        saved = load_config(None, [f"method={method}", "loss.baseline=group_loo", "loss.gamma=0.9",
                                    "loss.future_credit=false"])
        given = load_config(None, [f"method={method}"])
        assert result_changes(saved, given) == [] and resume_changes(saved, given) == [], method
        # what the method does read still counts
        other = load_config(None, [f"method={method}", "optim.lr=0.001"])
        assert [key for key, _, _ in result_changes(saved, other)] == ["optim.lr"], method
    saved = load_config(None, ["method=distil", "loss.baseline=group_loo"])
    assert [key for key, _, _ in result_changes(saved, load_config(None, ["method=distil"]))] == ["loss.baseline"]
    assert [key for key, _, _ in resume_changes(saved, load_config(None, ["method=distil"]))] == ["loss.baseline"]
