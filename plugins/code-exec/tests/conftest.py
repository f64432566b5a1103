"""distil-code-exec's tests, isolated by distil_core.testing; code_exec_testlib sits beside this file."""
from distil_core.testing import isolate
isolate(__file__)
