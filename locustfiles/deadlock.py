"""Deadlock scenario: groups of agents lock resources in a cycle; the lowest-priority member is the victim.

    locust -f locustfiles/deadlock.py --headless -u 12 -r 12 -t 20s --profile stress
    locust -f locustfiles/deadlock.py --headless -u 50 -r 50 -t 20s --profile stress --deadlock-mode cascade

With DATABASE_URL unset a private PostgreSQL is started for the run. See README.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for toolclash/users/checks

from checks.judge import judge
from users.plugin import setup

setup(scenarios=["deadlock"], judge=judge)

from users.deadlock import DeadlockAgent  # noqa: E402, F401
