"""``python -m checks --run reports/<run-id>``: the verdict of a finished run, with no server running.

Exit codes: 0 valid and gates met · 1 anomaly · 2 could not run · 3 unknown · 4 SLA gate missed.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from checks import EXIT_USAGE
from checks.verdict import RunDirError, evaluate, render, write


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line and exit 2, no usage dump
        sys.stderr.write(f"python -m checks: {message} (see --help)\n")
        sys.exit(EXIT_USAGE)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m checks", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, metavar="DIR",
                        help="run directory, e.g. reports/20261123-101500-ab12cd")
    parser.add_argument("--evidence", type=int, default=3, metavar="N",
                        help="evidence items shown per check (default 3)")
    parser.add_argument("--write", action="store_true", help="rewrite DIR/checks.json with this verdict")
    args = parser.parse_args(argv)
    try:
        verdict = evaluate(args.run)
    except (RunDirError, OSError, ValueError) as exc:
        sys.stderr.write(f"python -m checks: {exc}\n")
        return EXIT_USAGE
    print(render(verdict, evidence=args.evidence))
    if args.write:
        write(args.run, verdict)
    return int(verdict["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
