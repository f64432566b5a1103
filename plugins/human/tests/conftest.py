"""distil-human's tests, isolated by distil_core.testing (without the developer's own store); human_testlib sits beside this file."""
from distil_core.testing import isolate
isolate(__file__, unset=["DISTIL_HUMAN_DB"])
