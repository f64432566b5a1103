"""Task suites for DistIL: math, code and science, each procedural or loaded from a file, and
the generic ``dataset`` task."""

from .code_suite import CodeTask
from .common import RecordError
from .dataset import DatasetTask
from .math_suite import MathAnswerVerifier, MathStepsFeedback, MathTask
from .science_suite import MCLetterVerifier, ScienceTask, WorkedExplanationFeedback

__version__ = "0.1.0"
DATA_DIR = __import__("os").path.join(__import__("os").path.dirname(__file__), "data")

__all__ = [
    "CodeTask", "MathTask", "ScienceTask", "DatasetTask", "MathAnswerVerifier", "MCLetterVerifier",
    "MathStepsFeedback", "WorkedExplanationFeedback", "RecordError", "DATA_DIR",
]
