"""Shared by the docker backend and pool tests: find the engine, or skip (fail where required);
start a second engine of the tests' own (:class:`SpareDockerd`) to kill and bring back.

``DISTIL_SANDBOX_REQUIRE`` lists backends that must work (CI sets ``bwrap,docker,process``); a
required backend that is unavailable fails its tests with the reason instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Optional

import pytest

from distil_sandbox.backends import available_backends, get_backend
from distil_sandbox.image import LABEL, build_image


def required(backend: str) -> bool:
    return backend in os.environ.get("DISTIL_SANDBOX_REQUIRE", "")


def backend_or_skip(name: str):
    """The registry's ``name`` backend; skips (or fails, when required) with its reason."""
    why = available_backends()[name]
    if why:
        message = f"the {name} backend is unavailable: {why}"
        if required(name):
            pytest.fail(message + f" (DISTIL_SANDBOX_REQUIRE={os.environ['DISTIL_SANDBOX_REQUIRE']})")
        pytest.skip(message)
    return get_backend(name)


def labelled_containers(backend) -> dict[str, str]:
    """{id: status} of every container, running or not, that this test process started."""
    labels = [f"{LABEL}=1", f"{LABEL}.pid={os.getpid()}"]
    found = backend.client().containers.list(all=True, filters={"label": labels})
    return {container.id: container.status for container in found}


class SpareDockerd:
    """A Docker engine of the tests' own: ``dockerd`` on its own socket, data-root and exec-root in a
    temporary directory (no bridge, no iptables), with the sandbox image imported into it as
    ``distil-sandbox image build`` does. It can be SIGKILLed mid-run and started again on the same
    directories, which is how an engine dies and comes back."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="distil-dockerd-", dir="/tmp")  # a unix socket path is short
        self.socket = os.path.join(self.root, "docker.sock")
        self.address = f"unix://{self.socket}"
        self.spec = f"docker:{self.address}"
        self.process: Optional[subprocess.Popen] = None
        self.killed = False

    @staticmethod
    def cannot_run() -> str:
        """Why no dockerd of our own can run here ("" when one can)."""
        if os.geteuid() != 0:
            return "starting a second dockerd needs root"
        if shutil.which("dockerd") is None:
            return "dockerd is not installed (apt-get install docker.io, or run .ci/setup as root)"
        return ""

    def start(self, timeout_s: float = 60.0) -> "SpareDockerd":
        """Start dockerd (again, on the same directories) and wait until it answers with the image in it."""
        import docker

        log = open(os.path.join(self.root, "dockerd.log"), "ab")
        self.process = subprocess.Popen(
            ["dockerd", "--host", self.address, "--data-root", os.path.join(self.root, "data"),
             "--exec-root", os.path.join(self.root, "exec"), "--pidfile", os.path.join(self.root, "docker.pid"),
             "--bridge=none", "--iptables=false", "--ip6tables=false"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client = docker.DockerClient(base_url=self.address, timeout=5)
                client.ping()
                break
            except docker.errors.DockerException:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dockerd at {self.address} did not come up:\n{self.log_tail()}")
                time.sleep(0.2)
        build_image(client)
        client.close()
        self.killed = False
        return self

    def kill(self) -> None:
        """SIGKILL the engine (its containers' processes live on until it is started again)."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.killed = True
        self._bury_containerd()

    def _bury_containerd(self, grace_s: float = 5.0) -> None:
        """Wait for the engine's own containerd to die with it (SIGKILL it after ``grace_s``), and
        remove its pid file: dockerd restarted while that pid still exists, even as a zombie, waits
        on the dead containerd instead of starting a new one."""
        pid_file = os.path.join(self.root, "exec", "containerd", "containerd.pid")
        try:
            pid = int(open(pid_file).read().strip())
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + grace_s
        while _running(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.05)
        os.unlink(pid_file)

    def stop(self) -> None:
        """Stop the engine cleanly and remove its directories. A killed one is started again first:
        on start-up dockerd kills the containers it left running."""
        if self.killed:
            self.start()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        data = os.path.join(self.root, "data")
        while any(line.split()[1] == data for line in open("/proc/self/mounts")):
            subprocess.run(["umount", data], check=True)  # dockerd mounts its data-root on itself
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        with open(os.path.join(self.root, "dockerd.log"), errors="replace") as log:
            return "".join(log.readlines()[-lines:])


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def spare_dockerd_or_skip() -> SpareDockerd:
    """A started :class:`SpareDockerd`; skips with the reason where none can run (fails instead
    when DISTIL_SANDBOX_REQUIRE names docker and we are root)."""
    why = SpareDockerd.cannot_run()
    if not why:
        pytest.importorskip("docker", reason="the docker SDK is not installed (pip install docker)")
        engine = SpareDockerd()
        try:
            return engine.start()
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            engine.stop()
    if required("docker") and os.geteuid() == 0:
        pytest.fail(f"a second dockerd could not be started: {why}")
    pytest.skip(f"no second Docker engine here: {why}")


def wait_until(condition, what: str, timeout_s: float = 60.0) -> None:
    """Poll ``condition()`` until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.05)
