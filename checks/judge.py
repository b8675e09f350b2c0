"""The judge of a run: evaluate → ``checks.json`` (and, for CI, ``junit.xml`` and ``summary.md``) → ``report.html``.
A locustfile names it; ``python -m checks --run DIR --write`` writes the same files: both give the same verdict and
exit code from the same files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from checks.ci import write_ci_files
from checks.verdict import evaluate, render, write

log = logging.getLogger("toolclash")


class Judge:
    """Evaluate → ``checks.json`` → ``report.html``; :data:`judge` is the one instance locustfiles name."""

    def prepare(self) -> None:
        """What must run on the caller's main thread before :meth:`__call__` may run in a worker thread: loading
        matplotlib, which may build its font cache by running ``fc-list`` (under gevent, a subprocess can only
        be started from the main thread's loop)."""
        import matplotlib.font_manager  # noqa: F401 - builds the font cache on first use

        from checks.plotting import pyplot

        pyplot()

    def __call__(self, run_dir: str | Path, *, notes: Mapping[str, Any] | None = None,
                 report: bool = True) -> dict[str, Any]:
        """Judge the finished run in *run_dir*: write ``checks.json`` (with *notes*, facts of the live run that do
        not change the verdict, e.g. its live counters) and, with *report*, ``report.html``; return the verdict."""
        started = time.monotonic()
        verdict = evaluate(run_dir)
        verdict.update(notes or {})
        write(run_dir, verdict)
        write_ci_files(run_dir, verdict)
        log.info("verdict of run %s written in %.2f s: exit code %s (%s)", verdict.get("run_id"),
                 time.monotonic() - started, verdict["exit_code"], verdict["meaning"])
        if report:
            from checks.report import write_report

            started = time.monotonic()
            try:
                path = write_report(Path(run_dir))
            except Exception as exc:  # noqa: BLE001 - the verdict is written; the report is a view of it
                text = str(exc).strip()
                log.warning("could not write report.html: %s", text.splitlines()[0] if text else type(exc).__name__)
            else:
                log.info("report written in %.2f s: %s", time.monotonic() - started, path)
        return verdict

    @staticmethod
    def render(verdict: Mapping[str, Any]) -> str:
        """The verdict as the plain-text table printed after Locust's summary."""
        return render(dict(verdict))


judge = Judge()
