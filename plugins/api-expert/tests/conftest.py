"""distil-api-expert's tests, isolated (no real provider is reachable); api_expert_testlib holds the served tiny model."""
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from distil_core.testing import isolate; isolate(unset=["OPENAI_API_KEY", "OPENAI_BASE_URL"])  # noqa: E401,E402,E702
from api_expert_testlib import served, server  # noqa: E402,F401  (the served-model fixtures)
