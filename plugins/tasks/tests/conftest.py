"""distil-tasks's tests, isolated by distil_core.testing; tasks_testlib sits beside this file."""
from distil_core.testing import isolate
isolate(__file__)
