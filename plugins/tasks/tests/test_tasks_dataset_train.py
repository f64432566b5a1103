"""Short training runs on a user's own data: a datasets directory, a Parquet file of code tests,
and a JSONL file with its own keys; each run finishes and its rollouts show the data's prompts."""

import json
import os
import time

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distil_core import ConfigError
from distil_core.config import load_config
from distil_core.testing import FAST_RUN
from distil_core.training.trainer import Trainer

import distil_code_exec.plugin
import distil_tasks.plugin

from tasks_testlib import write_jsonl


@pytest.fixture
def host(plugin_host):
    plugin_host.register_plugin(distil_tasks.plugin, "tasks")
    plugin_host.register_plugin(distil_code_exec.plugin, "code_exec")
    return plugin_host


def sums(n):
    return [{"q": f"add {a} {b}", "a": str(a + b)} for a in range(1, 9) for b in range(1, 9)][:n]


def train(tmp_path, host, options, *extra):
    overrides = FAST_RUN + [f"task={json.dumps({'name': 'dataset', 'options': options})}",
                            "train.steps=2", "train.save_every=0", "eval.problems=8", *extra]
    trainer = Trainer(load_config(None, overrides), run_dir=str(tmp_path / "run"), host=host, echo=lambda *_: None)
    summary = trainer.fit()  # closes the run's verifier and feedback sources when it ends
    rows = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    return summary, rows


@pytest.mark.slow
def test_a_datasets_directory_trains(tmp_path, tiny_base_cache, host):
    rows = sums(48)
    path = tmp_path / "saved"
    datasets.Dataset.from_dict({"question": [r["q"] for r in rows], "answer": [r["a"] for r in rows]}).save_to_disk(str(path))
    summary, logged = train(tmp_path, host, {"path": str(path), "prompt_key": "question", "test_fraction": 0.2})
    assert summary["task"] == "dataset" and summary["steps"] == 2
    assert logged and {r["prompt"] for r in logged} <= {r["q"] for r in rows}


@pytest.mark.slow
def test_a_parquet_file_of_code_tests_trains_with_code_exec(tmp_path, tiny_base_cache, host):
    rows = [{"task": f"Write f(x): add {c}.", "checks": [f"assert f({x}) == {x + c}" for x in (0, 3)],
             "program": f"def f(x): return x + {c}"} for c in range(2, 26)]
    path = tmp_path / "code.parquet"
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    options = {"path": str(path), "prompt_key": "task", "tests_key": "checks", "solution_key": "program"}
    before = children()
    # Every graded response is a sandbox run: a smaller base (its feedback is a pool of 8 graded
    # mistakes) and evaluation keep this run short.
    summary, logged = train(tmp_path, host, options, "verifier={name: code_exec, options: {workers: 2}}",
                            "feedback=[{name: code_exec, options: {max_failures: 1, max_chars: 200}}]",
                            "model.tiny.feedback_pool=8", "model.tiny.steps=15", "model.tiny.batch_size=16",
                            "rollout.max_new_tokens=16", "eval.problems=4", "eval.samples=2", "eval.ks=[1, 2]")
    assert summary["steps"] == 2
    assert {r["prompt"] for r in logged} <= {r["task"] for r in rows}
    failed = [r for r in logged if not r["verdict"]["passed"]]
    assert all(f["kind"] == "execution_trace" for r in failed for f in r["feedback"])
    # the run ended and closed code_exec: none of its grading workers outlives it
    deadline = time.monotonic() + 30
    while children() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not children() - before, children() - before


def children() -> set[int]:
    """This process's child processes."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # not a process, or gone
        if int(fields[1]) == os.getpid():
            found.add(int(entry))
    return found


@pytest.mark.slow
def test_a_jsonl_file_with_its_own_keys_trains_with_math_answer(tmp_path, tiny_base_cache, host):
    rows = [dict(r, sys="Reply with the sum.") for r in sums(40)]
    path = write_jsonl(tmp_path / "own.jsonl", rows)
    options = {"path": path, "prompt_key": "q", "answer_key": "a", "system_prompt_key": "sys"}
    summary, logged = train(tmp_path, host, options, "verifier=math_answer", "feedback=[math_steps]")
    assert summary["steps"] == 2
    assert {r["prompt"] for r in logged} <= {r["q"] for r in rows} and len({r["prompt"] for r in logged}) > 1


def test_code_tests_graded_as_text_stop_the_run_before_it_trains(tmp_path, tiny_base_cache, host):
    """The default verifier (exact_match) on a dataset of code tests would fail every rollout
    and show the tests as "the expected answer": the first grade stops the run, naming the fix."""
    rows = [{"prompt": f"Write f(x) = x + {c}.", "tests": [f"assert f(1) == {1 + c}"],
             "code": f"def f(x): return x + {c}"} for c in range(12)]
    options = {"path": write_jsonl(tmp_path / "code.jsonl", rows), "tests_key": "tests", "solution_key": "code"}
    with pytest.raises(ConfigError, match=r"exact_match: problem 'p-[0-9a-f]+' holds code tests.*verifier: code_exec"):
        train(tmp_path, host, options)
    assert not (tmp_path / "run" / "final").exists()
