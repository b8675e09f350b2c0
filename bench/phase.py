"""The one shape of a bench phase, what a phase gets while it runs, and the table every phase's rows go to.

A phase is a :class:`Phase` value in its own module (``PHASE = Phase(...)``): its name (the key of its
figures in the JSON report, and its ``--skip-<name>`` flag), its own options, ``run(args, ctx)`` that
measures and returns its figures (a dict; errors under ``"error"`` or ``"errors"``), and ``rows(result)``
that turns those figures into rows of the final table: ``(figure, value, target, met)``.
``python -m bench`` builds its parser from the phases, runs those not skipped, one after the other,
and renders one table. Nothing happens at import.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import Progress
from toolclash.stack import Stack, StackError

ROOT = Path(__file__).resolve().parent.parent
"""The project's root: locustfiles are run from here, reports go to ``reports/``."""

Row = tuple[str, str, str, bool | None]
"""One line of the final table: figure, value, target (empty: none), met (None: no target)."""


class BenchError(Exception):
    """A phase, or one of its steps, could not produce its figure (one line: what and why)."""


class CannotRun(Exception):
    """The bench cannot go on (a private server did not start): exit code 2, the report says why."""


@dataclass
class Context:
    """What a phase gets besides the options: the bench's timestamp, progress lines, the report's
    machine facts and headline ratios (the few report-wide figures a phase adds to)."""

    ts: str
    say: Progress
    machine: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    partial: dict[str, Any] | None = None
    """What the running phase measured so far (see :meth:`keep`): the report keeps it on Ctrl-C."""

    @property
    def workdir(self) -> Path:
        """``reports/bench-<ts>/``: the logs and run directories of the bench's load runs (created on use)."""
        path = ROOT / "reports" / f"bench-{self.ts}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def cores(self) -> int:
        return int(self.machine.get("cpus_usable") or os.cpu_count() or 1)

    def keep(self, out: dict[str, Any]) -> dict[str, Any]:
        """Register *out*, the dict the phase fills as it goes, so that an interrupted phase leaves its figures."""
        self.partial = out
        return out


def positive_int(text: str) -> int:
    """An argparse type: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    return None


def _one_step(args: argparse.Namespace) -> int:
    return 1


def result_errors(result: dict[str, Any]) -> list[str]:
    """The errors of a phase's result: its ``errors`` list, or its single ``error``."""
    errors = [str(e) for e in result.get("errors") or []]
    if "error" in result:
        errors.append(str(result["error"]))
    return errors


@dataclass(frozen=True, kw_only=True)
class Phase:
    """One phase of ``python -m bench``."""

    name: str
    """Key of its figures in the report; its flag is ``--skip-<name>`` unless :attr:`flag` says otherwise."""
    help: str
    """Help of its flag."""
    run: Callable[[argparse.Namespace, Context], dict[str, Any]]
    """Measure; return the figures (errors under ``error`` or ``errors``). :class:`BenchError`: the phase
    failed (recorded, the next phase runs); :class:`CannotRun`: the bench stops (exit code 2)."""
    rows: Callable[[dict[str, Any]], list[Row]]
    """Rows of the final table from the figures ``run`` returned (or the partial figures of an interrupted run)."""
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    steps: Callable[[argparse.Namespace], int] = _one_step
    """How many ``say.phase`` steps it announces (the ``k/N`` of the progress lines)."""
    errors: Callable[[dict[str, Any]], list[str]] = result_errors
    """What went wrong (exit code 1, and ``ERROR:`` lines under the table)."""
    notes: Callable[[dict[str, Any], dict[str, Any]], list[str]] | None = None
    """Lines under the table (``notes(result, settings)``): how a figure is defined, warnings."""
    flag: str = ""
    """Its flag without the dashes; empty: ``skip-<name>``."""
    opt_in: bool = False
    """The flag turns the phase on (``--observability``) rather than off."""

    @property
    def option(self) -> str:
        return "--" + (self.flag or f"skip-{self.name}")

    @property
    def dest(self) -> str:
        return self.option[2:].replace("-", "_")

    def selected(self, args: argparse.Namespace) -> bool:
        return bool(getattr(args, self.dest)) == self.opt_in


# ----------------------------------------------------------------------------------------- private servers


@contextlib.contextmanager
def private_stack(services: Sequence[str], say: Callable[[str], None], what: str = "PostgreSQL"
                  ) -> Iterator[tuple[dict[str, str], Stack]]:
    """Start private servers of the embedded stack for one phase, yield ``(urls, stack)``, stop them after.

    :class:`CannotRun` when they do not start, or when the database is not on 127.0.0.1 (the bench only
    loads servers it started itself)."""
    stack = Stack(services=tuple(services))
    try:
        say(f"stack: starting a private {what} on 127.0.0.1 (toolclash.stack, non-durable defaults)")
        try:
            urls = stack.up(timeout=120)
        except StackError as exc:
            raise CannotRun(str(exc)) from None
        if "DATABASE_URL" in urls and urlsplit(urls["DATABASE_URL"]).hostname != "127.0.0.1":
            raise CannotRun("the private server is not on 127.0.0.1; refusing to load it")
        yield urls, stack
    finally:
        say(f"stack: stopping the private {what}")
        with contextlib.suppress(StackError):
            stack.down()


# ------------------------------------------------------------------------------------------------ table


def num(value: Any, fmt: str = ",.1f") -> str:
    """*value* formatted, ``-`` when missing."""
    return "-" if value is None else format(value, fmt)


def row(name: str, value: str, target: str = "", met: bool | None = None) -> Row:
    return (name, value, target, met)


def failed_row(name: str, result: dict[str, Any]) -> Row:
    return (name, "FAILED", str(result.get("error", "")), False)


def table(rows: Sequence[Row]) -> list[str]:
    """The rows as aligned text lines under a ``figure value target met`` header."""
    cells = [("figure", "value", "target", "met"),
             *((n, v, t, "" if met is None else ("yes" if met else "NO")) for n, v, t, met in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = []
    for c in cells:
        lines.append(f"{c[0]:<{widths[0]}}  {c[1]:>{widths[1]}}  {c[2]:<{widths[2]}}  {c[3]}".rstrip())
        if c[0] == "figure" and len(lines) == 1:
            lines.append("-" * (sum(widths) + 6))
    return lines


def run_alone(phase: Phase, args: argparse.Namespace, name: str) -> int:
    """``python -m bench.<module>``: run one phase, print its rows, write ``reports/bench-<ts>-<name>.json``.

    Exit code 0 (figures measured), 1 (an error), 2 (could not run), 130 (interrupted; partial report)."""
    import datetime as dt

    from toolclash.run import write_json

    ts = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    ctx = Context(ts, Progress(phases=phase.steps(args)))
    report: dict[str, Any] = {"bench": ts}
    code = 0
    try:
        result = phase.run(args, ctx)
    except KeyboardInterrupt:
        result, code = dict(ctx.partial or {}, interrupted=True), 130
    except BenchError as exc:
        result = {"error": str(exc)}
    except CannotRun as exc:
        result, code = {"error": str(exc)}, 2
    report[phase.name] = result
    errors = phase.errors(result)
    if code == 0 and errors:
        code = 1
    path = ROOT / "reports" / f"bench-{ts}-{name}.json"
    write_json(path, report)
    print("\n".join(["", *table(phase.rows(result)), *(f"ERROR: {e}" for e in errors)]), flush=True)
    print(f"report: {path.relative_to(ROOT)}", flush=True)
    return code
