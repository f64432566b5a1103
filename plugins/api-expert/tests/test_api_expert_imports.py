"""Importing the plugin stays cheap: litellm (seconds, and a network fetch of its price list
unless told otherwise), openai and httpx load only when a client is chosen."""

import subprocess
import sys

from distil_core.testing import distil_env

HEAVY = ("litellm", "openai", "httpx")
CHECK = f"""
import pkgutil, sys
import distil_api_expert
for info in pkgutil.iter_modules(distil_api_expert.__path__):
    __import__("distil_api_expert." + info.name)
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_no_module_of_the_plugin_imports_a_client_library():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120,
                          env=distil_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"imported at module import time: {done.stdout.strip()}"
