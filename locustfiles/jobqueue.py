"""Tool-execution queue scenario: agents submit jobs to a bounded Redis priority queue, consumers execute them.

    locust -f locustfiles/jobqueue.py                                        # web UI, options in the form
    locust -f locustfiles/jobqueue.py --headless -u 120 -r 60 -t 30s         # 10 consumers + 110 submitters
    locust -f locustfiles/jobqueue.py --headless -u 120 -r 60 -t 20s --fault check_then_push   # exits 1

Not named queue.py: Locust imports a locustfile under its file name, and a module named ``queue`` would
shadow the standard library's (redis-py and gevent import it).

With DATABASE_URL / REDIS_URL unset a private PostgreSQL and Redis are started for the run. See README.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for toolclash/users/checks

from checks.judge import judge
from users.plugin import setup

setup(scenarios=["queue"], judge=judge)

from users.queue import QueueConsumer, QueueSubmitter  # noqa: E402, F401
