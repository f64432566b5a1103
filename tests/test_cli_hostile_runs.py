"""Odd or damaged run directories given to the commands that read them (`distil bench`'s report,
`distil plot`, `distil eval RUN_DIR`, benchmarks/bench_diagnostics.py): a one-line error naming
the file, or a sensible result; never a traceback, never a half-written report."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from distil_core.cli.bench import Bench, load_spec
from distil_core.cli.main import main
from distil_core.config import load_config
from distil_core.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "tests", "data", "bench_digits.yaml")
NO_MODEL = ["model.name=/nonexistent/model"]  # not "tiny": a bench over reused runs builds nothing


def _finished_bench(out):
    """A bench output directory whose two runs (sort × grpo, distil; seed 0) are finished and
    reusable, so `distil bench` only writes its report; the grpo run's directory."""
    spec, base = load_spec(SPEC)
    bench = Bench(spec, base, str(out), suites=["sort"], methods=["grpo", "distil"], seeds=[0], overrides=NO_MODEL)
    for (suite, method, seed), config in bench.configs.items():
        run = out / suite / method / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(config.to_yaml())
        (run / "summary.json").write_text(json.dumps({
            "method": method, "before": {"pass@1": 0.1, "pass@4": 0.3}, "after": {"pass@1": 0.2, "pass@4": 0.4},
            "wall_s": 3.0, "model": "/nonexistent/model", "model_sha256": None, "reference_tokens": 4.0}))
        (run / "eval.jsonl").write_text("".join(json.dumps({"step": s, "pass@1": v, "pass@4": v + 0.2}) + "\n"
                                                for s, v in ((0, 0.1), (2, 0.15), (4, 0.2))))
        (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "response_tokens": 5.0}) + "\n"
                                                   for s in range(1, 5)))
    return out / "sort" / "grpo" / "seed0"


def _bench(out):
    argv = ["bench", SPEC, "--suites", "sort", "--methods", "grpo", "distil", "--seeds", "0",
            "--output-dir", str(out)]
    for item in NO_MODEL:
        argv += ["--set", item]
    return main(argv)


def _summary(run, **changes):
    summary = json.loads((run / "summary.json").read_text())
    for key, value in changes.items():
        section, _, metric = key.partition("__")
        if metric:
            summary[section][metric.replace("_at_", "@")] = value
        else:
            summary[section] = value
    (run / "summary.json").write_text(json.dumps(summary))


pytest.importorskip("matplotlib")


@pytest.mark.parametrize("changes, shown", [
    ({"before__pass_at_1": "0.1"}, 'before.pass@1 is "0.1", not a finite number'),
    ({"after__pass_at_1": None}, "after.pass@1 is null, not a finite number"),
    ({"after__pass_at_4": [1]}, "after.pass@4 is [1], not a finite number"),
    ({"after__pass_at_1": float("nan")}, "after.pass@1 is NaN, not a finite number"),
    ({"after__pass_at_1": float("inf")}, "after.pass@1 is Infinity, not a finite number"),
    ({"wall_s": float("nan")}, "no valid wall_s"),
    ({"source": {"rev": 1}}, 'source is {"rev": 1}, not a string'),
    # before: 62.5 was reported as 6250.0 %, and a list here was a TypeError traceback
    ({"after__pass_at_1": 62.5}, "after.pass@1 is 62.5, not a share between 0 and 1"),
    ({"before__pass_at_4": -0.1}, "before.pass@4 is -0.1, not a share between 0 and 1"),
    ({"model_sha256": ["x"]}, 'model_sha256 is ["x"], not a string'),
])
def test_a_summary_metric_that_is_not_a_finite_number_is_named_and_no_report_is_written(tmp_path, capsys,
                                                                                         changes, shown):
    """Every before/after metric is averaged and printed as a percentage, and bench.json must stay
    JSON a strict reader takes: a string, null, list, NaN or Infinity there is named, and nothing
    is written."""
    run = _finished_bench(tmp_path / "bench")
    _summary(run, **changes)
    assert _bench(tmp_path / "bench") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("error:")] == \
        [err.splitlines()[-1]], err
    assert f"{run}/summary.json: not a finished run's summary ({shown}); delete {run}" in err
    assert not (tmp_path / "bench" / "bench.md").exists() and not (tmp_path / "bench" / "bench.json").exists()


