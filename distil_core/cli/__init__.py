"""The ``distil`` command line: ``train``, ``eval``, ``plugins``, ``serve`` and ``bench``.

``main`` parses arguments and dispatches, ``tables`` renders terminal tables, ``bench`` runs the
benchmark matrix and writes its report. The top layer: it may import everything else in
``distil_core``.
"""

from distil_core.cli.main import main

__all__ = ["main"]
