"""``python -m toolclash.stack``: see :mod:`toolclash.stack.cli`."""

import sys

from toolclash.stack.cli import main

sys.exit(main())
