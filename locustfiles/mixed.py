"""Every agent kind at once, through the ramp 5 → 10 → 25 → 50 → 100 with per-stage SLA gates.

    locust -f locustfiles/mixed.py --headless                      # the whole ramp, one process
    locust -f locustfiles/mixed.py --headless --processes 4        # a master and 4 workers
    locust -f locustfiles/mixed.py                                 # web UI: start the ramp from the form

Stages are options (--stages, --stage-seconds, --stage-spawn-rate). Scenarios so far: credits, config, deadlock, crossservice.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for toolclash/users/checks

from users.runtime import setup

setup(scenarios=["credits", "config", "deadlock", "crossservice"])

from users.config import ConfigAgent  # noqa: E402, F401
from users.credits import CreditAgent  # noqa: E402, F401
from users.crossservice import CrossServiceAgent  # noqa: E402, F401
from users.deadlock import DeadlockAgent  # noqa: E402, F401
from users.shape import RampShape  # noqa: E402, F401
