"""The docker backend, for real against the local engine: probe, image, limits, kill, caps, CLI."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

import distil_sandbox
from distil_sandbox import cli, docker_container
from distil_sandbox.docker_backend import DockerBackend
from distil_sandbox.docker_container import ContainerLimits
from distil_sandbox.image import LABEL, build_image, ensure_image, root_filesystem_tar
from sandbox_docker_testlib import backend_or_skip, labelled_containers, required

if required("docker"):
    import docker as docker_sdk  # required here, so a missing SDK fails the module
else:
    docker_sdk = pytest.importorskip("docker", reason="the docker SDK is not installed (pip install docker)")


@pytest.fixture
def docker_sandbox():
    """The docker backend, or a skip (a failure where DISTIL_SANDBOX_REQUIRE names it)."""
    return backend_or_skip("docker")


def run(code: str, **kw) -> distil_sandbox.ExecResult:
    return distil_sandbox.run(code, backend="docker", **kw)


# ------------------------------------------------------------------------------------ probe


def closed_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_probe_names_the_engine_address_when_nothing_listens(monkeypatch):
    port = closed_loopback_port()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
    started = time.monotonic()
    ok, why = DockerBackend().available()
    assert not ok
    assert why == (f"cannot reach the Docker engine at tcp://127.0.0.1:{port}: [Errno 111] Connection refused; "
                   "start dockerd or point DOCKER_HOST at a running engine")
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "error",
    [
        lambda: docker_sdk.errors.DockerException("Error while fetching server API version: boom"),
        lambda: docker_sdk.errors.APIError("500 Server Error: boom"),
        lambda: __import__("requests").exceptions.ConnectionError("Connection aborted: boom"),
        lambda: __import__("urllib3").exceptions.ProtocolError("boom"),
        lambda: FileNotFoundError(2, "No such file or directory: boom"),
        lambda: PermissionError(13, "Permission denied: boom"),
    ],
    ids=["DockerException", "APIError", "requests.ConnectionError", "urllib3.ProtocolError", "FileNotFoundError",
         "PermissionError"],
)
def test_probe_reports_sdk_and_plain_connection_errors(monkeypatch, error):
    def refuse(**kwargs):
        raise error()

    monkeypatch.setattr(docker_sdk, "from_env", refuse)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    ok, why = DockerBackend().available()
    assert not ok
    assert why.startswith("cannot reach the Docker engine at unix:///var/run/docker.sock: ")
    assert "boom" in why and "start dockerd" in why


def test_probe_without_the_sdk_says_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "docker", None)
    ok, why = DockerBackend().available()
    assert not ok
    assert "pip install docker" in why


def test_probe_runs_a_trial_job_and_reports_its_failure(docker_sandbox, monkeypatch):
    monkeypatch.setattr(docker_container, "_BOOTSTRAP", "raise SystemExit('no python here')")
    ok, why = DockerBackend().available()
    assert not ok
    assert why.startswith("a trivial job failed in a sandbox container: docker: the sandbox container stopped")
    assert "no python here" in why


# ------------------------------------------------------------------------------------ image


def test_root_filesystem_is_tiny_and_deterministic():
    first, second = root_filesystem_tar(), root_filesystem_tar()
    assert first == second
    assert len(first) < 20_000


def test_image_is_built_locally_without_pulling(docker_sandbox, monkeypatch):
    client = docker_sandbox.client()
    tag = f"distil-sandbox:test-build-{int(time.time() * 1000)}"

    def no_pull(*args, **kwargs):
        raise AssertionError("the sandbox image must never be pulled")

    monkeypatch.setattr(client.api, "pull", no_pull)
    try:
        built = ensure_image(client, tag)  # missing, so it is built
        assert ensure_image(client, tag) == built  # present, so it is reused
        image = client.images.get(tag)
        assert image.labels.get(LABEL) == "1"
        assert image.attrs["Size"] < 20_000
        rebuilt = build_image(client, tag)  # an explicit build replaces it and leaves no dangling image
        assert rebuilt.startswith("sha256:")
        if rebuilt != built:
            with pytest.raises(docker_sdk.errors.ImageNotFound):
                client.images.get(built)
    finally:
        client.images.remove(tag, force=True)


# ------------------------------------------------------------------------------------ limits


def test_container_settings_are_locked_down(docker_sandbox):
    limits = ContainerLimits(memory_mb=200, max_processes=30, work_mb=20, tmp_mb=20, cpus=1.0)
    box = docker_sandbox.start_container(limits)
    try:
        box.container.reload()
        host, config = box.container.attrs["HostConfig"], box.container.attrs["Config"]
    finally:
        box.close()
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Privileged"] is False
    assert host["Memory"] == host["MemorySwap"] == 200 << 20
    assert host["PidsLimit"] == 31
    assert host["NanoCpus"] == 1_000_000_000
    assert host["Binds"] == ["/usr:/usr:ro"]
    assert set(host["Tmpfs"]) == {"/work", "/tmp"} and "size=20m" in host["Tmpfs"]["/work"]
    assert {u["Name"]: u["Hard"] for u in host["Ulimits"]}["core"] == 0
    assert host["LogConfig"]["Type"] == "none"
    assert config["User"] == "65534:65534"
    assert config["Labels"][LABEL] == "1" and config["Labels"][f"{LABEL}.pid"] == str(os.getpid())
    assert sorted(v.split("=")[0] for v in config["Env"]) == ["HOME", "LANG", "PATH"]


INSIDE = r"""
import json, os, resource
report = {"uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(), "cwd": os.getcwd(),
          "interfaces": sorted(os.listdir("/sys/class/net")), "env": sorted(os.environ),
          "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[1],
          "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1], "core": resource.getrlimit(resource.RLIMIT_CORE)[1],
          "caps": [line.split()[1] for line in open("/proc/self/status") if line.startswith("CapEff")][0],
          "no_new_privs": [line.split()[1] for line in open("/proc/self/status") if line.startswith("NoNewPrivs")][0]}
