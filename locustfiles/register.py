"""Register scenario: agents run short read/write transactions over a few keys; a dependency graph names every
isolation anomaly.

    locust -f locustfiles/register.py --headless -u 8 -r 8 -t 10s --strategy repeatable_read --sync 1
    locust -f locustfiles/register.py --headless -u 8 -r 8 -t 10s --strategy read_committed \
        --expect-isolation serializable          # exit 1: the anomalies read committed allows, named

With DATABASE_URL unset a private PostgreSQL is started for the run. See docs/isolation.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for toolclash/users/checks

from checks.judge import judge
from users.plugin import setup

setup(scenarios=["register"], judge=judge)

from users.register import RegisterAgent  # noqa: E402, F401
