"""Team budget scenario: members spend from their own wallets under a shared team limit (write skew).

    locust -f locustfiles/budget.py --headless -u 4 -r 4 -t 10s --profile stress --sync 1 --strategy repeatable_read
        # exit 1: teams over their limit, with the spends that did not see each other
    locust -f locustfiles/budget.py --headless -u 4 -r 4 -t 10s --profile stress --sync 1 --strategy serializable

With DATABASE_URL unset a private PostgreSQL is started for the run. See docs/isolation.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for toolclash/users/checks

from checks.judge import judge
from users.plugin import setup

setup(scenarios=["budget"], judge=judge)

from users.budget import BudgetAgent  # noqa: E402, F401
