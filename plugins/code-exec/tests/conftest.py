"""distil-code-exec's tests, isolated by distil_core.testing; code_exec_testlib sits beside this file."""
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # noqa: E401,E702
from distil_core.testing import isolate; isolate()  # noqa: E402,E702
