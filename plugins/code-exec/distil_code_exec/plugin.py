"""The ``code_exec`` plugin: verifier and feedback source of the same name."""

from distil_core import hookimpl

from .feedback import CodeExecFeedback
from .verifier import CodeExecVerifier


@hookimpl
def register_verifiers(register):
    register("code_exec", CodeExecVerifier)


@hookimpl
def register_feedback_sources(register):
    register("code_exec", CodeExecFeedback)
