"""The tiny base learns each suite's own feedback text, and a few real training steps run."""

import json
import random
from pathlib import Path

import pytest
from distil_core.config import load_config
from distil_core import ContextTemplate
from distil_core.training.runtime import base_feedback_components, tiny_base_key
from distil_core.models.tiny import BaseFeedback, base_examples
from distil_core.training.trainer import Trainer

import distil_code_exec.plugin
import distil_tasks.plugin
from distil_tasks import MathAnswerVerifier, MathStepsFeedback, MathTask, MCLetterVerifier, ScienceTask, WorkedExplanationFeedback

CONFIGS = __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "configs")


@pytest.fixture
def host(plugin_host):
    """The test's process-wide host, with the suites' plugins registered in-process."""
    plugin_host.register_plugin(distil_tasks.plugin, "tasks")
    plugin_host.register_plugin(distil_code_exec.plugin, "code_exec")
    return plugin_host


def test_base_examples_show_the_suites_feedback_and_answers():
    task = ScienceTask(train_size=100, test_size=10)
    teacher = BaseFeedback(task, MCLetterVerifier(), [WorkedExplanationFeedback()])
    examples = list(base_examples(task.problems("train"), ContextTemplate(), random.Random(0), 200, 0.1, teacher))
    assert {answer for _, answer in examples} == {f"<answer>{x}</answer>" for x in "ABCD"}
    contexts = [m[-1]["content"] for m, _ in examples]
    with_feedback = [c for c in contexts if "Feedback on an earlier unsuccessful attempt: Your answer" in c]
    assert len(with_feedback) > 80
    assert all("The answer is <answer>" in c for c in with_feedback)
    worked = ScienceTask(train_size=100, test_size=10, worked_answer=True)
    teacher = BaseFeedback(worked, MCLetterVerifier(), [WorkedExplanationFeedback()])
    for _, answer in base_examples(worked.problems("train"), ContextTemplate(), random.Random(0), 50, 0.1, teacher):
        assert " = " in answer and answer.endswith("</answer>")  # the calculation comes first


def test_feedback_pool_bounds_how_often_the_verifier_runs():
    class Counting(MathAnswerVerifier):
        calls = 0

        def verify(self, problem, rollout):
            Counting.calls += 1
            return super().verify(problem, rollout)

    task = MathTask(train_size=200, test_size=10)
    teacher = BaseFeedback(task, Counting(), [MathStepsFeedback()], pool=12)
    examples = list(base_examples(task.problems("train"), ContextTemplate(), random.Random(0), 300, 0.1, teacher))
    assert Counting.calls == 12 and len(teacher.pool) == 12
    steps = [m[-1]["content"] for m, _ in examples if "Steps:" in m[-1]["content"]]
    assert len(steps) > 100
    # Each feedback example is one of the pooled problems, answered with that problem's answer.
    pooled = {p.id: p for p, _ in teacher.pool}
    for messages, answer in examples:
        if "Steps:" in messages[-1]["content"]:
            problem = next(p for p in pooled.values() if messages[-1]["content"].startswith(p.prompt))
            assert answer == task.answer_text(problem) == problem.reference


def test_base_uses_the_runs_sources_but_not_model_backed_ones_and_the_default_key_is_kept(host):
    config = load_config(f"{CONFIGS}/science.yaml")
    assert base_feedback_components(config, host) == {
        "verifier": {"name": "mc_letter", "options": {}},
        "feedback": [{"name": "worked_explanation", "options": {}}],
    }

    class NeedsModel:
        def __init__(self, runtime):
            self.runtime = runtime

        def feedback(self, *args):
            return []

    register_source(host, "needs_model", NeedsModel)
    config = load_config(None, ["feedback=[needs_model]"])
    assert base_feedback_components(config, host)["feedback"] == [{"name": "answer_check", "options": {}}]

    class FromAStore(NeedsModel):  # reads a store that changes between runs, as `human` does
        pretrains_base = False

        def __init__(self, db: str = "x.sqlite"):
            self.db = db

    register_source(host, "from_a_store", FromAStore)
    config = load_config(None, ["feedback=[answer_check, from_a_store]"])
    assert base_feedback_components(config, host)["feedback"] == [{"name": "answer_check", "options": {}}]


def register_source(host, name, factory):
    """A plugin registering one feedback source, registered with ``host`` under ``name``."""
    class Plugin:
        @staticmethod
        @__import__("distil_core").hookimpl
        def register_feedback_sources(register):
            register(name, factory)

    host.register_plugin(Plugin, name)


def test_grading_speed_options_share_one_tiny_base_and_verdict_options_do_not(host):
    """code_exec's workers or batching change how fast it grades, not its verdicts: the tiny
    base (its pretraining reads those verdicts) is the same; a time limit can change verdicts."""
    def path(*verifier_options):
        options = ", ".join(verifier_options)
        config = load_config(f"{CONFIGS}/code.yaml", [f"verifier={{name: code_exec, options: {{{options}}}}}"])
        task = host.build("task", config.task.name, config.task.options)
        return tiny_base_key(config, task, host)[0]

    plain = path()
    assert path("workers: 4", "batch: false", "sessions: false", "batch_size: 8", "cache_size: 0") == plain
    # the journeys found a move to another backend pretraining a second base (four minutes)
    assert path("backend: bwrap") == plain and path("backend: process") == plain
    config = load_config(f"{CONFIGS}/code.yaml", ["feedback=[{name: code_exec, options: {backend: process}}]"])
    task = host.build("task", config.task.name, config.task.options)
    feedback_moved = tiny_base_key(config, task, host)[0]
    config = load_config(f"{CONFIGS}/code.yaml", ["feedback=[{name: code_exec, options: {backend: bwrap}}]"])
    assert tiny_base_key(config, task, host)[0] == feedback_moved  # the feedback source's backend too
    assert path("timeout_s: 5") != plain and path("memory_mb: 256") != plain


SMOKE = [
    "model.tiny={hidden_size: 32, layers: 1, heads: 2, steps: 15, batch_size: 16, lr: 0.005, plain_fraction: 0.3, feedback_pool: 12}",
    "rollout.problems_per_step=4",
    "rollout.samples_per_problem=4",
    "eval.problems=4",
    "eval.samples=2",
    "eval.ks=[1, 2]",
    "train.steps=2",
    "train.save_every=0",
    "train.progress=false",
]


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["math", "code", "science"])
def test_a_few_training_steps_on_each_suite(tmp_path, tiny_base_cache, host, suite):
    overrides = SMOKE + ["task.options.train_size=200", "task.options.test_size=8"]
    config = load_config(f"{CONFIGS}/{suite}.yaml", overrides)
    trainer = Trainer(config, run_dir=str(tmp_path / "run"), host=host, echo=lambda *_: None)
    try:
        summary = trainer.fit()
    finally:
        close = getattr(trainer.rt.verifier, "close", None)
        if callable(close):
            close()
    assert summary["task"] == suite and summary["steps"] == 2
    assert 0.0 <= summary["after"]["pass@1"] <= 1.0
    recipe = json.loads(next(Path(tiny_base_cache).glob(f"tiny-{suite}-*/recipe.json")).read_text())
    assert recipe["base_feedback"]["feedback"][0]["name"] == config.feedback[0].name
    kinds = {"math": "worked_steps", "code": "execution_trace", "science": "worked_explanation"}[suite]
    rows = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    failed = [r for r in rows if not r["verdict"]["passed"]]
    assert failed and all(f["kind"] == kinds for r in failed for f in r["feedback"])
    assert any(r["feedback"] for r in failed)