def test_a_summary_nested_past_the_recursion_limit_is_named(tmp_path, capsys):
    run = _finished_bench(tmp_path / "bench")
    (run / "summary.json").write_text("[" * 100_000 + "]" * 100_000)
    assert _bench(tmp_path / "bench") == 2
    assert f"{run}/summary.json: not a finished run's summary (JSON nested too deeply)" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"# \xff\n", b"[" * 100_000 + b"]" * 100_000], ids=["not-utf8", "nested"])
def test_a_run_config_not_utf8_or_nested_too_deeply_is_not_the_same_run(tmp_path, capsys, content):
    """bench's reuse check reads a run's config.yaml: bytes that are not UTF-8, or nesting past
    the recursion limit, make it another run (one line), not an exception."""
    run = _finished_bench(tmp_path / "bench")
    (run / "config.yaml").write_bytes(content)
    assert _bench(tmp_path / "bench") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{run} holds a finished run with no config.yaml this version can read" in err


def test_log_values_that_are_not_numbers_are_left_out_of_the_report_as_plot_leaves_them(tmp_path, capsys):
    """A string, null or NaN in eval.jsonl's pass@k, metrics.jsonl's response_tokens or
    summary.json's reference_tokens is left out of the averages the plots and bench.json hold."""
    run = _finished_bench(tmp_path / "bench")
    with open(run / "eval.jsonl", "a") as fh:
        fh.write('{"step": 6, "pass@1": "0.5", "pass@4": null}\n{"step": 8, "pass@1": NaN}\n')
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "response_tokens": "x"}\n{"step": 6, "response_tokens": null}\n')
    _summary(run, reference_tokens="abc")
    assert _bench(tmp_path / "bench") == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "bench" / "bench.json").read_text(),
                        parse_constant=lambda name: pytest.fail(f"bench.json holds {name}"))
    grpo = next(r for r in report["runs"] if r["method"] == "grpo")
    assert grpo["curve"][-2:] == [{"step": 6}, {"step": 8}]
    assert [s for s, _ in grpo["response_tokens"]] == [1, 2, 3, 4] and grpo["reference_tokens"] is None
    assert (tmp_path / "bench" / "bench-sort.png").exists()


@pytest.mark.parametrize("name", ["eval.jsonl", "metrics.jsonl"])
def test_a_directory_where_a_log_goes_is_named(tmp_path, capsys, name):
    run = _finished_bench(tmp_path / "bench")
    (run / name).unlink()
    (run / name).mkdir()
    assert _bench(tmp_path / "bench") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{run}/{name}: the log cannot be read (Is a directory)" in err


@pytest.mark.parametrize("step", ["NaN", "Infinity", "-Infinity"])
def test_a_step_that_is_not_finite_is_named_by_file_and_line(tmp_path, capsys, step):
    """JSON's NaN and Infinity are numbers to the reader but no step to order a curve by: the
    line is named."""
    run = _finished_bench(tmp_path / "bench")
    with open(run / "eval.jsonl", "a") as fh:
        fh.write('{"step": %s, "pass@1": 0.9}\n' % step)
    assert _bench(tmp_path / "bench") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{run}/eval.jsonl:4: not a step record" in err and "not a finite number" in err


@pytest.mark.parametrize("kind, label", [("methods", "gr|po"), ("methods", "a $\\foo$"), ("suites", "../up"),
                                         ("suites", "two\nlines"), ("methods", "<b>bold</b>")])
