"""The ``distil`` command line: ``train``, ``eval``, ``plugins``, ``serve`` and ``bench``.

``main`` parses arguments and dispatches, ``tables`` renders terminal tables, ``serve`` loads and
serves a model (``load_for_serving``), ``bench`` runs the benchmark matrix, ``report`` and
``plots`` write its results. The top layer: it may import everything else in
``distil_core``.
"""

from distil_core.cli.main import main
from distil_core.cli.serve import load_for_serving

__all__ = ["main", "load_for_serving"]
