"""`python -m asympo.report DIR`."""

import sys

from asympo.report.cli import main

sys.exit(main())
