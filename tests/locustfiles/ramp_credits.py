"""Test locustfile: the ramp shape with credit agents only (PostgreSQL is the one service it needs).

Tests of the ramp and of distribution mechanics use it where they cannot give every service of
``locustfiles/mixed.py`` (e.g. workers in network namespaces that reach only PostgreSQL).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # the project root

from checks.judge import judge
from users.plugin import setup

setup(scenarios=["credits"], judge=judge)

from users.credits import CreditAgent  # noqa: E402, F401
from users.shape import RampShape  # noqa: E402, F401