def test_a_label_that_is_not_a_plain_name_is_refused_naming_the_spec(tmp_path, capsys, kind, label):
    """A label becomes a run directory (`..` must not leave the output directory), a bench.md
    table cell (`|` splits it, HTML renders) and a plot legend (`$\\foo$` reads as mathtext), so
    it is checked when the spec loads, before any run trains."""
    spec = yaml.safe_load(open(SPEC))
    spec[kind] = {label: next(iter(spec[kind].values())), **spec[kind]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["bench", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {kind}: {label!r} is not a plain name" in err and not (tmp_path / "runs").exists()


def test_plot_draws_dollar_signs_in_names_as_text_not_math(tmp_path, capsys):
    """A method in config.yaml, a directory name or a logged key holding `$...$` is a name, drawn
    as written, whether or not it would be valid mathtext."""
    runs = []
    for name, method in (("a$\\foo$", "x$\\bar$"), ("b", "distil")):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": 0.1 * s, "time_$\\q$": 0.5}) + "\n"
                                                   for s in (1, 2)))
        (run / "config.yaml").write_text(yaml.safe_dump({"method": method}))
        runs.append(str(run))
    out = tmp_path / "p.png"
    assert main(["plot", *runs, "--output", str(out), "--json"]) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["labels"] == ["x$\\bar$", "distil"] and out.exists()
    assert main(["plot", runs[0], "--output", str(out), "--metrics", "time_$\\q$", "time"]) == 0
    assert "panels: time_$\\q$, time per stage" in capsys.readouterr().out


def _final_run(path):
    path.mkdir()
    (path / "config.yaml").write_text(load_config(None, ["method=grpo"]).to_yaml())
    (path / "final").mkdir()
    return path


@pytest.mark.parametrize("damage, shown", [
    (lambda p: None, "is not a run directory (no such directory)"),
    (lambda p: p.write_text("x"), "is not a run directory (not a directory)"),
    (lambda p: p.mkdir(), "is not a run directory (no config.yaml file"),
    (lambda p: (_final_run(p) / "config.yaml").write_text("method: [\n"), "config.yaml: not valid YAML"),
    (lambda p: (_final_run(p) / "config.yaml").write_bytes(b"method: \xff\n"), "cannot be read as a UTF-8 text file"),
    (lambda p: (_final_run(p) / "final").rmdir(), "has no final/ model yet"),
    (lambda p: ((_final_run(p) / "final").rmdir(), (p / "final").write_text("x")),
     "final: the run's final model should be a directory, and this is a file"),  # was "no final/ model yet"
    # before, an emptied or cut config.yaml was read as the defaults (another task, another
    # evaluation), and `distil eval RUN` evaluated the wrong thing without a word
    (lambda p: (_final_run(p) / "config.yaml").write_text(""), "saved config cannot be read: it is not whole (it lacks every section"),
    (lambda p: (_final_run(p) / "config.yaml").write_text("method: distil\nseed: 0\nmodel:\n"),
     "saved config cannot be read: it is not whole (it lacks task, verifier, feedback, expert, context, rollout …"),
])
def test_run_dir_config_names_what_is_wrong(tmp_path, damage, shown):
    run = tmp_path / "run"
    damage(run)
    from distil_core.config import run_dir_config

    with pytest.raises(ConfigError) as caught:
        run_dir_config(str(run))
    assert shown in str(caught.value) and str(run) in str(caught.value)


def test_run_dir_config_points_the_model_at_final(tmp_path):
    from distil_core.config import run_dir_config

    run = _final_run(tmp_path / "run")
    config = run_dir_config(str(run), ["eval.samples=9"])
    assert config.method == "grpo" and config.model.name == str(run / "final") and config.eval.samples == 9
    with pytest.raises(ConfigError, match="--set model.name: a run directory .* is evaluated with its own final/"):
        run_dir_config(str(run), ["model.name=/elsewhere"])  # before: ignored without a word


@pytest.mark.parametrize("command", ["temperatures", "sharpness digits", "passk"])
@pytest.mark.parametrize("damage, shown", [
    ("missing", "{run}' is not a run directory (no such directory)"),
    ("no_config", "no config.yaml file: {run}/config.yaml"),
    ("bad_yaml", "{run}/config.yaml: not valid YAML"),
    ("no_final", "{run}' has no final/ model yet"),
])
def test_bench_diagnostics_names_a_damaged_run_directory_in_one_line(tmp_path, command, damage, shown):
    """bench_diagnostics.py reads a trained run as `distil eval` does (run_dir_config): a
    missing or damaged config.yaml or final/ is one line naming the directory."""
    run = tmp_path / "run"
    if damage != "missing":
        _final_run(run)
    if damage == "no_config":
        (run / "config.yaml").unlink()
    elif damage == "bad_yaml":
        (run / "config.yaml").write_text("method: [\n")
    elif damage == "no_final":
        (run / "final").rmdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_diagnostics.py"),
                           *command.split(), str(run)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr[-2000:]
    assert shown.format(run=run) in proc.stderr


