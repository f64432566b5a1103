"""The performance scripts run end to end on small sizes and report what they measured."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_step_throughput_measures_every_figure_on_a_small_model(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_throughput.py"), "--device", "cpu", "--layers", "1",
         "--batch", "2", "--group", "2", "--prompt", "4", "--response", "6", "--new-tokens", "3",
         "--repeats", "1", "--gen-repeats", "1", "--memory-lengths", "256", "1024", "--skip-trl", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "distil / sft step time:" in text and "sft step" in text
    figures = json.loads(out.read_text())
    assert set(figures["step_s"]) == {"sft", "sft_plain", "distil", "distil_full"}
    assert all(seconds > 0 for seconds in figures["step_s"].values())
    memory = figures["loss_memory"]
    # the full-logit loss holds several T × V tensors and grows with T; the chunked one holds
    # one 256-position chunk whatever T is
    assert memory["1024"]["full_mb"] > 2 * memory["1024"]["chunked_mb"]
    grow_full = memory["1024"]["full_mb"] - memory["256"]["full_mb"]
    grow_chunked = memory["1024"]["chunked_mb"] - memory["256"]["chunked_mb"]
    assert grow_full > 500 and grow_chunked < 0.1 * grow_full
    gen = figures["generation_tokens_per_s"]
    assert gen["ours"] > 0 and gen["bare_generate"] > 0


def test_step_profile_averages_the_phase_timings_of_a_run(tmp_path):
    rows = [
        {"step": 1, "time_generate": 9.0, "time_verify": 9.0, "time_expert": 9.0, "time_update": 9.0},
        {"step": 2, "time_generate": 0.1, "time_verify": 0.2, "time_feedback": 0.0, "time_expert": 0.3, "time_update": 0.4},
        {"step": 3, "time_generate": 0.3, "time_verify": 0.2, "time_feedback": 0.2, "time_expert": 0.5, "time_update": 0.8},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_profile.py"), str(tmp_path), "--skip", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[2:]}
    assert lines["generate"] == ["200.0", "13.3%"]
    assert lines["update"] == ["600.0", "40.0%"]
    assert lines["step"][0] == "1500.0"


def test_step_profile_names_a_directory_without_metrics(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_profile.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "metrics.jsonl" in proc.stderr and "distil train" in proc.stderr


@pytest.mark.parametrize("flag", ["--batch 3 --group 2"])
def test_step_throughput_refuses_a_batch_that_does_not_split_into_groups(flag):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_throughput.py"), *flag.split()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "multiple of --group" in proc.stderr


TINY = ["--set", "model.tiny={hidden_size: 64, layers: 2, heads: 2, steps: 80, batch_size: 32, lr: 0.005, plain_fraction: 0.3}"]


def _diagnostics(tmp_path, *args):
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1")  # DISTIL_CACHE: the session's shared tiny-base cache
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_diagnostics.py"), *args],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_diagnostics_expert_gap_shows_the_feedback_helps_on_digits(tmp_path):
    """On digits the feedback states the answer: the expert must give it more probability."""
    result = _diagnostics(tmp_path, "expert-gap", "digits", "--problems", "16", *TINY)
    assert result["problems"] == 16
    student, expert = result["student"], result["expert"]
    assert all(0.0 < v <= 1.0 for v in (*student.values(), *expert.values()))
    assert expert["p_answer"] > student["p_answer"]


@pytest.mark.slow
def test_bench_diagnostics_expert_on_policy_splits_states_at_the_first_wrong_token(tmp_path):
    """The starting student's own samples: states on the reference and after its first error
    are counted apart, and the feedback (which states the answer) makes the expert surer of
    the reference than the student on the states still on it."""
    result = _diagnostics(tmp_path, "expert-on-policy", "digits", "--problems", "6", "--samples", "4", *TINY)
    assert result["rollouts"] == 24 and 0.0 <= result["pass_rate"] < 1.0
    on, after = result["on_reference"], result["after_first_error"]
    assert on["states"] > 0 and after["states"] > 0
    assert on["expert_p_reference"] > on["student_p_reference"] and on["kl"] >= 0.0 and after["kl"] >= 0.0
    assert 0.0 < after["expert_max_p"] <= 1.0 and 0.0 <= after["expert_top_is_reference"] <= 1.0
    assert 0.0 < result["first_token"]["expert_p_reference"] <= 1.0
    # every sample counted once under its first token; a failed one's later tokens give its future cost
    firsts = result["by_first_token"]
    assert sum(r["share"] for r in firsts.values()) == pytest.approx(1.0)
    assert sum(r["share"] * (1 - r["pass_rate"]) for r in firsts.values()) == pytest.approx(1 - result["pass_rate"])
    assert all(r["later_kl"] >= 0.0 for r in firsts.values() if r["later_kl"] == r["later_kl"])


@pytest.mark.slow
def test_bench_diagnostics_memorise_reports_train_set_and_held_out_pass_rates(tmp_path):
    result = _diagnostics(tmp_path, "memorise", "digits", "grpo", "--problems", "4", *TINY,
                          "--set", "train.steps=2", "--set", "rollout.problems_per_step=4",
                          "--set", "eval.problems=8", "--set", "eval.samples=2", "--set", "eval.ks=[1, 2]",
                          "--output-dir", str(tmp_path / "runs"))
    assert result["problems"] == 4 and result["method"] == "grpo"
    for pair in (result["train_set_pass@1"], result["held_out_pass@1"]):
        assert len(pair) == 2 and all(0.0 <= v <= 1.0 for v in pair)
    assert (tmp_path / "runs" / "digits-grpo" / "summary.json").exists()


@pytest.mark.slow
def test_bench_diagnostics_sharpness_teacher_forces_each_runs_final_model(tmp_path):
    """The base and a run trained from it: per-problem answer probabilities and token shares."""
    run = tmp_path / "run"
    _diagnostics(tmp_path, "memorise", "digits", "distil", "--problems", "4", *TINY,
                 "--set", "train.steps=2", "--set", "rollout.problems_per_step=4",
                 "--set", "eval.problems=8", "--set", "eval.samples=2", "--set", "eval.ks=[1, 2]",
                 "--output-dir", str(run))
    trained = run / "digits-distil"
    result = _diagnostics(tmp_path, "sharpness", "digits", str(trained), "--problems", "8", "--base", *TINY)
    assert result["problems"] == 8 and list(result["runs"]) == ["base", str(trained)]
    for r in result["runs"].values():
        assert 0.0 < r["median_p_answer"] <= 1.0 and 0.0 < r["mean_p_answer"] <= 1.0
        assert 0.0 <= r["tokens_below_0.1"] <= 1.0 and 0.0 <= r["tokens_above_0.9"] <= 1.0
        assert r["tokens_below_0.1"] + r["tokens_above_0.9"] <= 1.0
        assert sum(r["problems_by_p_answer"].values()) == pytest.approx(1.0)
        assert 0.0 < r["mean_p_greedy_answer"] <= 1.0
        # one position per answer token: five digits and the end token
        assert len(r["p_reference_by_position"]) == len(r["entropy_by_position"]) == 6
        assert all(0.0 < p <= 1.0 for p in r["p_reference_by_position"]) and all(h >= 0.0 for h in r["entropy_by_position"])
    assert result["runs"]["base"] != result["runs"][str(trained)]  # the trained model is not the base

    # the same run along the sampling temperature: greedy (T 0) draws one answer per problem, so
    # pass@2 equals pass@1 there; the table's mean row and the plot come with it
    out = _diagnostics(tmp_path, "temperatures", str(trained), "--temperatures", "0", "1", "--samples", "2",
                       "--plot", str(tmp_path / "frontier.png"))
    (row,) = out["runs"].values()
    assert row["method"] == "distil" and out["temperatures"] == [0.0, 1.0]
    greedy, sampled = row["by_temperature"]["0.0"], row["by_temperature"]["1.0"]
    assert greedy["pass@1"] == greedy["pass@2"]
    assert 0.0 <= sampled["pass@1"] <= sampled["pass@2"] <= 1.0
    assert (tmp_path / "frontier.png").stat().st_size > 0
    # fewer samples than the run evaluated with: its larger k are dropped, not an invalid config
    out = _diagnostics(tmp_path, "temperatures", str(trained), "--temperatures", "1", "--samples", "1")
    (row,) = out["runs"].values()
    assert [k for k in row["by_temperature"]["1.0"] if k.startswith("pass@")] == ["pass@1"]

    # pass@k for every power of two up to --samples, at the run's own temperature; a run in the
    # bench's layout (<suite>/<label>/seed<N>) is named by its label, any other by its method
    laid_out = tmp_path / "bench" / "digits" / "distil_wide" / "seed0"
    shutil.copytree(trained, laid_out)
    out = _diagnostics(tmp_path, "passk", str(trained), str(laid_out), "--samples", "4",
                       "--plot", str(tmp_path / "passk.png"), "--json", str(tmp_path / "passk.json"))
    assert json.loads((tmp_path / "passk.json").read_text()) == out
    assert out["ks"] == [1, 2, 4] and [r["method"] for r in out["runs"].values()] == ["distil", "distil_wide"]
    for r in out["runs"].values():
        curve = [r["pass@k"][str(k)] for k in out["ks"]]
        assert r["temperature"] == 1.0 and 0.0 <= curve[0] <= curve[1] <= curve[2] <= 1.0
    assert out["runs"][str(trained)]["pass@k"] == out["runs"][str(laid_out)]["pass@k"]  # same model, same seed
    assert (tmp_path / "passk.png").stat().st_size > 0
    # an output that cannot be written (a file where its folder should be) is one line naming it,
    # after the table
    (tmp_path / "a_file").write_text("")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_diagnostics.py"), "passk", str(trained),
                           "--samples", "2", "--json", str(tmp_path / "a_file" / "out.json")],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith("error: --json ") and "cannot be written (Not a directory)" in last
    assert str(tmp_path / "a_file" / "out.json") in last
    assert "| pass@1 | pass@2 |" in proc.stdout


def _logged_run(path, method, steps):
    """A run directory whose rollouts.jsonl holds ``steps`` ({step: [(answer, passed), ...]}) as
    the trainer writes them, in the bench's layout when ``path`` is."""
    from distil_core.config import load_config
    from distil_core.testing import problem, rollout, verdict
    from distil_core.training.runlog import rollout_record

    path.mkdir(parents=True)
    (path / "config.yaml").write_text(load_config(None, [f"method={method}"]).to_yaml())
    lines = [json.dumps(rollout_record(step, problem("0"), rollout(text), verdict(passed), []))
             for step, rows in steps.items() for text, passed in rows]
    (path / "rollouts.jsonl").write_text("".join(line + "\n" for line in lines))
    return path


