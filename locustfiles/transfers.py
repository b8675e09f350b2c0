"""Transfers and audits scenario: agents move credits between accounts while auditors read every balance (read
skew). -u splits evenly between transfer agents and auditors.

    locust -f locustfiles/transfers.py --headless -u 6 -r 6 -t 10s --profile stress --sync 1 \
        --tool-think-ms 2 --strategy read_committed     # exit 1: audits that saw half a transfer, named

With DATABASE_URL unset a private PostgreSQL is started for the run. See docs/isolation.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for toolclash/users/checks

from checks.judge import judge
from users.plugin import setup

setup(scenarios=["transfers"], judge=judge)

from users.transfers import AuditorAgent, TransferAgent  # noqa: E402, F401
