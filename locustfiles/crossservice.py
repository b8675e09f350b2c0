"""Cross-service scenario: grant_tool_access across main PostgreSQL, auth PostgreSQL and ClickHouse.

    locust -f locustfiles/crossservice.py                       # web UI, custom options in the form
    locust -f locustfiles/crossservice.py --headless -u 10 -r 10 -t 20s --mode 2pc --inject coordinator_crash
    locust -f locustfiles/crossservice.py --headless -u 10 -r 10 -t 20s --mode saga --inject participant_terminate

With DATABASE_URL, AUTH_DATABASE_URL or CLICKHOUSE_URL unset, private servers are started for the run.
See README ("Scenario: crossservice").
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for toolclash/users/checks

from checks.judge import judge
from users.plugin import setup

setup(scenarios=["crossservice"], judge=judge)

from users.crossservice import CrossServiceAgent  # noqa: E402, F401
