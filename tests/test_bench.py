"""`distil bench`: every method on the same budget, runs reused, reports and plots written."""

import hashlib
import json
import os
import re
import statistics

import pytest
import yaml

from distil_core.cli.bench import Bench, load_spec
from distil_core.cli.main import main
from distil_core.cli.report import aggregate, cpu_name, leaders, source_line, table_metrics, within_noise
from distil_core.cli.sweep import choose, render_sweep
from distil_core.io import weights_fingerprint
from distil_core.errors import ConfigError

from distil_core.testing import use_cache as distil_cache

SPEC = os.path.join(os.path.dirname(__file__), "data", "bench_digits.yaml")


@pytest.fixture(scope="module")
def cache(tiny_base_cache_dir):
    with distil_cache(tiny_base_cache_dir) as path:
        yield path


@pytest.mark.slow
def test_bench_trains_every_method_and_seed_and_writes_the_report(cache, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", SPEC, "--suites", "sort", "--methods", "grpo", "distil", "--output-dir", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "Report:" in printed.out and "[4/4] sort · distil · seed 1" in printed.err

    data = json.loads((out / "bench.json").read_text())
    runs = data["runs"]
    assert {(r["method"], r["seed"]) for r in runs} == {("grpo", 0), ("grpo", 1), ("distil", 0), ("distil", 1)}
    for r in runs:
        summary = json.loads((out / "sort" / r["method"] / f"seed{r['seed']}" / "summary.json").read_text())
        assert summary["method"] == r["method"] and summary["seed"] == r["seed"] and summary["steps"] == 4
        assert r["after"] == summary["after"]
        # eval_every=2 over 4 steps: before (step 0), step 2, after (step 4)
        assert [p["step"] for p in r["curve"]] == [0, 2, 4]
    # Both methods start from the same model and are evaluated with the same seed: same "before".
    for seed in (0, 1):
        befores = [r["before"] for r in runs if r["seed"] == seed]
        assert befores[0] == befores[1]
    # The aggregate is the mean and sample std of the per-seed numbers.
    distil_after = [r["after"]["pass@1"] for r in runs if r["method"] == "distil"]
    mean, std, n = data["aggregate"]["sort"]["distil"]["pass@1"]
    assert n == 2 and mean == pytest.approx(statistics.fmean(distil_after))
    assert std == pytest.approx(statistics.stdev(distil_after))

    md = (out / "bench.md").read_text()
    assert "| **grpo** |" in md and "| **distil** |" in md and "| base |" in md
    assert "Budget per run: 4 steps × 4 problems × 4 samples = 64 rollouts" in md
    assert f"{100 * mean:.1f} ± {100 * std:.1f}" in md
    assert "![pass@1 vs rollouts on sort](bench-sort.png)" in md
    assert "![response length vs step on sort](bench-sort-length.png)" in md
    # sample efficiency: grpo reaches its own final pass@1 within its budget (at the latest at its end)
    assert "| grpo | `grpo` | – |" in md  # the methods and their own settings
    efficiency = [line for line in md.splitlines() if line.startswith("| grpo |")][1]
    reached = int(efficiency.split("|")[2])
    assert reached in (32, 64)  # eval at step 2 or 4, 16 rollouts a step
    widest = max((k for k in runs[0]["after"] if k.startswith("pass@")), key=lambda k: int(k.split("@")[1]))
    assert widest != "pass@1" and f"rollouts to reach grpo's final {widest} | vs grpo's budget" in md
    assert int(efficiency.split("|")[4]) in (32, 64)  # and its own final pass@k, likewise
    for r in runs:  # the length series is the run's own metrics.jsonl
        assert [s for s, _ in r["response_tokens"]] == [1, 2, 3, 4]
        assert r["reference_tokens"] > 1
    # the leader on each metric, and who is within noise of it (paired by seed)
    means = {m: statistics.fmean(r["after"]["pass@1"] for r in runs if r["method"] == m) for m in ("grpo", "distil")}
    best = max(means, key=lambda m: (means[m], m == "grpo"))
    assert f"Best pass@1: **{best}** ({100 * means[best]:.1f}); within noise of it: " in md
    assert f"Best {widest}: **" in md
    assert ", source " in md.splitlines()[2]  # the toolkit's git revision the runs were trained with
    from distil_core.version import source_revision

    assert {r["source"] for r in runs} == {source_revision()}  # each run records its own
    assert cpu_name() in md.splitlines()[2]
    # every run started from the suite's one tiny base; its summary records the weights' fingerprint
    summaries = [json.loads((out / "sort" / r["method"] / f"seed{r['seed']}" / "summary.json").read_text()) for r in runs]
    [path] = {s["model"] for s in summaries}
    assert {s["model_sha256"] for s in summaries} == {r["model_sha256"] for r in runs} == {weights_fingerprint(path)}
    assert {r["model"] for r in runs} == {os.path.basename(path)}  # no machine path in bench.json
    assert f"Starting model: `{os.path.basename(path)}` (weights sha256 `{runs[0]['model_sha256']}`)" in md
    png = (out / "bench-sort.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # A second invocation reuses every finished run instead of training again.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("sort/*/seed*/summary.json")}
    assert main(argv) == 0
    assert "reused" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.glob("sort/*/seed*/summary.json")} == stamps


@pytest.mark.slow
def test_a_finished_run_with_another_config_is_refused_not_mixed_in(cache, tmp_path, capsys):
    out = tmp_path / "bench"
    base = ["bench", SPEC, "--quick", "--suites", "sort", "--methods", "grpo", "--output-dir", str(out)]
    assert main(base) == 0
    assert main(base + ["--set", "optim.lr=0.001"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run with a different config (optim.lr: " in err and "→ 0.001)" in err
    assert str(out / "sort" / "grpo" / "seed0") in err
    # how a run was logged and kept is not what it computed: reused, not trained again
    stamp = (out / "sort" / "grpo" / "seed0" / "summary.json").stat().st_mtime_ns
    assert main(base + ["--set", "train.log_every=2", "--set", "train.log_rollouts=true"]) == 0
    assert "reused" in capsys.readouterr().err
    assert (out / "sort" / "grpo" / "seed0" / "summary.json").stat().st_mtime_ns == stamp
    # a damaged summary cannot be reported: a one-line error naming it, not a traceback
    summary = out / "sort" / "grpo" / "seed0" / "summary.json"
    kept = summary.read_text()
    for damage, reason in [("[]", "a JSON list, not an object"), ('{"before": {}}', "no valid after, wall_s"),
                           (kept[: len(kept) // 2], "column")]:
        summary.write_text(damage)
        assert main(base) == 2
        err = capsys.readouterr().err
        assert f"{summary}: not a finished run's summary (" in err and reason in err and "delete" in err
    summary.write_text(kept)
    assert main(base) == 0
    # a finished run's eval log, cut short, would give a wrong curve: refused, naming the file
    evals = out / "sort" / "grpo" / "seed0" / "eval.jsonl"
    whole = evals.read_text()
    for cut, said in [(whole[:-20], f"{evals}:3: "), (whole[: whole.rindex("{")], "the log ends at step 1, before the final")]:
        evals.write_text(cut)
        assert main(base) == 1  # damaged data, not a config mistake
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err
    evals.write_text(whole)
    assert main(base) == 0


HOLDER = """
import sys, time
from distil_core.training.rundir import prepare_run_dir
created, lock = prepare_run_dir(sys.argv[1])
open(sys.argv[1] + "/metrics.jsonl", "w").write('{"step": 1}\\n')
print("training", flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.slow
def test_a_run_another_bench_is_training_is_refused_not_deleted(cache, tmp_path, capsys):
    """Before: a second bench on the same output directory found a run without summary.json,
    took it for an interrupted one and deleted the directory under the process training it; both
    then wrote the same run. Now the run's lock refuses it, naming the process, and nothing of
    that run is touched."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "bench"
    run = out / "sort" / "grpo" / "seed0"
    run.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "training\n"
        argv = ["bench", SPEC, "--quick", "--suites", "sort", "--methods", "grpo", "--output-dir", str(out)]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"process {holder.pid} on host" in err and "is in use" in err, err
        assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'  # the holder's file, untouched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(argv) == 0  # the holder gone, the interrupted run starts again
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_an_interrupted_run_is_started_again(cache, tmp_path, capsys):
    out = tmp_path / "bench"
    half = out / "sort" / "distil" / "seed0"
    half.mkdir(parents=True)
    (half / "metrics.jsonl").write_text('{"step": 1}\n')  # no summary.json: it never finished
    assert main(["bench", SPEC, "--quick", "--suites", "sort", "--methods", "distil", "--output-dir", str(out)]) == 0
    assert json.loads((half / "summary.json").read_text())["steps"] == 2


def test_methods_must_share_the_rollout_budget(tmp_path):
    spec = yaml.safe_load(open(SPEC))
    spec["methods"]["distil"]["set"] = {"train.steps": 8}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    loaded, base = load_spec(str(path))
    bench = Bench(loaded, base, str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="would not get the same rollout budget"):
        bench.run()


def test_a_method_may_split_a_steps_rollouts_its_own_way_but_not_spend_more(tmp_path):
    """GRPO needs a group of samples per problem, a distillation loss does not: a method may
    spend a step's 16 rollouts on 8 problems × 2 samples where the others take 4 × 4, and the
    report says so; 8 × 4 would be more rollouts, and is refused. The method names its samples
    per problem; each suite's rollouts per step give its problems."""
    from distil_core.cli.report import render_markdown

    spec = yaml.safe_load(open(SPEC))
    spec["methods"]["distil"]["samples_per_problem"] = 2  # the suite's 4 × 4 rollouts a step: 8 × 2
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    bench = Bench(*load_spec(str(path)), str(tmp_path / "out"), suites=["sort"], methods=["grpo", "distil"],
                  seeds=[0])
    bench.check()
    budget = bench.budget("sort")
    assert budget["splits"] == {"grpo": (4, 4), "distil": (8, 2)} and budget["rollouts"] == 4 * 16
    rows = [{"suite": "sort", "method": m, "seed": 0, "run_dir": str(tmp_path), "wall_s": 1.0,
             "before": {"pass@1": 0.1, "pass@4": 0.3}, "after": {"pass@1": a, "pass@4": 0.5},
             "curve": [{"step": 0, "pass@1": 0.1}, {"step": 4, "pass@1": a}], "response_tokens": [],
             "reference_tokens": None, "source": None, "model": None, "model_sha256": None}
            for m, a in (("grpo", 0.2), ("distil", 0.4))]
    md = render_markdown(bench, rows, {}, "distil bench")
    assert "4 steps × 16 rollouts (problems × samples: grpo 4 × 4; distil 8 × 2) = 64 rollouts" in md
    assert "methods that split a step's rollouts into the same problems × samples start from the same" in md
    assert "| distil | `distil` | `samples_per_problem: 2` |" in md  # the method's own settings name its split
    # a --set of the split for every run replaces the method's own, as for any key
    given = Bench(*load_spec(str(path)), str(tmp_path / "out"), suites=["sort"], methods=["grpo", "distil"],
                  seeds=[0], overrides=["rollout.samples_per_problem=2", "rollout.problems_per_step=8"])
    assert given.budget("sort")["splits"] == {"grpo": (8, 2), "distil": (8, 2)}
    spec["methods"]["distil"]["samples_per_problem"] = 3
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="suite 'sort', method 'distil': samples_per_problem 3 does not divide the "
                                          "suite's 16 rollouts per step"):
        Bench(*load_spec(str(path)), str(tmp_path / "out"), suites=["sort"], methods=["grpo", "distil"], seeds=[0])

    del spec["methods"]["distil"]["samples_per_problem"]
    spec["methods"]["distil"]["set"] = {"rollout.problems_per_step": 8, "rollout.samples_per_problem": 4}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"would not get the same rollout budget \(grpo: 4 steps × 4 × 4 rollouts"):
        Bench(*load_spec(str(path)), str(tmp_path / "out"), suites=["sort"], methods=["grpo", "distil"],
              seeds=[0]).check()


@pytest.mark.parametrize("key, value", [("task.options.length", 4), ("eval.temperature", 0.5),
                                        ("verifier", {"name": "two_ways"}), ("model.tiny.steps", 7)])
def test_methods_must_be_measured_alike(tmp_path, key, value):
    """Before: only the rollout budget was compared, so one method of a suite could train and be
    graded on another task, verifier, starting model or evaluation and sit in the same table."""
    spec = yaml.safe_load(open(SPEC))
    spec["methods"]["distil"]["set"] = {key: value}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    loaded, base = load_spec(str(path))
    bench = Bench(loaded, base, str(tmp_path / "out"))
    shown = "verifier.name" if key == "verifier" else key  # the first key that differs, not a whole section
    with pytest.raises(ConfigError, match=rf"the methods of suite '\w+' would not be measured alike: {shown} is "):
        bench.check()
    assert not (tmp_path / "out").exists()
    spec["methods"]["distil"]["set"] = {"model.lora": {"r": 8}, "model.gradient_checkpointing": True}
    path.write_text(yaml.safe_dump(spec))  # how a method trains is its own: accepted
    Bench(*load_spec(str(path)), str(tmp_path / "out")).check()


def test_spec_errors_name_the_file_and_the_key(tmp_path, capsys):
    spec = yaml.safe_load(open(SPEC))
    spec["methods"]["jsd"]["sett"] = {}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["bench", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "methods.jsd.sett" in err

    assert main(["bench", SPEC, "--suites", "sorting", "--dry-run"]) == 2
    assert "unknown suite 'sorting'" in capsys.readouterr().err

    spec = yaml.safe_load(open(SPEC))
    spec["suites"]["sort"]["set"]["rollout.samples_per_problm"] = 4
    path.write_text(yaml.safe_dump(spec))
    assert main(["bench", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "suite 'sort'" in err and "samples_per_problm" in err and "samples_per_problem" in err


def test_dry_run_lists_every_run(capsys):
    assert main(["bench", SPEC, "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 * 5 * 2  # suites × methods × seeds


def test_table_metrics_and_aggregate_of_hand_numbers():
    assert table_metrics(["pass@8", "obs_pass@8", "pass@1", "avg@8", "maj@8"]) == ["avg@8", "pass@1", "pass@8", "maj@8"]
    rows = [
        {"suite": "s", "method": "m", "seed": k, "wall_s": 10.0 + k, "before": {"pass@1": 0.2}, "after": {"pass@1": a}}
        for k, a in enumerate([0.5, 0.7, 0.9])
    ]
    agg = aggregate(rows)
    assert agg["s"]["base"]["pass@1"] == pytest.approx((0.2, 0.0, 3))
    mean, std, n = agg["s"]["m"]["pass@1"]
    assert (round(mean, 6), round(std, 6), n) == (0.7, 0.2, 3)


@pytest.mark.parametrize("suite", ["math", "code", "science"])
def test_the_embedded_bench_trains_each_suite_as_its_run_config_does(suite):
    """The embedded spec's suites mirror plugins/tasks/configs/<suite>.yaml: the same task,
    grader, feedback, expert, tiny base and rollouts (only the budget and the eval differ)."""
    from distil_core.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec, base = load_spec(None)
    bench = Bench(spec, base, "unused", suites=[suite], methods=["distil"], seeds=[0])
    ours = bench.configs[(suite, "distil", 0)].model_dump(mode="json")
    theirs = load_config(os.path.join(root, "plugins", "tasks", "configs", f"{suite}.yaml")).model_dump(mode="json")
    for key in ("task", "verifier", "feedback", "expert", "context", "system_prompt"):
        assert ours[key] == theirs[key], key
    assert ours["model"]["tiny"] == theirs["model"]["tiny"]
    for key in ("max_new_tokens", "temperature"):
        assert ours["rollout"][key] == theirs["rollout"][key], key
    # the same rollouts a step, split the way the method chose on validation
    per_step = theirs["rollout"]["problems_per_step"] * theirs["rollout"]["samples_per_problem"]
    assert ours["rollout"]["problems_per_step"] * ours["rollout"]["samples_per_problem"] == per_step
    assert ours["rollout"]["samples_per_problem"] == spec.methods["distil"].samples_per_problem


@pytest.mark.slow
def test_sweep_chooses_per_method_on_the_validation_split_never_the_test_problems(cache, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["bench", SPEC, "--quick", "--suites", "sort", "--methods", "grpo", "distil",
            "--sweep", "optim.lr=0.0003,0.003", "--output-dir", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert result["key"] == "optim.lr" and set(result["chosen"]) == {"grpo", "distil"}
    for method, entry in result["chosen"].items():
        scores = entry["validation"]
        assert entry["value"] in (0.0003, 0.003)
        assert scores[json.dumps(entry["value"])] == max(scores.values())
        for value in ("0.0003", "0.003"):
            run = out / f"optim.lr={value}" / "sort" / method / "seed0"
            summary = json.loads((run / "summary.json").read_text())
            assert summary["eval"]["split"] == "validation"
            config = yaml.safe_load((run / "config.yaml").read_text())
            assert config["optim"]["lr"] == float(value)
    # the validation problems are train problems held out of training, disjoint from the test split
    from distil_core.builtin import DigitsTask
    from distil_core.training.evaluate import evaluation_split

    task = DigitsTask(op="sort", length=2, train_size=80, test_size=16)
    train, validation = evaluation_split(task, "validation", 16)
    test_ids = {p.id for p in task.problems("test")}
    assert len(train) == 64 and not {p.id for p in validation} & (test_ids | {p.id for p in train})
    md = (out / "sweep.md").read_text()
    assert "| **" in md
    # each value's means per suite, the chosen metric's agreeing with the choice's own scores
    for method, entry in result["chosen"].items():
        assert f"## {method}: each suite" in md
        for value, score in entry["validation"].items():
            suite_scores = result["per_suite"][method][value]["sort"]
            assert suite_scores["pass@1"] == pytest.approx(score) and "pass@1" in suite_scores
    with pytest.raises(ConfigError, match="leaves none to train on"):
        evaluation_split(task, "validation", 80)


def test_the_weights_fingerprint_tells_starting_models_apart(tmp_path):
    """Two bases differing in one byte get different fingerprints; the file order does not
    matter; a path without local weights (a hub name, a GGUF file) has none."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d, last in ((a, b"\x00"), (b, b"\x01")):
        d.mkdir()
        (d / "model-00002-of-00002.safetensors").write_bytes(b"second")
        (d / "model-00001-of-00002.safetensors").write_bytes(b"first" + last)
        (d / "config.json").write_text("{}")
    fa, fb = weights_fingerprint(str(a)), weights_fingerprint(str(b))
    assert fa and fb and fa != fb and len(fa) == 12
    assert fa == hashlib.sha256(b"first\x00second").hexdigest()[:12]
    (tmp_path / "empty").mkdir()
    assert weights_fingerprint(str(tmp_path / "empty")) is None
    assert weights_fingerprint("HuggingFaceTB/SmolLM2-135M-Instruct") is None
    assert cpu_name().strip()


def _spec_with_base(tmp_path, band):
    spec = yaml.safe_load(open(SPEC))
    spec["suites"]["sort"]["base"] = {"pass@1": band}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _row(seed, before, after=0.5):
    return {"suite": "sort", "method": "distil", "seed": seed, "run_dir": "", "wall_s": 1.0,
            "before": {"pass@1": before}, "after": {"pass@1": after}, "curve": [], "response_tokens": [],
            "reference_tokens": None, "model": None, "model_sha256": None}


def test_a_starting_model_outside_the_suites_calibration_is_flagged(tmp_path):
    """A sparse suite names the range its starting model must fall in; the mean over seeds
    outside it is flagged in bench.md and on the terminal, inside it is not."""
    from distil_core.cli.report import calibration_warnings, render_markdown

    spec, base = load_spec(_spec_with_base(tmp_path, [0.0, 0.1]))
    bench = Bench(spec, base, str(tmp_path / "out"), suites=["sort"], methods=["distil"])
    outside = [_row(0, 0.11), _row(1, 0.13)]  # mean 12 %
    [warning] = calibration_warnings(bench, outside)
    assert warning.startswith("sort: the starting model's pass@1 is 12.0 %, outside the suite's 0–10 %")
    assert f"**Outside the calibration.** {warning}" in render_markdown(bench, outside, {}, "distil bench")
    inside = [_row(0, 0.09), _row(1, 0.1)]  # the range is closed: 10 % is in it
    assert calibration_warnings(bench, inside) == []
    edge = [_row(0, 0.1), _row(1, 0.1), _row(2, 0.1)]  # a float mean of 0.10000000000000002 is still 10.0 %
    assert calibration_warnings(bench, edge) == []
    unmeasured = [{**_row(0, 0.05), "before": {"pass@4": 0.05}}]
    [missing] = calibration_warnings(bench, unmeasured)
    assert "pass@1 was not measured, so its range 0–10 % cannot be checked" in missing
    assert "Outside the calibration" not in render_markdown(bench, inside, {}, "distil bench")
    # a suite without a range is never flagged
    plain, base = load_spec(SPEC)
    assert calibration_warnings(Bench(plain, base, str(tmp_path / "o2"), suites=["sort"], methods=["distil"]), outside) == []


@pytest.mark.parametrize("band", [[0.2, 0.1], [-0.1, 0.1], [0.0, 1.5]])
def test_a_calibration_range_that_is_not_one_is_refused_naming_the_suite(tmp_path, capsys, band):
    path = _spec_with_base(tmp_path, band)
    assert main(["bench", path, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert path in err and "suites.sort.base" in err and "not a range of fractions" in err


def test_a_boolean_seed_is_refused_not_read_as_seed_1(tmp_path):
    """`seeds: [true, 1]` would run seed 1 twice into the same directories."""
    spec = yaml.safe_load(open(SPEC))
    spec["seeds"] = [True, 1]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"seeds\.0: Value error, is true; give an integer"):
        load_spec(str(path))


def test_what_would_fail_after_training_is_refused_before_any_run(tmp_path, capsys):
    out = tmp_path / "out"
    spec = yaml.safe_load(open(SPEC))
    spec["plot_metric"] = "pass@3"  # eval.ks is [1, 4]: no run would report it
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    for argv in (["bench", str(path), "--output-dir", str(out)], ["bench", str(path), "--dry-run"],
                 ["bench", SPEC, "--set", "eval.ks=[4]", "--output-dir", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert re.search(r"plot_metric 'pass@[13]' is not among what suite '\w+', method '\w+' evaluates \(avg@4", err)
    spec = yaml.safe_load(open(SPEC))
    suite = next(iter(spec["suites"]))
    spec["suites"][suite]["base"] = {"pass@3": [0.0, 0.1]}  # before, read as "not measured" after every run
    path.write_text(yaml.safe_dump(spec))
    assert main(["bench", str(path), "--dry-run"]) == 2
    assert f"suite {suite!r} gives a base range for pass@3, which its runs do not evaluate" in capsys.readouterr().err
    # a verifier without answers reports no maj@n: a spec that plots it is refused before training
    from distil_core.builtin import ExactMatchVerifier
    spec = yaml.safe_load(open(SPEC))
    spec["plot_metric"] = "maj@4"
    path.write_text(yaml.safe_dump(spec))
    assert main(["bench", str(path), "--dry-run"]) == 0
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ExactMatchVerifier, "gives_answers", False, raising=False)
        assert main(["bench", str(path), "--dry-run"]) == 2
    assert "plot_metric 'maj@4' is not among what suite" in capsys.readouterr().err
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert main(["bench", SPEC, "--quick", "--output-dir", str(out), "--report-dir", str(not_a_dir / "rep")]) == 2
    assert f"--report-dir {not_a_dir / 'rep'}: cannot be made a directory" in capsys.readouterr().err
    assert not out.exists()  # nothing trained


@pytest.mark.parametrize("argv, said", [
    (["--seeds", "1", "1"], "the command line names seed 1 more than once"),
    (["--suites", "sort", "sort"], "names suite sort more than once"),
    (["--methods", "grpo,distil", "grpo"], "names method grpo more than once"),
])
def test_a_run_named_twice_is_refused(capsys, argv, said):
    assert main(["bench", SPEC, "--dry-run", *argv]) == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize("text, words", [("suites: [\n", "the bench spec is not valid YAML at line 2, column 1"),
                                         ("a: 1\na: 2\n", "key 'a' appears twice in one mapping")])
def test_a_spec_that_is_not_valid_yaml_is_one_line_naming_where(tmp_path, capsys, text, words):
    """Before, a spec with a YAML syntax error ended `distil bench` with NameError: name 'yaml'."""
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert main(["bench", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{path}: " in err and words in err, err


def test_duplicate_or_empty_seeds_in_a_spec_or_argument_are_refused(tmp_path, capsys):
    spec = yaml.safe_load(open(SPEC))
    spec["seeds"] = [0, 0]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["bench", str(path), "--dry-run"]) == 2
    assert "the spec names seed 0 more than once" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an argument naming nothing is an argparse error, not "every seed"
        main(["bench", SPEC, "--dry-run", "--seeds", ","])
    assert "',' names no seed" in capsys.readouterr().err


def test_a_sweep_is_planned_and_checked_whole_before_anything_trains(tmp_path, capsys):
    from distil_core.cli.sweep import parse_sweep

    assert parse_sweep("optim.lr=1e-4,3e-4") == ("optim.lr", [0.0001, 0.0003])  # YAML reads 1e-4 as text
    assert parse_sweep("loss.future_cost=kl,ce") == ("loss.future_cost", ["kl", "ce"])
    assert parse_sweep("x=nan,inf") == ("x", ["nan", "inf"])  # words stay words
    out = tmp_path / "sweep"
    argv = ["bench", SPEC, "--quick", "--suites", "sort", "--methods", "grpo", "--output-dir", str(out)]
    assert main(argv + ["--sweep", "optim.lr=0.001,0.003", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["optim.lr=0.001", "optim.lr=0.003"]
    assert main(argv + ["--sweep", "optim.lr=0.001,abc"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "'abc'" in err
    assert not out.exists()  # neither value trained: the bad one was found first


def test_a_sweep_of_several_keys_takes_their_values_together_in_order(tmp_path, capsys):
    """A step's rollouts split into problems × samples keeps the rollouts a step consumes only if
    both keys move at once: ``--sweep`` given twice pairs the values, one run folder per pair,
    each checked before any trains."""
    from distil_core.cli.sweep import parse_sweeps

    assert parse_sweeps(["optim.lr=1e-4,3e-4"]) == (["optim.lr"], [0.0001, 0.0003])
    keys, values = parse_sweeps(["rollout.problems_per_step=4,8", "rollout.samples_per_problem=4,2"])
    assert keys == ["rollout.problems_per_step", "rollout.samples_per_problem"] and values == [[4, 4], [8, 2]]
    for texts, said in ((["a.b=1,2", "c.d=1,2,3"], "each must name as many values (a.b: 2, c.d: 3)"),
                        (["a.b=1,2", "a.b=3,4"], "--sweep a.b: the key is given twice")):
        with pytest.raises(ConfigError, match=re.escape(said)):
            parse_sweeps(texts)
    out = tmp_path / "sweep"
    argv = ["bench", SPEC, "--quick", "--suites", "sort", "--methods", "distil", "--output-dir", str(out), "--dry-run"]
    assert main(argv + ["--sweep", "rollout.problems_per_step=4,8", "--sweep", "rollout.samples_per_problem=4,2"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    folders = ["rollout.problems_per_step=4,rollout.samples_per_problem=4",
               "rollout.problems_per_step=8,rollout.samples_per_problem=2"]
    assert [line[0] for line in lines] == folders
    assert [line[-1] for line in lines] == [str(out / f / "sort" / "distil" / "seed0") for f in folders]
    assert not out.exists()
    # one key may repeat a value where its partner differs; the same pair twice is refused
    assert parse_sweeps(["optim.lr=0.001,0.001", "optim.grad_clip=1,3"])[1] == [[0.001, 1], [0.001, 3]]
    with pytest.raises(ConfigError, match="two pairs of values are the same"):
        parse_sweeps(["optim.lr=0.001,0.001", "optim.grad_clip=1,1"])
    with pytest.raises(ConfigError, match="--sweep rollout.samples_per_problem: it lies inside --sweep rollout,"):
        parse_sweeps(["rollout={samples_per_problem: 2},{samples_per_problem: 4}", "rollout.samples_per_problem=4,2"])
    # one key's dry run names each value as JSON, as before
    assert main(argv + ["--sweep", "loss.future_cost=kl,ce"]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.strip().splitlines()] == [
        'loss.future_cost="kl"', 'loss.future_cost="ce"']
    # values that would spend other rollouts are refused before anything trains: the larger would win
    for sweep in (["rollout.problems_per_step=4,8", "rollout.samples_per_problem=4,4"], ["train.steps=2,4"]):
        assert main(argv + [arg for text in sweep for arg in ("--sweep", text)]) == 2
        err = capsys.readouterr().err
        assert "would give suite 'sort' another rollout budget than" in err and "the larger budget" in err
    assert not out.exists()


def test_a_sweep_report_shows_each_suite_and_what_the_choice_does_not_read():
    """The choice reads one metric's mean over suites; the report also gives each value's means
    per suite, of that metric and of every other pass@k, so a reader sees what the mean trades."""
    from distil_core.cli.sweep import per_suite

    def row(suite, seed, p1, p8):
        return {"suite": suite, "seed": seed, "after": {"pass@1": p1, "pass@8": p8, "greedy@1": 0.5, "flag": True}}

    rows = {"0.001": [row("a", 0, 0.2, 0.6), row("a", 1, 0.4, 0.8), row("b", 0, 0.5, 0.9), row("b", 1, 0.7, 0.9)],
            "0.002": [row("a", 0, 0.3, 0.5), row("a", 1, 0.5, 0.5), row("b", 0, 0.6, 0.7), row("b", 1, 0.6, 0.7)]}
    table = per_suite(rows)
    assert table["0.001"]["a"] == {"pass@1": pytest.approx(0.3), "pass@8": pytest.approx(0.7), "greedy@1": 0.5}
    scores = {v: {f"{r['suite']}/{r['seed']}": r["after"]["pass@1"] for r in rs} for v, rs in rows.items()}
    result = {"key": "optim.lr", "keys": ["optim.lr"], "values": [0.001, 0.002], "metric": "pass@1",
              "chosen": {"distil": choose([0.001, 0.002], scores)}, "per_suite": {"distil": table}}
    md = render_sweep(result, "distil bench --sweep optim.lr=0.001,0.002")
    assert "| distil | 45.0 ± 20.8 | 50.0 ± 14.1 | **0.002** |" in md
    assert "## distil: each suite" in md and "Validation pass@1 / pass@8 (%)" in md
    assert "| value | a | b | mean |" in md
    assert "| 0.001 | 30.0 / 70.0 | 60.0 / 90.0 | 45.0 / 80.0 |" in md
    assert "| 0.002 | 40.0 / 50.0 | 60.0 / 70.0 | 50.0 / 60.0 |" in md
    # a sweep.json written before the per-suite means renders as it did
    assert ": each suite" not in render_sweep({k: v for k, v in result.items() if k != "per_suite"}, "x")


def test_a_paired_sweep_report_says_how_to_read_a_value():
    result = {"key": "rollout.problems_per_step, rollout.samples_per_problem",
              "keys": ["rollout.problems_per_step", "rollout.samples_per_problem"], "values": [[16, 8], [64, 2]],
              "metric": "pass@1",
              "chosen": {"distil": choose([[16, 8], [64, 2]], {"[16, 8]": {"s/0": 0.2, "s/1": 0.3},
                                                                "[64, 2]": {"s/0": 0.4, "s/1": 0.5}})}}
    md = render_sweep(result, "distil bench --sweep ...")
    assert "# Sweep of `rollout.problems_per_step, rollout.samples_per_problem`" in md
    assert ("The keys were swept together: each value lists one setting per key, in the order "
            "`rollout.problems_per_step`, `rollout.samples_per_problem` ([16, 8] is `rollout.problems_per_step` 16, "
            "`rollout.samples_per_problem` 8).") in md
    assert "swept together" not in render_sweep({**result, "keys": ["optim.lr"], "key": "optim.lr"}, "x")
    assert "| distil | 25.0 ± 7.1 | 45.0 ± 7.1 | **[64, 2]** |" in md


def test_a_sweep_value_may_be_a_list_and_the_report_writes_words_bare(tmp_path, capsys):
    """Before: the values were split at every comma, so a list (AdamW's betas) could not be
    swept, and the report wrote a word as JSON ("cosine" with its quotes)."""
    from distil_core.cli.sweep import parse_sweep, parse_sweeps, split_values

    assert parse_sweep("optim.betas=[0.9,0.99],[0.9,0.999]") == ("optim.betas", [[0.9, 0.99], [0.9, 0.999]])
    assert split_values('a,"x,y",{b: 1, c: 2},[1,[2,3]]') == ['a', '"x,y"', "{b: 1, c: 2}", "[1,[2,3]]"]
    assert parse_sweeps(["optim.betas=[0.9,0.99],[0.9,0.999]", "optim.schedule=constant,cosine"])[1] == [
        [[0.9, 0.99], "constant"], [[0.9, 0.999], "cosine"]]
    out = tmp_path / "sweep"
    argv = ["bench", SPEC, "--quick", "--suites", "sort", "--methods", "grpo", "--output-dir", str(out), "--dry-run"]
    assert main(argv + ["--sweep", "optim.betas=[0.9,0.99],[0.9,0.999]"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["optim.betas=[0.9, 0.99]", "optim.betas=[0.9, 0.999]"]
    folder = str(out / "optim.betas=[0.9, 0.999]" / "sort" / "grpo" / "seed0")
    assert lines[1].split("\t")[-1] == folder
    spec, base = load_spec(SPEC)
    bench = Bench(spec, base, str(out), quick=True, suites=["sort"], methods=["grpo"],
                  overrides=["optim.betas=[0.9, 0.999]"])
    assert {cfg.optim.betas for cfg in bench.configs.values()} == {(0.9, 0.999)}
    runs = ["s/0", "s/1"]
    entry = choose(["constant", "cosine"], {'"constant"': dict(zip(runs, [0.2, 0.3])),
                                            '"cosine"': dict(zip(runs, [0.3, 0.2]))})
    md = render_sweep({"key": "optim.schedule", "values": ["constant", "cosine"], "metric": "pass@1",
                       "chosen": {"distil": entry}, "per_suite": {"distil": {'"cosine"': {"s": {"pass@1": 0.25}}}}},
                      "x")
    assert "| method | constant | cosine | chosen |" in md and '"' not in md
    assert "| **constant** | cosine (0.0 ± 10.0) |" in md and "| cosine | 25.0 | 25.0 |" in md
    # as in YAML, a quote or bracket opens only where a value starts: words keep their apostrophes
    assert parse_sweep("system_prompt=Let's think,Answer briefly")[1] == ["Let's think", "Answer briefly"]
    assert split_values("a[b,c") == ["a[b", "c"] and split_values("{a: 'x,y'},[it's, b]") == ["{a: 'x,y'}", "[it's, b]"]
    with pytest.raises(ConfigError, match=re.escape("--sweep value '[0.9,0.99'")):
        parse_sweep("optim.betas=[0.9,0.99")
    # a word that would read back as something else keeps its quotes, so no two columns look alike
    from distil_core.cli.sweep import shown
    assert [shown(v) for v in ("null", None, "true", True, ["a, b"], ["a", "b"])] == [
        '"null"', "null", '"true"', "true", '["a, b"]', "[a, b]"]


def test_an_interrupted_bench_says_to_run_the_same_command_again(monkeypatch, tmp_path, capsys):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Bench, "run", interrupted)
    assert main(["bench", SPEC, "--quick", "--output-dir", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    assert "run the same command again" in err and "--resume" not in err


def test_a_setting_given_to_every_run_replaces_a_methods_own_in_the_report(tmp_path):
    """`--set` comes after a method's own settings, so the report must not list the method's
    value as what it trained with."""
    from distil_core.cli.report import render_markdown

    spec, base = load_spec(SPEC)
    plain = render_markdown(Bench(spec, base, str(tmp_path / "a"), suites=["sort"], methods=["jsd"]),
                            [_row(0, 0.1)], {}, "distil bench")
    assert "| jsd | `jsd` | `loss.beta: 0.5` |" in plain and "Every run also sets" not in plain
    given = Bench(spec, base, str(tmp_path / "b"), suites=["sort"], methods=["jsd"], overrides=["loss.beta=1.0"])
    assert given.configs[("sort", "jsd", 0)].loss.beta == 1.0
    report = render_markdown(given, [_row(0, 0.1)], {}, "distil bench --set loss.beta=1.0")
    assert "| jsd | `jsd` | – |" in report
    assert "Every run also sets `loss.beta=1.0` (`--set`, over any method's own setting of the same key)." in report


def test_a_sweep_names_the_values_it_cannot_tell_from_its_choice():
    """The highest mean is chosen; a value whose paired gap to it (per suite and seed) is within
    one standard error is named within noise, and one behind it on every run is not. Before: a
    choice by 0.1 point over three seeds read as firmly as one by ten."""
    runs = ["sort/0", "sort/1", "sort/2"]
    by_value = {
        "0.001": dict(zip(runs, [0.30, 0.26, 0.34])),
        "0.0006": dict(zip(runs, [0.32, 0.24, 0.33])),  # gaps -0.02, +0.02, +0.01: noise
        "0.0003": dict(zip(runs, [0.20, 0.17, 0.23])),  # behind by 0.09-0.11 on every run
    }
    entry = choose([0.0003, 0.0006, 0.001], by_value)
    assert entry["value"] == 0.001 and entry["within_noise"] == [0.0006]
    assert entry["gap"]["0.0003"]["mean"] == pytest.approx(0.1) and entry["gap"]["0.0003"]["runs"] == 3
    assert entry["std"]["0.001"] == pytest.approx(0.04)
    # an exact tie goes to the value listed first, and the other is within noise of it
    tie = choose([1.0, 0.5], {"1.0": dict(zip(runs, [0.2, 0.3, 0.4])), "0.5": dict(zip(runs, [0.4, 0.3, 0.2]))})
    assert tie["value"] == 1.0 and tie["within_noise"] == [0.5]
    md = render_sweep({"key": "optim.lr", "values": [0.0003, 0.0006, 0.001], "metric": "pass@1",
                       "chosen": {"distil": entry}}, "distil bench --sweep optim.lr=0.0003,0.0006,0.001")
    row = next(line for line in md.splitlines() if line.startswith("| distil |"))
    assert "30.0 ± 4.0" in row and "**0.001**" in row and "0.0006 (" in row and "0.0003 (" not in row


def test_the_leader_of_a_metric_and_the_methods_within_noise_of_it():
    """A method behind the leader on every seed is not within noise of it; one ahead on some
    seeds and behind on others is, even when its mean is lower; ties go to the first listed."""
    scores = {
        "grpo": {0: 0.27, 1: 0.29, 2: 0.27},
        "distil": {0: 0.25, 1: 0.28, 2: 0.29},   # gaps 0.02, 0.01, -0.02: within noise
        "jsd": {0: 0.01, 1: 0.00, 2: 0.01},      # far behind on every seed
        "other": {0: 0.27},                      # one seed: no paired gap to judge
    }
    best, gaps = leaders(scores)
    assert best == "grpo" and list(gaps) == ["distil", "jsd"]  # "other" shares one seed only
    assert [name for name, gap in gaps.items() if within_noise(gap)] == ["distil"]
    assert gaps["distil"]["mean"] == pytest.approx(0.0033, abs=1e-3) and gaps["distil"]["runs"] == 3
    assert leaders({"a": {0: 0.5, 1: 0.5}, "b": {0: 0.5, 1: 0.5}})[0] == "a"


def test_a_sweep_over_one_seed_says_it_judged_no_noise():
    """With one seed there is no paired gap: the report says so rather than "none"."""
    entry = choose([1.0, 0.5], {"1.0": {"sort/0": 0.3}, "0.5": {"sort/0": 0.2}})
    assert entry["value"] == 1.0 and entry["gap"] == {} and entry["within_noise"] == []
    md = render_sweep({"key": "loss.expert_temperature", "values": [1.0, 0.5], "metric": "pass@1",
                       "chosen": {"distil": entry}}, "distil bench --sweep loss.expert_temperature=1.0,0.5")
    assert "| **1.0** | not judged (one seed) |" in md


def test_the_report_header_names_the_source_each_run_was_trained_at():
    """Before: a report rewritten from finished runs named the revision that printed it as the one
    the runs were trained with."""
    rows = [{"source": "abc"}, {"source": "abc"}]
    assert source_line("abc", rows) == ", source abc"
    mixed = source_line("def", rows + [{"source": None}, {}])
    assert mixed == "; trained: 2 runs at source abc, 2 runs at an unrecorded source; report written at source def"
    assert source_line(None, rows).endswith("report written at source unknown (not a git checkout)")
    assert source_line(None, [{"source": None}]) == ""  # an installed wheel then and now


def test_the_source_revision_is_the_toolkits_only_where_git_tracks_the_toolkit(tmp_path):
    """A copy of the toolkit inside another git repository (a virtual environment in a project's
    folder) does not take that repository's revision for its own."""
    import importlib.util
    import shutil
    import subprocess

    import distil_core.version as source

    here = source.source_revision()
    if here is not None:  # a checkout of the toolkit: git's own answer
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(source.__file__),
                              capture_output=True, text=True, check=True).stdout.strip()
        assert head.startswith(here.removesuffix("-dirty").rsplit("-g", 1)[-1])
    project = tmp_path / "project"
    (project / ".venv" / "distil_core").mkdir(parents=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q"], cwd=project, check=True)
    (project / "app.py").write_text("print('the project')\n")
    subprocess.run(git + ["add", "app.py"], cwd=project, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "project"], cwd=project, check=True)
    copy = project / ".venv" / "distil_core" / "version.py"
    shutil.copy(source.__file__, copy)
    spec = importlib.util.spec_from_file_location("copied_version", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.source_revision() is None
