"""``distil plot``: the curves of real runs overlaid in one PNG, and its errors."""

import json
import re
import sys

import numpy as np
import pytest

from distil_core.cli.curves import PANELS, build_figure, plot_runs, run_labels
from distil_core.cli.main import main
from distil_core.cli.plots import require_matplotlib
from distil_core.cli.runlogs import load_run
from distil_core.config import load_config
from distil_core.errors import DistilError
from distil_core.plugin_host import PluginHost
from distil_core.testing import FAST_RUN, use_cache
from distil_core.training.trainer import Trainer

matplotlib_image = pytest.importorskip("matplotlib.image")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_base_cache_dir):
    """A distil run and a grpo run of four steps, each evaluated every two steps."""
    root = tmp_path_factory.mktemp("runs")
    with use_cache(tiny_base_cache_dir):
        for method in ("distil", "grpo"):
            config = load_config(None, FAST_RUN + [f"method={method}", "train.eval_every=2"])
            Trainer(config, run_dir=str(root / method), host=PluginHost(load_entrypoints=False),
                    echo=lambda *_: None).fit()
    return [str(root / "distil"), str(root / "grpo")]


def _hand_run(path, metrics, evals=(), method="distil"):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    (path / "config.yaml").write_text(f"method: {method}\n")
    return str(path)


def _pixels_near(image, hex_color, tol=0.06):
    rgb = np.array([int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(image[..., :3] - rgb).max(axis=-1) < tol).sum())


@pytest.mark.slow
def test_two_runs_are_drawn_overlaid_with_a_legend_naming_each(two_runs, tmp_path):
    out = tmp_path / "curves.png"
    report = plot_runs(two_runs, str(out))
    image = matplotlib_image.imread(str(out))
    # seven panels on a 3 × 3 grid of 4.5 × 3.25 in panels at 100 dpi, a quarter inch per legend row on top
    assert (report.width, report.height) == (1350, 1025)
    assert image.shape[:2] == (1025, 1350)
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert report.labels == ["distil", "grpo"]
    assert report.panels == [p.title for p in PANELS.values()]
    # grpo has no expert: its CE/KL are null, but the distil run's are drawn, so nothing is "not logged"
    assert report.not_logged == []
    for color in ("#1f77b4", "#ff7f0e"):  # each run's colour (C0, C1) is on the canvas
        assert _pixels_near(image, color) > 500, color


@pytest.mark.slow
def test_the_figure_holds_each_runs_curves_and_evaluations(two_runs):
    plt = require_matplotlib("distil plot")
    runs = [load_run(p) for p in two_runs]
    fig, top = build_figure(plt, runs, list(PANELS.values()))
    try:
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["distil", "grpo"]
        assert 0.8 < top < 1.0
        axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
        held_out = axes["held-out pass@1"]
        assert [list(line.get_xdata()) for line in held_out.lines] == [[0, 2, 4], [0, 2, 4]]  # before, step 2, after
        evals = [r["pass@1"] * 100 for r in runs[0].evals]
        assert list(held_out.lines[0].get_ydata()) == pytest.approx(evals)
        assert len(axes["CE to the expert"].lines) == 1  # only the distil run has an expert distribution
        assert len(axes["reward"].lines) == 2
        stages = [t.get_text() for t in axes["time per stage"].get_yticklabels()]
        assert "generate" in stages and "update" in stages and "step" not in stages
    finally:
        plt.close(fig)


