"""``python -m checks --run reports/<run-id>``: the verdict of a finished run, with no server running.

Exit codes: 0 valid and gates met · 1 anomaly · 2 could not run · 3 unknown · 4 SLA gate missed.
With --write it rewrites checks.json, junit.xml and summary.md in the run directory. On a big history it says
what it is doing on stderr (reading, each scenario's checks, a line every few seconds while one step runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

from checks import EXIT_USAGE
from checks.ci import write_ci_files
from checks.verdict import RunDirError, evaluate, render, write
from toolclash.history import history_files

BIG_HISTORY_BYTES = 20_000_000
"""From this size of history on (about 100,000 operations) progress is shown unless --quiet."""
HEARTBEAT_S = 5.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line and exit 2, no usage dump
        sys.stderr.write(f"python -m checks: {message} (see --help)\n")
        sys.exit(EXIT_USAGE)


def history_bytes(run: str | Path) -> int:
    return sum(p.stat().st_size for _, p in history_files(run))


class Progress(logging.Handler):
    """Prints the verdict's progress messages (logger ``toolclash.checks``) on stderr: each step when it starts
    (with its operations) and when it ends (with its rate in operations per second), and a line every
    :data:`HEARTBEAT_S` seconds while one step takes long."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.started = time.monotonic()
        self.step = "reading the run"
        self.step_started = self.started
        self.step_ops = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def emit(self, record: logging.LogRecord) -> None:
        self.step = record.getMessage()
        self.step_started = time.monotonic()
        self.step_ops = int(getattr(record, "ops", 0))
        self._say(self.step)

    def _say(self, text: str) -> None:
        sys.stderr.write(f"python -m checks: [{time.monotonic() - self.started:5.1f} s] {text}\n")
        sys.stderr.flush()

    def _beat(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            took = time.monotonic() - self.step_started
            self._say(f"… still {self.step} ({took:.0f} s into this step)")

    def __enter__(self) -> Progress:
        logger = logging.getLogger("toolclash.checks")
        logger.addHandler(self)
        logger.setLevel(logging.INFO)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        logging.getLogger("toolclash.checks").removeHandler(self)
        self._say("judged")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m checks", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, metavar="DIR",
                        help="run directory, e.g. reports/20261123-101500-ab12cd")
    parser.add_argument("--evidence", type=int, default=3, metavar="N",
                        help="evidence items shown per check (default 3)")
    parser.add_argument("--write", action="store_true",
                        help="rewrite DIR/checks.json, DIR/junit.xml and DIR/summary.md with this verdict")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true", help="show progress on stderr whatever the history's size")
    shown.add_argument("--quiet", action="store_true", help="no progress lines, even for a big history")
    args = parser.parse_args(argv)
    try:
        big = history_bytes(args.run) >= BIG_HISTORY_BYTES
        if args.progress or (big and not args.quiet):
            with Progress():
                verdict = evaluate(args.run)
        else:
            verdict = evaluate(args.run)
    except (RunDirError, OSError, ValueError) as exc:
        sys.stderr.write(f"python -m checks: {exc}\n")
        return EXIT_USAGE
    print(render(verdict, evidence=args.evidence))
    if args.write:
        kept = Path(args.run) / "checks.json"  # facts of the live run that the files cannot give again
        if kept.is_file():
            old = json.loads(kept.read_text())
            verdict.update({k: old[k] for k in ("counters", "lost_workers") if k in old})
        write(args.run, verdict)
        write_ci_files(args.run, verdict)
    return int(verdict["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
