"""distil-code-exec: grade code against tests in the sandbox, and turn failures into feedback.

    verifier ``code_exec``         score = fraction of the problem's tests passed
    feedback source ``code_exec``  kind ``execution_trace``: first error or failing tests

A problem's ``reference`` holds its tests (see :mod:`distil_code_exec.spec`); how grading
resists code that tries to fake a pass is explained in :mod:`distil_code_exec.verifier`.
"""

from .feedback import CodeExecFeedback
from .spec import CodeTests, extract_code
from .verifier import CodeExecVerifier

__version__ = "0.1.0"
__all__ = ["CodeExecVerifier", "CodeExecFeedback", "CodeTests", "extract_code"]
