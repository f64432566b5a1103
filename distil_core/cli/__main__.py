"""``python -m distil_core.cli`` runs the ``distil`` command."""

from distil_core.cli.main import main

raise SystemExit(main())
