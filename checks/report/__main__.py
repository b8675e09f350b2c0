"""``python -m checks.report reports/<run-id>``: rebuild the run's report.html."""

import sys

from checks.report import main

sys.exit(main())
