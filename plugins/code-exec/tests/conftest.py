"""Puts this folder on sys.path (for code_exec_testlib) and keeps installed plugins out,
as the core suite does; tests that need the entry point ask for it explicitly."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ["DISTIL_NO_ENTRYPOINTS"] = "1"
os.environ.pop("DISTIL_PLUGINS", None)
