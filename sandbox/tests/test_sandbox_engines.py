"""EnginePool: one queue over several engines, for real: the local Docker engine, a second dockerd
of the tests' own (killed and started again mid-run), bwrap and process workers."""

from __future__ import annotations

import collections
import os
import threading

import pytest

from distil_sandbox import BackendUnavailable, EnginePool, Job
from distil_sandbox.docker_backend import DockerBackend
from distil_sandbox.engines import EngineSpec, parse_engines
from distil_sandbox.image import LABEL
from sandbox_docker_testlib import backend_or_skip, labelled_containers, spare_dockerd_or_skip, wait_until

LIMITS = {"timeout_s": 20, "memory_mb": 256}
RESULT_TIMEOUT_S = 120  # a lost job would hang: every wait for a result is bounded


@pytest.fixture(scope="module")
def spare():
    """A second Docker engine of our own; a test that kills it starts it again."""
    engine = spare_dockerd_or_skip()
    yield engine
    engine.stop()


@pytest.fixture
def alive_spare(spare):
    yield spare
    if spare.killed:
        spare.start()


@pytest.fixture
def local_docker():
    """The local engine (DOCKER_HOST's), as the engine spec "docker"; never killed by these tests."""
    backend_or_skip("docker")
    return "docker"


def job(i: int, delay: float = 0.0) -> Job:
    """A job whose output names it, so a result can only be its own."""
    return Job(code=f"import time\ntime.sleep({delay})\nprint('job {i}:', {i} * {i})", **LIMITS)


def expected(i: int) -> str:
    return f"job {i}: {i * i}\n"


def resolutions(futures) -> collections.Counter:
    """Counts, per job index, how many times its future is resolved (filled in as they are)."""
    counts: collections.Counter = collections.Counter()
    for i, future in enumerate(futures):
        future.add_done_callback(lambda _, i=i: counts.update([i]))
    return counts


# -------------------------------------------------------------------------------- specs


def test_engine_specs_name_kind_address_and_workers():
    specs = parse_engines(["docker:unix:///run/d1.sock*4", "docker:tcp://10.0.0.2:2375", "docker", "bwrap",
                           "process*3"], workers=2)
    assert specs == [EngineSpec("docker", "unix:///run/d1.sock", 4), EngineSpec("docker", "tcp://10.0.0.2:2375", 2),
                     EngineSpec("docker", "", 2), EngineSpec("bwrap", "", 2), EngineSpec("process", "", 3)]
    assert [s.name for s in specs] == ["docker:unix:///run/d1.sock", "docker:tcp://10.0.0.2:2375", "docker",
                                       "bwrap", "process"]


@pytest.mark.parametrize("engines, message", [
    (["dokcer:unix:///run/d1.sock"], r"engine 'dokcer:unix:///run/d1.sock': unknown engine kind 'dokcer'"),
    (["docker:/run/d1.sock"], r"'/run/d1.sock' is not a Docker engine address; give one with its scheme"),
    (["docker:tcp://"], r"'tcp://' is not a Docker engine address"),
    (["bwrap*0"], r"engine 'bwrap\*0': the worker count after '\*' must be a whole number of at least 1"),
    (["process*two"], r"engine 'process\*two': the worker count"),
    (["bwrap:/usr/bin/bwrap"], r"bwrap runs on this machine and takes no address; write \"bwrap\*2\""),
    ([""], r"engine '' is not an engine spec"),
    ([4], r"engine 4 is not an engine spec"),
    (["bwrap*2", "bwrap"], r"engine 'bwrap' is listed twice \('bwrap\*2' and 'bwrap'\); write it once .*\"bwrap\*4\""),
    ("bwrap", r"engines must be a list of engine specs, not 'bwrap'"),
    ([], r"no engines given"),
])
def test_bad_engine_specs_name_the_entry_and_say_what_to_write(engines, message):
    with pytest.raises(ValueError, match=message) as raised:
        EnginePool(engines)  # refused before anything starts
    assert "write" in str(raised.value) or "give one" in str(raised.value)


def test_a_pool_whose_engines_cannot_start_says_why():
    pytest.importorskip("docker", reason="the docker SDK is not installed (pip install docker)")
    with pytest.raises(BackendUnavailable, match=r"no sandbox engine could be started \(docker:unix:///tmp/"
                                                 r"distil-no-engine\.sock: cannot reach the Docker engine at "):
        EnginePool(["docker:unix:///tmp/distil-no-engine.sock"])


