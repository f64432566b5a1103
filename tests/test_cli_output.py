"""What `distil train` and `distil eval` print: the slow first-use phase even under --quiet, a
header that says where the time went, and JSON whose units are stated."""

import contextlib
import json
import re

import yaml

from distil_core import hookimpl
from distil_core.cli.main import main
from distil_core.testing import FAST_RUN


@contextlib.contextmanager
def registered(kind, name, factory):
    """``factory`` registered as the ``kind`` (``feedback_sources``, ``verifiers``) ``name``, by a
    plugin of that name on the process-wide host, for the ``with`` block, whatever the test does."""
    from distil_core import get_host

    def register(self, register):
        register(name, factory)

    register.__name__ = f"register_{kind}"
    plugin = type(name, (), {register.__name__: hookimpl(register)})()
    host = get_host()
    host.register_plugin(plugin, name, version="0.0.1")
    try:
        yield host
    finally:
        host.unregister_plugin(name)


def _sets(*extra):
    out = []
    for item in FAST_RUN + list(extra):
        out += ["--set", item]
    return out


def test_quiet_still_says_the_tiny_base_is_being_built_and_only_the_first_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTIL_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--quiet", "--output-dir", str(tmp_path / "a"), *_sets("train.steps=1")]) == 0
    first = capsys.readouterr()
    lines = [line for line in first.err.splitlines() if line.startswith("distil: ")]
    assert len(lines) == 2 and "building the tiny base model for task 'digits'" in lines[0], first.err
    assert str(tmp_path / "cache") in lines[0] and lines[1].startswith("distil: tiny base model built in ")
    assert main(["train", "--quiet", "--output-dir", str(tmp_path / "b"), *_sets("train.steps=1")]) == 0
    assert "building the tiny base" not in capsys.readouterr().err  # cached now