def test_bench_diagnostics_choices_counts_first_characters_per_step_and_method(tmp_path):
    """Each reported step's rollouts by the first character of the answer (leading space
    ignored, an empty answer its own bucket), per run and as the mean over a method's runs:
    a character a run never opened with counts as share 0 there; steps between reports are skipped."""
    first = _logged_run(tmp_path / "bench" / "ways" / "distil" / "seed0", "distil", {
        1: [(" 12", True), ("21", False), ("23", False), ("", False)],
        2: [("11", True)] * 4,  # not a reported step at --every 4
        4: [("12", True), ("13", False), ("14", False), ("15", False)],
    })
    second = _logged_run(tmp_path / "bench" / "ways" / "distil" / "seed1", "distil", {
        1: [("21", False), ("22", False), ("1", False), ("1", True)],
        4: [("2", False)] * 4,
    })
    other = _logged_run(tmp_path / "grpo-run", "grpo", {1: [("9", False)]})
    out = _diagnostics(tmp_path, "choices", str(first), str(second), str(other), "--every", "4")
    assert list(out["runs"][str(first)]["steps"]) == ["1", "4"]
    step1 = out["runs"][str(first)]["steps"]["1"]
    assert step1["rollouts"] == 4 and step1["pass_rate"] == 0.25
    assert step1["by_first"] == {"": {"share": 0.25, "pass_rate": 0.0}, "1": {"share": 0.25, "pass_rate": 1.0},
                                 "2": {"share": 0.5, "pass_rate": 0.0}}
    mean = out["methods"]["distil"]
    assert mean["1"]["pass_rate"] == 0.25 and mean["1"]["by_first"]["1"] == {"share": 0.375, "pass_rate": 0.75}
    assert mean["4"]["by_first"]["1"] == {"share": 0.5, "pass_rate": 0.25}  # seed1 never opened with 1 at step 4
    assert mean["4"]["by_first"]["2"] == {"share": 0.5, "pass_rate": 0.0}
    assert out["methods"]["grpo"] == {"1": {"pass_rate": 0.0, "by_first": {"9": {"share": 1.0, "pass_rate": 0.0}}}}
    # the table a reader sees: per method, the most frequent first characters first; a
    # character a step never opened with shows as "0 / –"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_diagnostics.py"), "choices",
                           str(first), str(second), "--every", "4"], capture_output=True, text=True, timeout=120)
    table = proc.stdout.split("\n{")[0]
    assert "| step | passed | '2' | '1' | '' |" in table
    assert "| 1 | 25.0 | 50 / 0 | 38 / 75 | 12 / 0 |" in table
    assert "| 4 | 12.5 | 50 / 0 | 50 / 25 | 0 / – |" in table


