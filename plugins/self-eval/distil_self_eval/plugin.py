"""The ``self_eval`` plugin: one feedback source of that name."""

from distil_core import hookimpl

from .source import SelfEvalFeedback


@hookimpl
def register_feedback_sources(register):
    register("self_eval", SelfEvalFeedback)