def test_the_header_splits_the_time_and_summary_json_holds_the_parts(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--output-dir", str(run), *_sets("train.steps=2")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    parts = summary["time_s"]
    assert set(parts) == {"setup", "train", "eval"} and all(v >= 0 for v in parts.values())
    assert abs(sum(parts.values()) - summary["wall_s"]) <= 0.5  # one session: the parts add up
    head = out.splitlines()[0]
    assert f"{summary['wall_s']:.0f} s: setup {parts['setup']:.0f} s, training {parts['train']:.0f} s, " \
           f"evaluation {parts['eval']:.0f} s" in head
    assert "metric (%)" in out


def test_eval_json_states_its_units_and_matches_the_table(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--output-dir", str(run), *_sets("train.steps=1")]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["units"] == "fraction" and 0.0 <= data["pass@1"] <= 1.0
    assert data["problems"] == 16 and data["samples"] == 4
    assert main(["eval", str(run), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "value (%)" in table
    row = next(line for line in table.splitlines() if line.startswith("pass@1 "))
    assert float(row.split()[-1]) == round(100 * data["pass@1"], 1)


def test_without_a_progress_bar_train_prints_a_line_every_log_every_steps_and_one_per_evaluation(tmp_path, capsys):
    """Before, train.log_every was accepted and never read: a run with train.progress: false (a
    batch job's log) printed nothing between its first line and its final table."""
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run),
                 *_sets("train.steps=4", "train.log_every=2", "train.eval_every=2")]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in out if line.startswith("step ")]
    assert [line.split(":")[0] for line in steps] == ["step 2/4", "step 4/4"]
    for line, row in zip(steps, (rows[1], rows[3])):
        assert f"reward {row['reward']:.3f}, loss {row['loss']:.4g}, kl_to_expert {row['kl_to_expert']:.4g}" in line
        assert "skipped_nonfinite" not in line  # shown only when a step was skipped
    evals = [line for line in out if line.startswith("eval (")]
    assert [line.split(":")[0] for line in evals] == ["eval (before, step 0)", "eval (step 2)", "eval (after, step 4)"]
    after = json.loads((run / "summary.json").read_text())["after"]
    assert f"pass@1 {100 * after['pass@1']:.1f}%" in evals[-1]
    assert main(["train", "--quiet", "--output-dir", str(tmp_path / "quiet"), *_sets("train.steps=2")]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith(("step ", "eval ("))]
    saved = yaml.safe_load((tmp_path / "quiet" / "config.yaml").read_text())["train"]
    assert saved["log_every"] == 1  # --quiet is this session's console, not the run's config


def test_an_error_quoting_control_characters_shows_them_as_escapes(plugin_host, tmp_path, capsys):
    """Errors quote what others wrote (a server's message, a plugin's exception); before, an
    escape sequence among them reached the terminal as it came and could clear or retitle it."""

    class EvilTasks:
        @hookimpl
        def register_tasks(register):
            def refuse(**options):
                raise ValueError("no such split \x1b]0;PWNED\x07\x1b[2J\u202e")
            register("evil", refuse)

    plugin_host.register_plugin(EvilTasks, "evil-tasks")
    assert main(["train", "--output-dir", str(tmp_path / "run"), *_sets("task.name=evil", "task.options={}")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert "no such split \\x1b]0;PWNED\\x07\\x1b[2J\\u202e" in err and err.startswith("error: task 'evil'"), err


class StoreFeedback:
    """A feedback source that needs a file only the training machine has (a corrections store)."""

    pretrains_base = False  # the tiny base stays the cached one

    def __init__(self, path):
        import os

        from distil_core import ConfigError

        if not os.path.exists(path):
            raise ConfigError(f"feedback source 'store': no store at {path}")

    def feedback(self, problem, rollout, verdict, siblings):
        return []


def test_a_trained_run_is_evaluated_without_its_feedback_sources(tmp_path, capsys):
    """Before, eval built every feedback source although it uses none, so a run trained with a
    store that has since moved (or on another machine) could not be evaluated at all."""
    store, run = tmp_path / "store.db", tmp_path / "run"
    with registered("feedback_sources", "store", StoreFeedback):
        store.write_text("")
        feedback = f"feedback=[answer_check, {{name: store, options: {{path: '{store}'}}}}]"
        assert main(["train", "--quiet", "--output-dir", str(run), *_sets("train.steps=1", feedback)]) == 0
        store.unlink()
        capsys.readouterr()
        assert main(["eval", str(run), "--json"]) == 0
        assert 0.0 <= json.loads(capsys.readouterr().out)["pass@1"] <= 1.0
        assert main(["train", "--quiet", "--output-dir", str(run), "--resume", *_sets("train.steps=2", feedback)]) == 2
        assert f"no store at {store}" in capsys.readouterr().err  # training still needs it, and says so


class ClosedVerifier:
    """exact_match that records being closed (its workers and sandboxes released)."""

    def __init__(self, marker):
        from distil_core.builtin import ExactMatchVerifier

        self.inner, self.marker = ExactMatchVerifier(), marker

    def verify(self, problem, rollout):
        return self.inner.verify(problem, rollout)

    def close(self):
        with open(self.marker, "a") as fh:
            fh.write("closed\n")


def test_eval_closes_its_verifier_as_a_training_run_does(tmp_path, capsys):
    """Before, `distil eval` left the verifier open: its sandboxes and worker pools stayed until
    the process exited, and at Ctrl-C an exit past them skipped their clean-up."""
    marker, run = tmp_path / "closed.txt", tmp_path / "run"
    with registered("verifiers", "closed", ClosedVerifier):
        verifier = f"verifier={{name: closed, options: {{marker: '{marker}'}}}}"
        assert main(["train", "--quiet", "--output-dir", str(run), *_sets("train.steps=1", verifier)]) == 0
        closes = marker.read_text().count("closed")  # the training run's (and the tiny base's when it was built)
        assert closes >= 1
        capsys.readouterr()
        assert main(["eval", str(run), "--json"]) == 0
        assert marker.read_text().count("closed") == closes + 1


class BrokenCritic:
    """A feedback source whose parsing fails inside a library, as a critic's would on a bad reply."""

    pretrains_base = False  # the tiny base stays the cached one

    def feedback(self, problem, rollout, verdict, siblings):
        return json.loads("{not json")


def test_an_error_over_another_exception_says_how_to_see_its_traceback(tmp_path, monkeypatch, capsys):
    """The one-line error is what a user needs; a plugin's author needs the exception under it.
    Before, only a debugger or an edit of the toolkit showed it."""
    monkeypatch.delenv("DISTIL_TRACEBACK", raising=False)
    with registered("feedback_sources", "broken", BrokenCritic):
        argv = ["train", "--quiet", *_sets("train.steps=1", "feedback=[broken]")]
        assert main([*argv, "--output-dir", str(tmp_path / "a")]) == 1
        lines = capsys.readouterr().err.splitlines()
        assert lines[-2].startswith("error: feedback source 'broken' raised JSONDecodeError"), lines
        assert lines[-1] == "(DISTIL_TRACEBACK=1 prints the traceback of the JSONDecodeError underneath.)"

        monkeypatch.setenv("DISTIL_TRACEBACK", "1")
        assert main([*argv, "--output-dir", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    # the plugin's own line, the library's, the exception, the error that wraps it, the one line
    assert re.search(r'test_cli_output\.py", line \d+, in feedback\n\s+return json\.loads', err), err
    assert re.search(r'json/decoder\.py", line \d+, in raw_decode', err), err
    assert "\n\nThe above exception was the direct cause of the following exception:\n\n" in err
    assert err.splitlines()[-1].startswith("error: feedback source 'broken' raised JSONDecodeError")
    assert "DISTIL_TRACEBACK=1 prints" not in err


def test_the_traceback_escapes_control_characters_as_the_one_line_does(monkeypatch, capsys):
    """A plugin's exception can quote a server's words; with DISTIL_TRACEBACK=1 they reach the
    terminal too, and an escape sequence in them must not retitle or clear it."""
    from distil_core.cli.exits import report_error
    from distil_core.errors import DistilError, plugin_call

    monkeypatch.setenv("DISTIL_TRACEBACK", "1")
    try:
        with plugin_call("feedback source", "critic"):
            raise ValueError("the server said \x1b]0;retitled\x07\x1b[2J")
    except DistilError as exc:
        assert report_error(exc) == exc.exit_code
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err, err
    assert "ValueError: the server said \\x1b]0;retitled\\x07\\x1b[2J\n" in err, err