@pytest.mark.slow
def test_cli_plots_one_run_into_its_directory_and_marks_missing_panels(two_runs, capsys):
    assert main(["plot", two_runs[1], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"].endswith("grpo/curves.png")
    assert matplotlib_image.imread(report["path"]).shape[:2] == (report["height"], report["width"])
    assert report["labels"] == ["grpo"]
    assert report["not_logged"] == ["CE to the expert", "KL to the expert"]  # null in every grpo row


def test_metrics_pick_the_panels_and_any_logged_key_is_one(tmp_path, capsys):
    run = _hand_run(tmp_path / "a", [{"step": s, "loss": 1.0 / s, "reward": 0.1 * s} for s in range(1, 6)],
                    [{"step": 0, "pass@1": 0.1, "pass@8": 0.3}, {"step": 5, "pass@1": 0.2, "pass@8": 0.5}])
    out = tmp_path / "p.png"
    assert main(["plot", run, "--output", str(out), "--metrics", "loss,pass@8", "time"]) == 0
    printed = capsys.readouterr().out
    assert "panels: loss, pass@8, time per stage" in printed and "not logged by any run: time per stage" in printed
    assert matplotlib_image.imread(str(out)).shape[:2] == (375, 1350)  # one row of three panels, the legend above
    assert main(["plot", run, "--output", str(out), "--metrics", "los"]) == 2
    err = capsys.readouterr().err
    assert "--metrics 'los'" in err and "Did you mean 'loss'?" in err


def test_labels_are_methods_when_distinct_else_directory_names(tmp_path):
    rows = [{"step": 1, "reward": 0.5}]
    a = load_run(_hand_run(tmp_path / "x" / "seed0", rows, method="distil"))
    b = load_run(_hand_run(tmp_path / "y" / "seed0", rows, method="grpo"))
    c = load_run(_hand_run(tmp_path / "z" / "seed0", rows, method="grpo"))
    assert run_labels([a, b]) == ["distil", "grpo"]
    assert run_labels([b, c]) == ["y/seed0", "z/seed0"]  # same method, same name: the parent tells them apart
    assert run_labels([a]) == ["seed0"]


def test_a_directory_without_metrics_is_named_with_what_a_run_holds(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "no metrics.jsonl" in err and "eval.jsonl" in err
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_a_malformed_metrics_line_is_named_by_file_and_line(tmp_path, capsys):
    run = _hand_run(tmp_path / "r", [{"step": 1, "reward": 0.5}])
    with open(f"{run}/metrics.jsonl", "a") as fh:
        fh.write('{"step": 2, "reward": \n{"step": 3}\n')
    assert main(["plot", run, "--output", str(tmp_path / "p.png")]) == 1
    assert f"{run}/metrics.jsonl:2: not a JSON line" in capsys.readouterr().err
    with open(f"{run}/eval.jsonl", "w") as fh:
        fh.write('["step", 0]\n')
    with pytest.raises(DistilError, match=r"eval\.jsonl:1: not a step record"):
        load_run(run)


@pytest.mark.parametrize("line, reason", [
    ('{"step": 2, "reward": %s}' % (10 ** 400), "'reward' is an integer too large for a float"),
    ('{"step": 2, "x": %s}' % ("[" * 100_000 + "]" * 100_000), "not a JSON line (nested too deeply)"),
    ('{"step": 2, "x": %s}' % ("9" * 5000), "not a JSON line (an integer too long to read)"),
])
def test_numbers_and_nesting_no_reader_can_take_are_named_by_file_and_line(tmp_path, line, reason):
    run = _hand_run(tmp_path / "r", [{"step": 1, "reward": 0.5}])
    with open(f"{run}/metrics.jsonl", "a") as fh:
        fh.write(line + "\n")
    with pytest.raises(DistilError, match=re.escape(f"metrics.jsonl:2: {reason}")):
        load_run(run)


def test_an_unfinished_last_line_is_a_run_still_writing(tmp_path):
    run = _hand_run(tmp_path / "r", [{"step": 1, "reward": 0.5}])
    with open(f"{run}/metrics.jsonl", "a") as fh:
        fh.write('{"step": 2, "rew')
    assert [r["step"] for r in load_run(run).metrics] == [1]


def test_without_matplotlib_the_error_says_what_to_install(tmp_path, monkeypatch, capsys):
    run = _hand_run(tmp_path / "r", [{"step": 1, "reward": 0.5}])
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", run]) == 1
    assert "pip install 'distil-toolkit[bench]'" in capsys.readouterr().err
    assert not (tmp_path / "r" / "curves.png").exists()
