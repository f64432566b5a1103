"""``python -m distil_core ARGS`` is ``distil ARGS`` (what ``torchrun -m distil_core train`` runs)."""

import sys

from distil_core.cli.main import main

sys.exit(main())
