"""distil-tools's tests, isolated by distil_core.testing; tools_testlib sits beside this file."""
from distil_core.testing import isolate
isolate(__file__)
