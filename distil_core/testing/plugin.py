"""The pytest plugin of distil-toolkit (entry point ``pytest11``: ``distil_core``).

Fixtures, for any project with distil-toolkit installed:

- ``plugin_host``: a new host with only the built-in plugins, made the process-wide host for
  the test (so ``distil_core.get_host()`` and the trainer see it) and dropped afterwards;
- ``tiny_base_cache``: ``DISTIL_CACHE`` set, for the test, to one directory for the whole session
  (``tiny_base_cache_dir``), so that every test that trains from the tiny base shares the bases
  built so far (they are keyed by recipe, task and template) instead of pretraining its own.

In an isolated session (``distil_isolate = true`` in the ini file, or
:func:`distil_core.testing.isolate` called by a conftest) every test also gets a fresh
process-wide host and the shared cache without asking. Otherwise the plugin only adds the
fixtures: it sets no variable and imports nothing beyond ``distil_core``'s light root.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from distil_core import testing


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("distil_isolate", type="bool", default=False,
                  help="run offline with only distil's built-in plugins (see distil_core.testing)")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Isolate before the first conftest (and the test modules after it) is imported."""
    if early_config.getini("distil_isolate"):
        testing.isolate()


@pytest.fixture(scope="session")
def tiny_base_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session's tiny-base cache directory (created once, empty at first)."""
    return str(tmp_path_factory.mktemp("distil-cache"))


@pytest.fixture
def tiny_base_cache(tiny_base_cache_dir: str) -> Iterator[str]:
    """``DISTIL_CACHE`` is the session's cache during the test: tiny bases built by one test are
    reused by the next (a ``distil`` subprocess started in the test inherits it)."""
    with testing.use_cache(tiny_base_cache_dir) as path:
        yield path


@pytest.fixture
def plugin_host() -> Iterator[Any]:
    """A fresh host with the built-ins only, process-wide for the duration of the test."""
    from distil_core.plugin_host import PluginHost, reset_host, set_host

    host = PluginHost(load_entrypoints=False)
    set_host(host)
    try:
        yield host
    finally:
        reset_host()


@pytest.fixture(autouse=True)
def distil_isolated_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """In an isolated session: the shared cache, and a process-wide host built for this test
    (under the environment the test sets) and dropped after it."""
    if not testing.is_isolated():
        yield
        return
    from distil_core.plugin_host import reset_host

    request.getfixturevalue("tiny_base_cache")
    reset_host()
    yield
    reset_host()
