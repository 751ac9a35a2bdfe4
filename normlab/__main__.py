"""``python -m normlab`` (and ``torchrun -m normlab``) run the CLI."""

import sys

from normlab.lab.cli import main

sys.exit(main())
