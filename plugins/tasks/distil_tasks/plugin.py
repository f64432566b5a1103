"""The ``distil-tasks`` plugin: tasks ``math``, ``code`` and ``science`` with their verifiers and
feedback sources (``code`` is graded and explained by the ``code_exec`` plugin), and ``dataset``
for any file or ``datasets`` dataset of prompts with answers or code tests."""

from distil_core import hookimpl

from .code_suite import CodeTask
from .controls import AnswerWithheldFeedback
from .dataset import DatasetTask
from .math_suite import MathAnswerVerifier, MathStepsFeedback, MathTask
from .science_suite import MCLetterVerifier, ScienceTask, WorkedExplanationFeedback


@hookimpl
def register_tasks(register):
    register("math", MathTask, description="Multi-step arithmetic, or a GSM8K/MATH-style JSONL file.")
    register("code", CodeTask, description="One-line Python functions with tests, or a HumanEval/MBPP/LiveCodeBench JSONL file.")
    register("science", ScienceTask, description="Multiple-choice science questions, or a SciKnowEval-style JSONL file.")
    register("dataset", DatasetTask, description="Your own JSONL/Parquet/CSV file or datasets dataset: prompt and answer (or tests) keys as options.")


@hookimpl
def register_verifiers(register):
    register("math_answer", MathAnswerVerifier, description="Final answer (\\boxed{}, <answer>, ####, last number) checked with math-verify.")
    register("mc_letter", MCLetterVerifier, description="The letter inside <answer></answer> tags.")


@hookimpl
def register_feedback_sources(register):
    register("math_steps", MathStepsFeedback, description="The first wrong step, the worked steps and the answer.")
    register("worked_explanation", WorkedExplanationFeedback, description="Why the chosen option is wrong, with the worked explanation.")
    register("answer_withheld", AnswerWithheldFeedback, description="Negative control: 'your answer is wrong', without the expected one.")
