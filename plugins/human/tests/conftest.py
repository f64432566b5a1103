"""Puts this folder on sys.path (for human_testlib) and runs the tests offline with only the
built-in plugins, as the core suite does; tests that need the entry point ask for it."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["DISTIL_NO_ENTRYPOINTS"] = "1"
os.environ.pop("DISTIL_PLUGINS", None)
os.environ.pop("DISTIL_HUMAN_DB", None)