# -------------------------------------------------------------------------------- spreading


def test_jobs_spread_over_two_engines_and_bwrap_and_come_back_in_order(local_docker, alive_spare):
    backend_or_skip("bwrap")
    spare_backend = DockerBackend(base_url=alive_spare.address)
    engines = [f"{local_docker}*2", f"{alive_spare.spec}*2", "bwrap*2"]
    with EnginePool(engines, **LIMITS) as pool:
        assert len(labelled_containers(spare_backend)) == 2  # its warm containers are on the spare engine
        results = pool.map([job(i, delay=0.1) for i in range(36)])
        stats = pool.stats
    assert [r.stdout for r in results] == [expected(i) for i in range(36)]
    assert all(r.ok for r in results)
    assert {r.backend for r in results} == {"docker", "bwrap"}
    per_engine = {name: counters["jobs"] for name, counters in stats["engines"].items()}
    assert set(per_engine) == {"docker", alive_spare.spec, "bwrap"}
    assert all(count > 0 for count in per_engine.values()), per_engine
    assert stats["jobs"] == 36 and stats["requeued"] == 0 and stats["engine_failures"] == 0
    assert stats["engines_up"] == 3 and stats["engines_down"] == 0
    assert labelled_containers(spare_backend) == {}  # close() removed them


def test_a_jobs_own_failure_is_its_result_not_an_engine_failure(local_docker):
    client = backend_or_skip("docker").client()
    with EnginePool([f"{local_docker}*2"], timeout_s=20, memory_mb=128) as pool:
        slow = pool.submit("sleep 1.5\necho done", language="bash")
        wait_until(lambda: containers_running(client, "sleep 1.5"), "a container running the slow job")
        client.containers.get(containers_running(client, "sleep 1.5")[0]).kill()  # a container lost, not its engine
        spin = pool.submit("while True:\n    pass", timeout_s=1)
        exits = pool.submit("import sys\nsys.exit(3)")
        hog = pool.submit("x = bytearray(1 << 30)")
        assert slow.result(RESULT_TIMEOUT_S).stdout == "done\n"  # run once more, on a fresh container
        assert spin.result(RESULT_TIMEOUT_S).timed_out
        assert exits.result(RESULT_TIMEOUT_S).exit_code == 3
        assert hog.result(RESULT_TIMEOUT_S).signal == "SIGKILL"
        stats = pool.stats
    assert stats["engine_failures"] == 0 and stats["requeued"] == 0 and stats["engines_up"] == 1
    assert stats["jobs"] == 4
    assert stats["engines"]["docker"]["containers_started"] >= 3  # the killed one was replaced


def containers_running(client, command: str) -> list[str]:
    """This process's sandbox containers on ``client``'s engine with a process running ``command``."""
    found = client.containers.list(filters={"label": [f"{LABEL}=1", f"{LABEL}.pid={os.getpid()}"]})
    return [c.id for c in found if command in str(c.top()["Processes"])]


# -------------------------------------------------------------------------------- an engine dies


def test_an_engine_killed_mid_run_loses_no_job_and_runs_none_twice(local_docker, alive_spare):
    count = 24
    with EnginePool([f"{local_docker}*2", f"{alive_spare.spec}*2"], probe_interval_s=0.5, **LIMITS) as pool:
        futures = [pool.submit(job(i, delay=0.4)) for i in range(count)]
        resolved = resolutions(futures)
        wait_until(lambda: pool.stats["engines"][alive_spare.spec]["busy"] == 2, "two jobs running on the spare")
        alive_spare.kill()
        results = [future.result(RESULT_TIMEOUT_S) for future in futures]
        stats = pool.stats
    assert [r.stdout for r in results] == [expected(i) for i in range(count)]
    assert all(r.ok and r.error is None for r in results)
    assert resolved == {i: 1 for i in range(count)}  # each future resolved exactly once
    spare = stats["engines"][alive_spare.spec]
    assert stats["jobs"] == count  # engines returned exactly one result per job: none was run to the end twice
    assert stats["engine_failures"] == 1 and spare["failures"] == 1 and not spare["up"]
    assert stats["requeued"] >= 1 and spare["requeued"] == stats["requeued"]
    assert "Connection refused" in spare["reason"] or "No such file" in spare["reason"], spare["reason"]
    assert stats["engines"]["docker"]["requeued"] == 0 and stats["failed"] == 0