def test_bench_diagnostics_passk_refuses_a_sample_count_that_is_not_a_power_of_two(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_diagnostics.py"), "passk",
                           str(tmp_path), "--samples", "12"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--samples must be a power of two (1, 2, 4, ...), got 12" in proc.stderr


def test_a_plot_that_cannot_be_written_leaves_the_results_and_is_named(tmp_path, capsys):
    """The report's results go before its plots: a directory where a plot goes (or a full disk)
    leaves bench.json and a bench.md without plots, and is one line naming the plot (the report
    directory where the system names no file)."""
    _finished_bench(tmp_path / "bench")
    (tmp_path / "bench" / "bench-sort.png").mkdir()
    assert _bench(tmp_path / "bench") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1].startswith(
        f"error: {tmp_path / 'bench' / 'bench-sort.png'}: a plot of the bench cannot be written (Is a directory)"), err
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert {(r["method"], r["after"]["pass@1"]) for r in report["runs"]} == {("grpo", 0.2), ("distil", 0.2)}
    md = (tmp_path / "bench" / "bench.md").read_text()
    assert "| **grpo** |" in md and ".png)" not in md


def test_a_report_file_that_cannot_be_written_is_named(tmp_path, capsys):
    _finished_bench(tmp_path / "bench")
    (tmp_path / "bench" / "bench.json").mkdir()
    assert _bench(tmp_path / "bench") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"error: {tmp_path / 'bench' / 'bench.json'}: the bench report cannot be " \
        "written (Is a directory); the runs are kept" in err, err


