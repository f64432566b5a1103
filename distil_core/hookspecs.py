"""Plugin hooks. Each hands the plugin a :class:`~distil_core.protocols.Register` callback.

A plugin module implements any of these with ``@hookimpl`` and calls
``register(name, factory, description=...)`` once per component. ``factory`` is a class or
function; the host calls it with the options from the config file (and ``runtime=`` when its
signature asks for it: the run's :class:`~distil_core.protocols.Runtime` for verifiers,
feedback sources and experts, ``None`` for tasks, which are built before the policy). The host
records which plugin registered each name and rejects a name registered twice.
"""

import pluggy

from distil_core.protocols import Register

PROJECT = "distil"
"""The pluggy project name; ``@hookimpl`` marks a function for this project's host only."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_verifiers(register: Register) -> None:
    """Register Verifier factories: register("my-verifier", MyVerifier)."""


@hookspec
def register_feedback_sources(register: Register) -> None:
    """Register FeedbackSource factories: register("my-feedback", MyFeedbackSource)."""


@hookspec
def register_experts(register: Register) -> None:
    """Register Expert factories: register("my-expert", MyExpert)."""


@hookspec
def register_tasks(register: Register) -> None:
    """Register Task factories (problem sources with train/test splits)."""


@hookspec
def register_loggers(register: Register) -> None:
    """Register experiment trackers: register("my-tracker", MyLogger), a :class:`~distil_core.protocols.Logger`.

    A run builds those named in ``train.report_to``, calling the factory with ``run_dir=`` (the run
    directory, where a local tracker writes) and the options in ``train.tracker_options.<name>``.
    """


@hookspec
def register_commands(register: Register) -> None:
    """Register `distil` subcommands: register("review", ReviewCommand).

    The factory has ``configure(parser)`` (add arguments to its argparse sub-parser) and
    ``run(args) -> int`` (the exit code); its docstring's first line is the command's help.
    """


__all__ = ["PROJECT", "hookspec", "hookimpl", "register_verifiers", "register_feedback_sources",
           "register_experts", "register_tasks", "register_loggers", "register_commands"]
