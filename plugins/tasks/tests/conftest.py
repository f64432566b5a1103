"""Puts this folder on sys.path (for tasks_testlib) and keeps installed plugins out, as the core
suite does; tests that need a plugin register it on their own host."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ["DISTIL_NO_ENTRYPOINTS"] = "1"
os.environ.pop("DISTIL_PLUGINS", None)