for path in ("/usr/evil", "/evil", "/etc/evil"):
    try:
        open(path, "w")
        report[path] = "written"
    except OSError as exc:
        report[path] = exc.strerror
import socket
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    report["network"] = "connected"
except OSError as exc:
    report["network"] = exc.strerror
print(json.dumps(report))
"""


def test_program_runs_unprivileged_without_network_on_a_read_only_root(docker_sandbox):
    result = run(INSIDE, timeout_s=10)
    assert result.ok, result
    inside = json.loads(result.stdout)
    assert (inside["uid"], inside["gid"], inside["euid"]) == (65534, 65534, 65534)
    assert inside["cwd"] == "/work"
    assert inside["interfaces"] == ["lo"]
    assert inside["network"] != "connected"
    assert inside["env"] == ["HOME", "LANG", "PATH"]
    assert inside["caps"] == "0000000000000000" and inside["no_new_privs"] == "1"
    assert inside["fsize"] == 16 << 20 and inside["nofile"] == 64 and inside["core"] == 0
    assert all(inside[p] in ("Read-only file system", "Permission denied") for p in ("/usr/evil", "/evil", "/etc/evil"))


def test_memory_bomb_is_killed(docker_sandbox):
    result = run("x = bytearray(1 << 30)\nprint('allocated', len(x))", memory_mb=128, timeout_s=20)
    assert not result.ok and "allocated" not in result.stdout
    assert result.signal == "SIGKILL" and not result.timed_out


def test_fork_bomb_hits_the_pids_limit_and_is_cleaned_up(docker_sandbox):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run(bomb, timeout_s=2)
    assert result.timed_out and result.signal == "SIGKILL"
    assert result.wall_s < 4


# ----------------------------------------------------------------------------- run one job


def test_stdin_files_exit_status_and_separate_streams(docker_sandbox):
    code = "import sys\ndata = open('data/in.txt').read()\nprint(input()[::-1], data)\nprint('warn', file=sys.stderr)\nsys.exit(3)"
    result = run(code, stdin="abc\n", files={"data/in.txt": "file"}, timeout_s=10)
    assert (result.exit_code, result.signal, result.timed_out, result.error) == (3, None, False, None)
    assert result.stdout == "cba file\n" and result.stderr == "warn\n"
    assert result.backend == "docker" and result.cpu_s > 0 and 0 < result.wall_s < 5


def test_a_signal_is_named(docker_sandbox):
    result = run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", timeout_s=10)
    assert (result.exit_code, result.signal) == (None, "SIGSEGV")


def test_bash_programs_run_too(docker_sandbox):
    result = run("echo $((6 * 7)) $(id -u)", language="bash", timeout_s=10)
    assert result.stdout == "42 65534\n"


def test_timeout_kills_the_job_and_removes_its_container(docker_sandbox):
    before = labelled_containers(docker_sandbox)
    result = run("import subprocess\nsubprocess.Popen(['sleep', '600'])\nwhile True:\n    pass\n", timeout_s=1)
    assert result.timed_out and result.signal == "SIGKILL" and result.exit_code is None
    assert 1 <= result.wall_s < 3
    assert set(labelled_containers(docker_sandbox)) - set(before) == set()


def test_host_deadline_kills_a_container_that_does_not_answer(docker_sandbox, monkeypatch):
    before = labelled_containers(docker_sandbox)
    monkeypatch.setattr(docker_container, "STARTUP_GRACE_S", -1.5)  # the host gives up before the supervisor
    started = time.monotonic()
    result = run("import time\ntime.sleep(30)", timeout_s=2)
    assert result.timed_out and result.signal == "SIGKILL"
    assert "did not answer" in result.error
    assert time.monotonic() - started < 10
    assert set(labelled_containers(docker_sandbox)) - set(before) == set()


# A process that keeps a pool of two warm containers, says so, and waits to be killed.
KEEPS_A_POOL = """
import sys
from distil_sandbox import Pool
pool = Pool(backend="docker", workers=2)
print(pool.map(["print(1)"])[0].stdout, flush=True)
sys.stdin.read()
"""


def test_containers_of_a_killed_process_are_removed_by_the_next_backend(docker_sandbox):
    """Killed outright, a process removes none of its containers; a docker backend's first use
    removes those of processes of this machine that are gone, and no one else's."""
    import signal
    import subprocess
    import sys

    keeper = subprocess.Popen([sys.executable, "-c", KEEPS_A_POOL], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert keeper.stdout.readline() == "1\n"
        client = docker_sandbox.client()
        theirs = client.containers.list(all=True, filters={"label": f"{LABEL}.pid={keeper.pid}"})
        assert len(theirs) == 2
        DockerBackend().run(distil_sandbox.Job(code="print(2)"))  # while the keeper lives: kept
        assert len(client.containers.list(all=True, filters={"label": f"{LABEL}.pid={keeper.pid}"})) == 2
    finally:
        keeper.send_signal(signal.SIGKILL)
        keeper.wait()
    mine = labelled_containers(docker_sandbox)
    fresh = DockerBackend()
    assert fresh.run(distil_sandbox.Job(code="print(3)")).stdout == "3\n"
    assert client.containers.list(all=True, filters={"label": f"{LABEL}.pid={keeper.pid}"}) == []
    assert set(mine) <= set(labelled_containers(docker_sandbox))  # this live process's own are kept


def test_program_exit_ends_the_job_even_with_a_background_process_holding_stdout(docker_sandbox):
    started = time.monotonic()
    result = run("import subprocess\nsubprocess.Popen(['sleep', '600'])\nprint('bye')", timeout_s=20)
    assert result.ok and result.stdout == "bye\n"
    assert time.monotonic() - started < 10


def test_output_is_capped_and_flagged(docker_sandbox):
    code = "import sys\nsys.stdout.write('o' * 100000)\nsys.stderr.write('e' * 10)\nprint(len(sys.stdin.read()))"
    result = run(code, output_limit=1000, stdin="x" * 3_000_000, timeout_s=10)
    assert result.stdout == "o" * 1000 and result.stdout_truncated
    assert result.stderr == "e" * 10 and not result.stderr_truncated
    assert result.exit_code == 0


def test_endless_output_is_capped_until_the_timeout(docker_sandbox):
    result = run("while True:\n    print('x' * 1000)", output_limit=5000, timeout_s=1)
    assert result.timed_out and result.stdout_truncated and len(result.stdout_bytes) == 5000


def test_bad_file_names_are_refused_before_any_container_starts(docker_sandbox):
    with pytest.raises(ValueError, match="relative path"):
        run("print(1)", files={"/etc/passwd": "x"})


# ------------------------------------------------------------------------------------- CLI


def test_cli_lists_backends(capsys):
    cli.main(["backends"])
    out = capsys.readouterr().out
    assert out.startswith("bwrap") and "docker" in out and "process" in out


def test_cli_runs_a_file_and_prints_json(docker_sandbox, tmp_path, capsys):
    program = tmp_path / "hello.py"
    program.write_text("print(input() + '!')")
    (tmp_path / "in.txt").write_text("hi")
    code = cli.main(["run", str(program), "--backend", "docker", "--timeout", "5", "--stdin", str(tmp_path / "in.txt")])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["stdout"] == "hi!\n" and report["ok"] and report["backend"] == "docker"


def test_cli_builds_the_image(docker_sandbox, capsys):
    tag = f"distil-sandbox:test-cli-{int(time.time() * 1000)}"
    try:
        assert cli.main(["image", "build", "--tag", tag]) == 0
        assert f"built {tag}" in capsys.readouterr().out
    finally:
        docker_sandbox.client().images.remove(tag, force=True)