def test_bench_diagnostics_choices_names_a_run_without_logged_rollouts(tmp_path):
    run = _logged_run(tmp_path / "run", "distil", {})
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_diagnostics.py"), "choices", str(run)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert str(run) in proc.stderr and "train.log_rollouts=true" in proc.stderr
    script = [sys.executable, str(ROOT / "benchmarks" / "bench_diagnostics.py"), "choices", str(run)]
    for damage in ('{"step": 1}\n', '{"step": 1, "response_text": "1", "verdict": {"passed": "false"}}\n'):
        (run / "rollouts.jsonl").write_text(damage)
        proc = subprocess.run(script, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert f"{run}: rollouts.jsonl holds a record at step 1 that is not a rollout record" in proc.stderr
    (run / "rollouts.jsonl").write_text("not json\n")  # the step-log rule names the line
    proc = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and f"{run / 'rollouts.jsonl'}:1: " in proc.stderr


def test_bench_diagnostics_choices_reads_a_log_still_being_written(tmp_path):
    """A blank line is skipped and a last line without its newline (a run still writing it) is
    left for the next read, as every step-log reader does."""
    run = _logged_run(tmp_path / "run", "distil", {1: [("1", True), ("2", False)]})
    with open(run / "rollouts.jsonl", "a") as fh:
        fh.write('\n{"step": 1, "response_text": "2", "verd')
    out = _diagnostics(tmp_path, "choices", str(run))
    assert out["runs"][str(run)]["steps"]["1"]["rollouts"] == 2


def test_shared_prefix_times_both_passes_both_ways_and_counts_the_positions(tmp_path):
    from distil_core.models.tiny import save_pretrained
    from distil_core.testing import tiny_model, tiny_tokenizer

    save_pretrained(tiny_model(), tiny_tokenizer(), str(tmp_path / "model"))
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "shared_prefix.py"), "--base", str(tmp_path / "model"),
         "--prompts", "2", "--samples", "4", "--prompt-tokens", "8", "--response-tokens", "3", "--repeats", "2",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    # 2 prompts of 7 cached positions, then 8 rows of 3; against 8 whole rows of 8 + 3
    assert (figures["positions_shared"], figures["positions_single"]) == (2 * 7 + 8 * 3, 8 * 11)
    for case in ("training pass", "scoring pass"):
        assert figures[case]["shared_ms"] > 0 and figures[case]["single_ms"] > 0
        assert case in proc.stdout
    # rows whose prefixes go on with 2 tokens of their own: the prompts' beginnings are shared
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "shared_prefix.py"), "--base", str(tmp_path / "model"),
         "--prompts", "2", "--samples", "4", "--prompt-tokens", "8", "--feedback-tokens", "2",
         "--response-tokens", "3", "--repeats", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 2 prompts of 8 cached positions, then 8 rows of their 2 tokens and the response but its
    # last (3 - 1); against 8 rows of 10 + 3
    figures = json.loads(out.read_text())
    assert (figures["positions_shared"], figures["positions_single"]) == (2 * 8 + 8 * 4, 8 * 13)
    assert "2 of its own per row" in proc.stdout
    refused = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "shared_prefix.py"), "--base", str(tmp_path / "model"),
         "--samples", "1"], capture_output=True, text=True, timeout=300,
    )
    assert refused.returncode != 0 and "sharing would save under 25 %" in refused.stderr