def test_an_engine_that_comes_back_is_used_again(local_docker, alive_spare):
    spare_backend = DockerBackend(base_url=alive_spare.address)
    before_pool = set(labelled_containers(spare_backend))  # what earlier tests' pools left on a killed engine
    with EnginePool([f"{local_docker}*1", f"{alive_spare.spec}*2"], probe_interval_s=0.3, **LIMITS) as pool:
        futures = [pool.submit(job(i, delay=0.5)) for i in range(6)]
        wait_until(lambda: pool.stats["engines"][alive_spare.spec]["busy"] == 2, "two jobs running on the spare")
        alive_spare.kill()
        assert [f.result(RESULT_TIMEOUT_S).stdout for f in futures] == [expected(i) for i in range(6)]
        assert not pool.stats["engines"][alive_spare.spec]["up"]
        before = pool.stats["engines"][alive_spare.spec]["jobs"]

        alive_spare.start()
        wait_until(lambda: pool.stats["engines_up"] == 2, "the probe to bring the spare engine back")
        # what the engine lost when it died is gone: only the pool's working containers are left
        left = {cid: status for cid, status in labelled_containers(spare_backend).items() if cid not in before_pool}
        assert set(left.values()) == {"running"}, left
        results = pool.map([job(i, delay=0.2) for i in range(6, 26)])
        stats = pool.stats
    assert [r.stdout for r in results] == [expected(i) for i in range(6, 26)]
    assert stats["engines"][alive_spare.spec]["jobs"] > before
    assert stats["engines"][alive_spare.spec]["up"] and stats["engine_failures"] == 1
    assert set(labelled_containers(spare_backend)) <= before_pool


def test_all_engines_down_fails_jobs_with_the_reasons_and_never_hangs(alive_spare):
    nowhere = "docker:unix:///tmp/distil-no-engine.sock"
    pool = EnginePool([f"{alive_spare.spec}*2", nowhere], probe_interval_s=0.3, **LIMITS)
    try:
        assert pool.stats["engines"][nowhere]["up"] is False  # down from the start, the other one carries on
        futures = [pool.submit(job(i, delay=3)) for i in range(6)]
        resolved = resolutions(futures)
        wait_until(lambda: pool.stats["engines"][alive_spare.spec]["busy"] == 2, "two jobs running on the spare")
        alive_spare.kill()
        results = [future.result(RESULT_TIMEOUT_S) for future in futures]
        late = pool.submit(job(99)).result(RESULT_TIMEOUT_S)  # answered at once while nothing is up
    finally:
        closer = threading.Thread(target=pool.close)
        closer.start()
        closer.join(RESULT_TIMEOUT_S)
    assert not closer.is_alive(), "close() hung"
    assert resolved == {i: 1 for i in range(6)}
    for result in results + [late]:
        assert not result.ok and result.backend == "engines"
        assert result.error.startswith("no sandbox engine is up (")
        assert alive_spare.spec in result.error and nowhere in result.error
    stats = pool.stats
    assert stats["engines_up"] == 0 and stats["failed"] == 7 and stats["jobs"] == 0 and stats["queued"] == 0


# -------------------------------------------------------------------------------- back-pressure


def test_submit_blocks_while_max_pending_jobs_wait():
    backend_or_skip("process")
    with EnginePool(["process*1"], max_pending=2, timeout_s=20) as pool:
        first = pool.submit("import time\ntime.sleep(1.5)\nprint(0)")
        wait_until(lambda: pool.stats["in_flight"] == 1, "the first job to start")
        waiting = [pool.submit(f"print({i})") for i in (1, 2)]
        assert pool.stats["queued"] == 2
        blocked: list = []
        submitter = threading.Thread(target=lambda: blocked.append(pool.submit("print(3)")))
        submitter.start()
        submitter.join(0.5)
        assert submitter.is_alive() and not blocked  # the queue is full: submit waits
        assert pool.stats["queued"] == 2
        submitter.join(RESULT_TIMEOUT_S)
        assert not submitter.is_alive()
        outputs = [f.result(RESULT_TIMEOUT_S).stdout for f in [first, *waiting, *blocked]]
        assert outputs == ["0\n", "1\n", "2\n", "3\n"]
        many = pool.map([f"print({i})" for i in range(30)])
        assert [r.stdout for r in many] == [f"{i}\n" for i in range(30)]
        assert pool.stats["max_queued"] == 2  # never more than max_pending waiting
