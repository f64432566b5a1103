"""distil-self-eval's tests, isolated by distil_core.testing; self_eval_testlib sits beside this file."""
from distil_core.testing import isolate
isolate(__file__)
