"""Pool-exhaustion scenario: 25 agents, 20 connections, long analytical queries.

    locust -f locustfiles/pool.py --headless -u 25 -r 25 -t 30s                    # client pool
    locust -f locustfiles/pool.py --headless -u 25 -r 25 -t 30s --pool pgbouncer   # through PgBouncer
    locust -f locustfiles/pool.py --headless -u 25 -r 25 -t 30s --fault leak       # exit 1, names the leak

With DATABASE_URL / PGBOUNCER_URL unset a private PostgreSQL and PgBouncer are started for the run. See README.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for toolclash/users/checks

from checks.judge import judge
from users.plugin import setup

setup(scenarios=["pool"], judge=judge)

from users.pool import PoolAgent  # noqa: E402, F401