def test_an_output_that_would_replace_a_runs_own_file_is_refused_before_anything_is_drawn(tmp_path, capsys):
    """Before, `distil plot RUN --output RUN/config.yaml` wrote a PNG over the run's config (then
    `distil eval RUN` failed on its bytes), `bench_diagnostics passk --json RUN/config.yaml` put
    results JSON there (which still parses as YAML), and `--output x.pdf` wrote PNG bytes."""
    run = _finished_bench(tmp_path / "bench")
    saved = (run / "config.yaml").read_bytes()
    for target in (run / "config.yaml", run / "final" / "plot.png", run / "checkpoints"):
        assert main(["plot", str(run), "--output", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"--output {str(target)!r} is " in err and "which the run writes: the output would replace it" in err, err
    assert main(["plot", str(run), "--output", str(tmp_path / "plot.txt")]) == 2
    assert "a plot is written as .png, .pdf, .svg (the file's suffix chooses)" in capsys.readouterr().err
    assert (run / "config.yaml").read_bytes() == saved and not (run / "final").exists()
    assert main(["plot", str(run), "--output", str(tmp_path / "plot.pdf")]) == 0
    assert (tmp_path / "plot.pdf").read_bytes().startswith(b"%PDF")
    assert main(["plot", str(run), "--output", str(tmp_path / "plot.svg")]) == 0
    assert b"<svg" in (tmp_path / "plot.svg").read_bytes()[:1000]
    script = os.path.join(ROOT, "benchmarks", "bench_diagnostics.py")
    for flag, target in (("--json", run / "config.yaml"), ("--plot", run / "eval.jsonl"), ("--plot", tmp_path / "p.json")):
        proc = subprocess.run([sys.executable, script, "passk", str(run), "--samples", "2", flag, str(target)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"error: {flag} {str(target)!r}"), proc.stderr
    assert (run / "config.yaml").read_bytes() == saved


@pytest.mark.parametrize("argv, said", [
    (["passk", "RUN", "--samples", "0"], "argument --samples: invalid count (a whole number of at least 1) value: '0'"),
    (["temperatures", "RUN", "--temperatures", "nan"], "argument --temperatures: invalid temperature"),
    (["temperatures", "RUN", "--temperatures", "-1"], "argument --temperatures: invalid temperature"),
    (["sharpness", "digits", "RUN", "--problems", "-1"], "argument --problems: invalid count"),
    (["expert-gap", "digits", "--problems", "0"], "argument --problems: invalid count"),
    (["expert-on-policy", "digits", "--samples", "0"], "argument --samples: invalid count"),
])
def test_bench_diagnostics_refuses_counts_and_temperatures_that_mean_nothing(tmp_path, argv, said):
    """Before: a pydantic traceback (a temperature of nan or -1), a ZeroDivisionError, an IndexError
    or a RuntimeError (0 problems or samples), or -1 problems read by slicing as all but one."""
    argv = [str(tmp_path) if a == "RUN" else a for a in argv]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_diagnostics.py"), *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", ["metrics.jsonl", "eval.jsonl"])
def test_plot_names_a_log_that_is_a_directory(tmp_path, capsys, name):
    """Before: metrics.jsonl as a directory read as "it has no metrics.jsonl", and eval.jsonl as
    one drew pass@1 as "not logged" without a word."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0, "reward": 0.5}\n')
    (run / name).unlink(missing_ok=True)
    (run / name).mkdir()
    assert main(["plot", str(run), "--output", str(tmp_path / "p.png")]) == 1
    assert f"{run / name}: the log cannot be read (Is a directory)" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["train", "--output-dir", ""], ["train", "--output-dir", "  "],
                                  ["plot", "run", "--output", ""], ["bench", "--output-dir", ""],
                                  ["bench", "--report-dir", ""]])
def test_an_empty_path_is_refused_not_read_as_the_default(argv, tmp_path, monkeypatch, capsys):
    """Before, `distil train --output-dir ""` (an unset shell variable) trained into the default
    runs/<method>-<time>, and `distil bench --report-dir ""` wrote the report beside the runs."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "an empty path names nothing" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("changes, said", [
    ({"method": "distil"}, "the summary of a run with method 'distil', in the folder of one with 'grpo'"),
    ({"seed": 7}, "the summary of a run with seed 7, in the folder of one with 0"),
    ({"after": {"pass@4": 0.4}}, "not a finished run's summary (after lack the plotted pass@1)"),
])
def test_a_reused_summary_of_another_run_or_without_the_plotted_metric_is_refused(tmp_path, capsys, changes, said):
    """Before, distil's summary copied into grpo's folder was reported as grpo's row, and one
    without the plotted metric ended the bench with KeyError: 'pass@1' after bench.json was written."""
    run = _finished_bench(tmp_path / "bench")
    _summary(run, **changes)
    assert _bench(tmp_path / "bench") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{run}/summary.json: {said}" in err, err
    assert not (tmp_path / "bench" / "bench.json").exists()


@pytest.mark.parametrize("argv, said", [
    (["--set", "method=grpo"], "--set sets 'method', which the bench gives each run itself"),
    (["--set", "seed=7"], "--set sets 'seed', which the bench gives each run itself"),
    (["--sweep", "method=grpo,distil"], "the sweep cannot choose 'method'"),
    (["--sweep", "seed=5,6"], "the sweep cannot choose 'seed'"),
    (["--sweep", "eval.split=test,validation"], "the sweep cannot choose 'eval.split'"),
    (["--sweep", "system_prompt=null,None"], "two values would share one folder"),
    (["--sweep", "system_prompt=a/../../../escape,b"], "'system_prompt=a/../../../escape' is not a folder name"),
    (["--sweep", "system_prompt=a|b,c"], "'system_prompt=a|b' is not a folder name"),
])
def test_overrides_that_would_run_something_else_than_their_label_are_refused(tmp_path, capsys, argv, said):
    """Before, `--set method=grpo` ran grpo under every method's label, `--sweep seed=5,6` gave
    every seed's row one seed, `--sweep eval.split=test,...` chose on the test problems, and a
    sweep value holding '../' put its runs (and the removal of an unfinished one) outside --output-dir."""
    assert main(["bench", SPEC, "--dry-run", "--output-dir", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and said in err, err
    assert not (tmp_path / "out").exists()
