"""Optimistic configuration updates: agents update different fields of one shared configuration record.

    locust -f locustfiles/config.py                       # web UI, custom options in the form
    locust -f locustfiles/config.py --headless -u 15 -r 15 -t 30s --strategy last_writer_wins

With DATABASE_URL unset a private PostgreSQL is started for the run. See README, "Scenario: config".
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for toolclash/users/checks

from checks.judge import judge
from users.plugin import setup

setup(scenarios=["config"], judge=judge)

from users.config import ConfigAgent  # noqa: E402, F401