def _has_trl() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _has_trl(), reason="benchmarks/loop_vs_trl.py needs TRL (pip install trl), a benchmark-only dependency")
def test_loop_vs_trl_runs_every_trainer_on_one_budget_and_prints_the_ratios(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "loop_vs_trl.py"), "--steps", "2", "--problems", "2",
         "--samples", "2", "--eval-every", "1", "--eval-problems", "2", "--eval-samples", "1", "--threads", "1",
         "--repeats", "1", "--out", str(tmp_path / "runs"), "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    runs = figures["runs"]
    assert set(runs) == {"grpo", "jsd", "jsd-same-input", "distil", "trl-grpo", "trl-gkd"}
    for name, run in runs.items():
        assert run["steps"] == 2 and run["train_s"] > 0 and run["tokens"] > 0 and run["peak_mb"] > 100, name
        # evaluated before training and after each step, on a training-time clock that only grows
        assert [step for step, _, _ in run["curve"]] == [0, 1, 2], name
        assert run["curve"][0][1] == 0 < run["curve"][1][1] < run["curve"][2][1], name
    # the same held-out problems and sampling seed: every run starts from the same pass@1
    assert len({run["curve"][0][2] for run in runs.values()}) == 1
    # the budget reached each trainer: as many completion tokens as rollouts × tokens each
    assert all(run["tokens"] <= 2 * 2 * 2 * 10 for run in runs.values())
    text = proc.stdout
    assert "each run's figures are those of its median repeat of 1" in text
    for row in ("distil train, method: grpo / TRL GRPOTrainer", "distil train, method: jsd / TRL GKDTrainer",
                "distil train, method: jsd, expert input = student's / TRL GKDTrainer"):
        assert row in text
    assert f"time to pass@1 ≥ {figures['target']:.3f}" in text


