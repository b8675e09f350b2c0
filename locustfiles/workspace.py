"""Event-sourced workspace scenario: agents append events, projectors keep read models, queries read them.

    locust -f locustfiles/workspace.py                      # web UI, custom options in the form
    locust -f locustfiles/workspace.py --headless -u 15 -r 15 -t 30s
    locust -f locustfiles/workspace.py --headless -u 15 -r 15 -t 30s --fault append_without_expected_version

With DATABASE_URL unset a private PostgreSQL is started for the run. See README.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for toolclash/users/checks

from checks.judge import judge
from users.plugin import setup

setup(scenarios=["workspace"], judge=judge)

from users.workspace import WorkspaceAgent  # noqa: E402, F401
