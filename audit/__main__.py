"""``python -m audit``: the same command as the ``audit`` script (what torchrun starts: ``torchrun -m audit``)."""

import sys

from audit.cli import main

if __name__ == "__main__":
    sys.exit(main())
