"""The ``human`` plugin: feedback source ``human``, commands ``review`` and ``corrections``."""

from distil_core import hookimpl

from .commands import CorrectionsCommand, ReviewCommand
from .feedback import HumanFeedback


@hookimpl
def register_feedback_sources(register):
    register("human", HumanFeedback)


@hookimpl
def register_commands(register):
    register("review", ReviewCommand)
    register("corrections", CorrectionsCommand)
