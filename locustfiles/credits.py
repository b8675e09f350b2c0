"""Credit-deduction scenario: agents deduct credits from a few shared accounts.

    locust -f locustfiles/credits.py                      # web UI, custom options in the form
    locust -f locustfiles/credits.py --headless -u 20 -r 20 -t 30s --strategy serializable

With DATABASE_URL unset a private PostgreSQL is started for the run. See README.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for toolclash/users/checks

from checks.judge import judge
from users.plugin import setup

setup(scenarios=["credits"], judge=judge)

from users.credits import CreditAgent  # noqa: E402, F401
