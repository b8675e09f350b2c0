"""``python -m toolclash.stack up|down|status|env``: the embedded stack from the shell.

    python -m toolclash.stack up      [--dir DIR] [--durable] [--service NAME ...] [--listen ADDR]
    eval "$(python -m toolclash.stack env)"
    python -m toolclash.stack status
    python -m toolclash.stack down

Exit 0, or 2 with one line on stderr (``toolclash.stack: what is wrong and how to fix it``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from toolclash.stack.core import SERVICES, Stack, load_state
from toolclash.stack.process import STATE_FILE, StackError

DEFAULT_CLI_DIR = ".stack"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"toolclash.stack: {message} (see --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m toolclash.stack",
        description="Private local servers (PostgreSQL) on free ports on 127.0.0.1, for runs and tests.",
        epilog='Typical use: up, then eval "$(python -m toolclash.stack env)", ..., down.',
    )
    parser.add_argument(
        "command",
        choices=("up", "down", "status", "env"),
        help="up: start and print URLs (password masked); down: stop what `up` started; "
        "status: table of services; env: `export VAR='...'` lines with real passwords",
    )
    parser.add_argument(
        "--dir",
        default=DEFAULT_CLI_DIR,
        help=f"state dir holding data, logs and {STATE_FILE} (default: ./{DEFAULT_CLI_DIR})",
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="keep fsync, synchronous_commit and full_page_writes on (default: off, faster)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds `up` waits for readiness (default 60)"
    )
    parser.add_argument(
        "--service",
        action="append",
        choices=sorted(SERVICES),
        help="service to start (repeat for several; default: postgres); env and status cover what runs",
    )
    parser.add_argument(
        "--listen", action="append", default=[], metavar="ADDR",
        help="also listen on this IPv4 address of the host, for workers on other hosts (PostgreSQL; "
        "clients on that address's subnet log in with the password); repeatable",
    )
    return parser


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _print_status(stack: Stack, status: dict[str, dict[str, Any]]) -> None:
    print(f"state dir: {stack.state_dir_hint()}")
    rows = [("SERVICE", "RUNNING", "PID", "PORT", "URL")]
    for name, info in status.items():
        rows.append(
            (
                name,
                "yes" if info["running"] else "no",
                str(info["pid"] or "-"),
                str(info["port"] or "-"),
                info["url"] or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    for name, info in status.items():
        for note in info["notes"]:
            print(f"{name}: {note}")
        if info["log"]:
            print(f"{name}: log {info['log']}")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 on any StackError, printed as one line)."""
    args = _build_parser().parse_args(argv)
    try:
        services = args.service or ["postgres"]
        if args.command == "env" and not args.service:  # every service the state dir records as started
            root = Path(args.dir)
            recorded = load_state(root.absolute())["services"] if root.is_dir() else {}
            services = [name for name, st in recorded.items() if st.get("pid")] or services
        stack = Stack(args.dir, services=services, durable=args.durable, listen=args.listen)
        if args.command == "up":
            stack.up(timeout=args.timeout)
            status = stack.status()
            for name, info in status.items():
                print(f"{name}: {info['url']}")
                for note in info["notes"]:
                    print(f"{name}: {note}")
            print(f'use: eval "$(python -m toolclash.stack env --dir {stack.state_dir_hint()})"')
        elif args.command == "down":
            stack.down()
            print(f"stopped the stack in {stack.state_dir_hint()}")
        elif args.command == "status":
            _print_status(stack, stack.status())
        else:
            for key, value in stack.env().items():
                print(f"export {key}={_shell_quote(value)}")
    except StackError as exc:
        print(f"toolclash.stack: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0
