"""``python -m bgad`` runs the command line (as ``torchrun -m bgad`` needs)."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