@pytest.mark.slow
@pytest.mark.skipif(not _has_trl(), reason="benchmarks/loop_vs_trl.py needs TRL (pip install trl), a benchmark-only dependency")
def test_loop_vs_trl_repeats_each_pair_back_to_back_and_reports_each_runs_median_repeat(tmp_path):
    script = str(ROOT / "benchmarks" / "loop_vs_trl.py")
    even = subprocess.run([sys.executable, script, "--repeats", "2"], capture_output=True, text=True, timeout=60)
    assert even.returncode != 0 and "--repeats must be odd (got 2)" in even.stderr
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, script, "--steps", "2", "--problems", "2", "--samples", "2", "--eval-every", "2",
         "--eval-problems", "2", "--eval-samples", "1", "--threads", "1", "--repeats", "3", "--runs", "grpo", "trl-grpo",
         "--out", str(tmp_path / "runs"), "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    every = figures["every_repeat"]
    assert figures["repeats"] == 3 and {name: len(reps) for name, reps in every.items()} == {"grpo": 3, "trl-grpo": 3}
    for name, run in figures["runs"].items():
        assert run == sorted(every[name], key=lambda r: r["train_s"])[1], name
    # the pair back to back, the order turned round every other repeat
    order = [line.split()[1:3] for line in proc.stdout.splitlines() if line.strip().startswith("repeat ")]
    assert order == [["1/3", "grpo:"], ["1/3", "trl-grpo:"], ["2/3", "trl-grpo:"], ["2/3", "grpo:"],
                     ["3/3", "grpo:"], ["3/3", "trl-grpo:"]]
    for repeat in (1, 2, 3):
        assert (tmp_path / "runs" / f"repeat-{repeat}" / "grpo" / "metrics.jsonl").exists()
    ratios = [(a["steps"] / a["train_s"]) / (t["steps"] / t["train_s"]) for a, t in zip(every["grpo"], every["trl-grpo"])]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| distil train, method: grpo / TRL"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[2] == f"{sorted(ratios)[1]:.2f}×" and cells[3] == ", ".join(f"{x:.2f}" for x in ratios)


def test_each_distil_variant_names_the_settings_it_was_measured_at():
    """distil_variants.md's grid ran when the future cost was summed and the success weight was
    0 unless a variant set it; the defaults have moved since. A variant that leaves either to the
    default would measure something else than its row reports."""
    import distil_variants
    from distil_core.config import load_config

    for name, settings in distil_variants.VARIANTS.items():
        if settings.get("loss.future_credit") is False:
            continue  # the local term alone: neither setting applies
        assert "loss.future_reduce" in settings and "loss.reward_weight" in settings, name
        assert (settings["loss.reward_weight"] > 0) == ("λ" in name), name
        config = load_config(None, ["method=distil", *(f"{k}={json.dumps(v)}" for k, v in settings.items())])
        assert config.loss.reward_weight == settings["loss.reward_weight"], name
