"""Shared by the review-desk tests: a short real run, the desk as a real `distil review --web`
process on 127.0.0.1, and Debian's Chromium driven through Selenium (nothing downloaded)."""

from __future__ import annotations

import importlib.util
import os
import re
import select
import shutil
import subprocess
import time
from typing import Optional

import pytest
from human_testlib import distil_argv, plugin_env

from distil_core.testing import FAST_RUN

TINY_RUN = FAST_RUN + [
    "model.tiny={hidden_size: 32, layers: 1, heads: 2, steps: 10, batch_size: 16, lr: 0.005, plain_fraction: 0.3}",
    "train.save_every=0", "eval.problems=4", "eval.samples=1", "eval.ks=[1]",
]
"""A few seconds of `distil train` on a CPU; the same seed samples the same problems at each step."""

SCREENSHOTS_ENV = "DISTIL_DOCS_SCREENSHOTS"


def train(run_dir, steps: int, feedback: str = "[answer_check]") -> None:
    args = [a for item in TINY_RUN + [f"train.steps={steps}", f"feedback={feedback}"] for a in ("--set", item)]
    done = subprocess.run(distil_argv("train", *args, "--output-dir", str(run_dir), "--quiet"),
                          env=plugin_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def missing(reason: str) -> None:
    """Skip; under CI=true (where .ci/setup installs the browser) fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: .ci/setup installs it)")
    pytest.skip(reason)


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver) from the system, or a skip naming what is missing."""
    for module in ("selenium", "starlette", "uvicorn", "jinja2", "python_multipart"):
        if importlib.util.find_spec(module) is None:
            missing(f"the review-desk browser tests need {module}: pip install -e 'plugins/human[web,test]'")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        missing("the review-desk browser tests need Chromium and its driver (apt-get install chromium chromium-driver)")
    return chromium, driver


def chrome(width: int = 1280, height: int = 900):
    """A headless Chromium, pointed at the system's browser and driver so that Selenium Manager
    never looks for (or downloads) one."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = browser_paths()
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.implicitly_wait(0)
    return browser


def screenshot_path(name: str, tmp_path) -> str:
    """Where a screenshot goes: ``$DISTIL_DOCS_SCREENSHOTS`` when set (to refresh the docs'
    pictures), else the test's temporary folder, so a test run never changes the repository."""
    folder = os.environ.get(SCREENSHOTS_ENV) or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


class DeskProcess:
    """`distil review RUN --web --port 0 ...` in its own process; ``url`` is what it printed."""

    def __init__(self, run_dir, *args: str, env: Optional[dict] = None, timeout: float = 120.0):
        argv = distil_argv("review", str(run_dir), "--web", "--port", "0", *args)
        self.proc = subprocess.Popen(argv, env=env or plugin_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output, deadline = "", time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not re.search(r"Open (http://\S+)\s", self.output):
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                self.stop()
                raise AssertionError(f"the desk did not start; it printed:\n{self.output}")
            self.output += chunk.decode("utf-8", "replace")
        self.url = re.search(r"Open (http://\S+)", self.output).group(1)
        self.base = re.match(r"http://[^/]+", self.url).group(0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


class DeskThread:
    """The desk's app over ``desk`` served by uvicorn in a thread of the test process, on
    127.0.0.1 (a free port): for tests that reach into the desk's store while it serves."""

    def __init__(self, desk, token: Optional[str] = None, timeout: float = 60.0):
        import threading

        import uvicorn

        from distil_human.web.app import build_app
        from distil_human.web.serve import bind

        self.sock = bind("127.0.0.1", 0)
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(build_app(desk, token), log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("the desk's server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
