"""Plugin hooks. Each hands the plugin a ``register`` callback.

A plugin module implements any of these with ``@hookimpl`` and calls
``register(name, factory, description=...)`` once per component. ``factory`` is a class or
function; the trainer calls it with the options from the config file (and ``runtime=`` when
its signature asks for it, to reach the policy model, tokenizer and generator). The host
records which plugin registered each name and rejects a name registered twice.
"""

import pluggy

hookspec = pluggy.HookspecMarker("distil")
hookimpl = pluggy.HookimplMarker("distil")


@hookspec
def register_verifiers(register):
    """Register Verifier factories: register("my-verifier", MyVerifier)."""


@hookspec
def register_feedback_sources(register):
    """Register FeedbackSource factories: register("my-feedback", MyFeedbackSource)."""


@hookspec
def register_experts(register):
    """Register Expert factories: register("my-expert", MyExpert)."""


@hookspec
def register_tasks(register):
    """Register Task factories (problem sources with train/test splits)."""


@hookspec
def register_commands(register):
    """Register `distil` subcommands: register("review", ReviewCommand).

    The factory has ``configure(parser)`` (add arguments to its argparse sub-parser) and
    ``run(args) -> int`` (the exit code); its docstring's first line is the command's help.
    """
