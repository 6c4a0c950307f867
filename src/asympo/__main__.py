"""`python -m asympo` runs the command line (same as the `asympo` script)."""

import sys

from asympo.cli import main

sys.exit(main())
