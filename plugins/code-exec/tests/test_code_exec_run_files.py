"""Code graded while its run trains must not read the run's files: rollouts.jsonl holds every
problem's reference answer. A run directory is created 0750 and its logs and checkpoints 0600,
for the user who trains; the process backend (started by root) runs the code as another uid
that sees the host's /tmp, and bwrap and docker show no host /tmp at all."""

import os
import shutil
import tempfile

import pytest

import distil_sandbox
from distil_core.config import load_config
from distil_core.testing import FAST_RUN, use_cache
from distil_core.training.trainer import Trainer

BACKENDS = ["bwrap", "docker", "process"]
FILES = ("rollouts.jsonl", "metrics.jsonl", "config.yaml", "checkpoints/step-000001.pt")

READ_THE_RUN = """
import os
run = {run!r}
for name in {files!r}:
    try:
        with open(os.path.join(run, name), "rb") as fh:
            print("READ", name, len(fh.read()))
    except OSError as exc:
        print("no", name, exc.errno)
try:
    print("LISTED", os.listdir(run))
except OSError as exc:
    print("no listing", exc.errno)
"""


@pytest.fixture(scope="module")
def run_dir(tiny_base_cache_dir):
    """A one-step run under a directory of /tmp that anyone may pass through."""
    parent = tempfile.mkdtemp(prefix="distil-run-", dir="/tmp")
    os.chmod(parent, 0o755)
    run = os.path.join(parent, "run")
    try:
        with use_cache(tiny_base_cache_dir):
            config = load_config(None, FAST_RUN + ["train.steps=1", "train.save_every=1"])
            Trainer(config, run_dir=run, echo=lambda *_: None).fit()
        yield run
    finally:
        shutil.rmtree(parent)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_directory_cannot_be_read_from_the_sandbox(run_dir, backend, request):
    if backend == "process" and os.geteuid() != 0:  # the job then runs as the caller, who owns the run
        request.applymarker(pytest.mark.xfail(strict=True, reason="the process backend without root runs as the caller"))
    with open(os.path.join(run_dir, "rollouts.jsonl")) as fh:
        assert '"reference"' in fh.read()  # what there is to steal
    result = distil_sandbox.run(READ_THE_RUN.format(run=run_dir, files=FILES), backend=backend, timeout_s=20)
    assert result.exit_code == 0, result
    assert "READ" not in result.stdout and "LISTED" not in result.stdout, result.stdout
    assert result.stdout.count("no ") == len(FILES) + 1, result.stdout
