"""distil-self-eval: a model critiques each response; the critique becomes feedback.

    feedback source ``self_eval``   kind ``self_evaluation``

The critic is the student by default, or another local model, or a registered expert that
writes text (:mod:`distil_self_eval.critics`); the prompt is a template checked when the
source is built (:mod:`distil_self_eval.template`).
"""

from .critics import Critique, LocalCritic, TextExpertCritic, build_critic
from .source import KIND, SOURCE, SelfEvalFeedback
from .template import DEFAULT_TEMPLATE, VARIABLES, CritiqueTemplate, check_template

__version__ = "0.1.0"
__all__ = [
    "SelfEvalFeedback",
    "CritiqueTemplate",
    "check_template",
    "DEFAULT_TEMPLATE",
    "VARIABLES",
    "Critique",
    "LocalCritic",
    "TextExpertCritic",
    "build_critic",
    "SOURCE",
    "KIND",
]
