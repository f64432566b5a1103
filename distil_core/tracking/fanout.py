"""The run's trackers, called by the trainer once per event and only on rank 0.

Failure policy: a tracker is a copy of what the JSONL files hold, so it never costs a run. One
that cannot be built (an unknown name, its library missing, a misspelt option) stops the run
before the model loads, as any config error does. One that raises while the run goes on is
closed, reported in one line, and dropped; the run and its JSONL logs continue (they are
written before any tracker is called).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from distil_core.errors import ConfigError
from distil_core.plugin_host import check_options, factory_parameters, get_host
from distil_core.redaction import redacted
from distil_core.tracking.values import readable, rollout_table, scalars

KIND = "logger"
"""The plugin host's kind for trackers (registered through ``register_loggers``)."""


class Trackers:
    """The loggers named in ``train.report_to``, each behind a guard that drops it on failure."""

    def __init__(self, loggers: Sequence[tuple[str, Any]], *, table_every: int = 0,
                 warn: Callable[[str], None] = print):
        self.loggers = list(loggers)
        self.table_every = table_every
        self.warn = warn

    @classmethod
    def open(cls, host: Any, train: Any, run_dir: str, *, enabled: bool = True,
             warn: Callable[[str], None] = print) -> "Trackers":
        """Build every tracker of ``train.report_to`` (``train`` is the config's ``train``
        section) from ``host`` (default: the process-wide one), and keep them on rank 0 alone
        (``enabled``): elsewhere calls cost nothing. Building starts nothing — a tracker opens
        its run on its first call — so this checks names, options and libraries, on every rank,
        before the model loads."""
        names = list(dict.fromkeys(train.report_to))
        options: Mapping[str, Any] = train.tracker_options or {}
        stray = sorted(set(options) - set(names))
        if stray:
            raise ConfigError(f"train.tracker_options has options for {', '.join(map(repr, stray))}, which "
                              f"train.report_to does not name (it names {names or 'none'}); add it there or "
                              "remove its options.")
        loggers: list[tuple[str, Any]] = []
        try:  # on every rank, so that a bad name, option or library stops them all alike
            for name in names:
                loggers.append((name, build_logger(host or get_host(), name, dict(options.get(name) or {}), run_dir)))
        except BaseException:
            cls(loggers, warn=warn).close(failed=True)
            raise
        if not enabled:
            return cls([], warn=warn)
        return cls(loggers, table_every=train.log_rollout_table_every, warn=warn)

    def __bool__(self) -> bool:
        return bool(self.loggers)

    # -- one call per event -----------------------------------------------------------------

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The run's config as nested sections, secret-looking option values replaced (and lone
        surrogates, which no tracker can encode)."""
        if self.loggers:
            self.each("log_config", readable(redacted(dict(config))))

    def log_metrics(self, step: int, row: Mapping[str, Any]) -> None:
        """A metrics.jsonl row: its numeric values, at ``step``."""
        if self.loggers:
            self.each("log_metrics", step, scalars(row))

    def log_eval(self, step: int, label: str, result: Mapping[str, Any]) -> None:
        """An eval.jsonl row: its numeric values as ``eval/<key>`` at ``step`` (0: before training)."""
        if self.loggers:
            self.each("log_metrics", step, scalars(result, prefix="eval/"))

    def log_rollouts(self, step: int, batch: Any) -> None:
        """Every ``train.log_rollout_table_every`` steps: a table of a few of the step's rollouts."""
        if self.loggers and self.table_every and step % self.table_every == 0:
            rows = rollout_table(step, batch)
            if rows:
                self.each("log_table", step, rows)

    def resume(self, step: int) -> None:
        """The run resumes from its checkpoint at ``step``: each tracker with the optional
        ``resume`` is told, before anything is logged, so that it can drop what it holds past that
        step, or log on into the run it started."""
        for name, logger in list(self.loggers):
            if callable(getattr(logger, "resume", None)):
                try:
                    logger.resume(step)
                except Exception as exc:
                    self.drop(name, logger, "resume", exc)

    def close(self, failed: bool = False) -> None:
        """Finish every tracker (``failed``: the run stopped with an error); each is closed once."""
        loggers, self.loggers = self.loggers, []
        for name, logger in loggers:
            try:
                logger.close(failed=failed)
            except Exception as exc:  # the other trackers still get closed
                self.warn(f"warning: tracker {name!r} could not be closed: {type(exc).__name__}: {exc}")

    @contextlib.contextmanager
    def session(self, config: Mapping[str, Any]) -> Iterator["Trackers"]:
        """The config logged on entry; every tracker closed on exit, marked failed on an error."""
        try:
            self.log_config(config)
            yield self
        except BaseException:
            self.close(failed=True)
            raise
        self.close()

    # -- the guard ----------------------------------------------------------------------------

    def each(self, method: str, *args: Any) -> None:
        for name, logger in list(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as exc:
                self.drop(name, logger, method, exc)

    def drop(self, name: str, logger: Any, method: str, exc: Exception) -> None:
        self.loggers = [(n, lg) for n, lg in self.loggers if lg is not logger]
        self.warn(f"warning: tracker {name!r} failed in {method} ({type(exc).__name__}: {exc}); it is closed "
                  "and the run goes on without it (the run directory's JSONL files hold everything).")
        with contextlib.suppress(Exception):
            logger.close(failed=True)


def build_logger(host: Any, name: str, options: dict[str, Any], run_dir: str) -> Any:
    """The logger ``name`` built with ``options`` and ``run_dir=`` (where it writes by default)."""
    reg = host.get(KIND, name)
    if "run_dir" in options:
        raise ConfigError(f"train.tracker_options.{name}.run_dir: the run directory is given by the run "
                          "(--output-dir / train.output_dir); remove it here.")
    check_options(reg, options, host.options_command)
    params: Optional[dict[str, Any]] = factory_parameters(reg.factory)
    if params is not None and "run_dir" not in params:
        raise ConfigError(f"logger {name!r} (from plugin {reg.plugin!r}) cannot be built: its factory takes no "
                          "run_dir argument.")
    return reg.factory(run_dir=run_dir, **options)


__all__ = ["KIND", "Trackers", "build_logger"]
