"""distil-api-expert's tests, isolated (no real provider is reachable); api_expert_testlib holds the served tiny model."""
from distil_core.testing import isolate
isolate(__file__, unset=["OPENAI_API_KEY", "OPENAI_BASE_URL"])
from api_expert_testlib import served, server  # noqa: E402,F401  (the served-model fixtures)
