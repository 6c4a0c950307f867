"""`python -m asympo.report DIR`."""

import sys

from asympo.report.build import main

sys.exit(main())
