"""The web UI's Consistency tab in a real headless Chromium (Debian's, through Playwright): no warning when it
starts (the agents have a host: the masked backend URL), start a short run of a known-bad strategy from the form,
see the tab's numbers move, stop, see the verdict banner (ANOMALY) and follow its link to the evidence; a
screenshot is saved."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import LOCUST, ROOT
from tests.test_observability import free_port


def wait_until(what: str, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _row(page: Any, name: str) -> tuple[str, str] | None:
    """(value, detail) of the Consistency table's row *name* (section, item, value, detail), None while not shown."""
    for cells in page.eval_on_selector_all("table tbody tr", "rows => rows.map(r => [...r.cells].map(c => "
                                                               "c.innerText))"):
        if len(cells) > 1 and cells[1] == name:
            return cells[2], cells[3] if len(cells) > 3 else ""
    return None


class Lines(threading.Thread):
    """Collects a pipe's lines as they come (the process's log at start, before the run)."""

    def __init__(self, pipe: Any) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.lines: list[str] = []

    def run(self) -> None:
        for line in self.pipe:
            self.lines.append(line.rstrip("\n"))


def test_consistency_tab_moves_during_a_run_and_shows_the_verdict(database_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "TOOLCLASH_"))}
    env.pop("PROMETHEUS_URL", None)
    env["DATABASE_URL"] = database_url
    proc = subprocess.Popen([LOCUST, "-f", "locustfiles/credits.py", "--web-host", "127.0.0.1", "--web-port", port,
                             "--reports-dir", str(tmp_path), "--metrics-port", "0", "--loglevel", "INFO"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = Lines(proc.stderr)
    log.start()
    base = f"http://127.0.0.1:{port}"
    shot = tmp_path / "consistency-tab.png"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})

                def loaded() -> bool:
                    try:
                        page.goto(base + "/")
                        return True
                    except Exception:  # noqa: BLE001 - the server is still starting
                        return False

                wait_until("the web UI", loaded)
                page.wait_for_selector("input[name=userCount]")
                at_start = list(log.lines)
                assert "has no host attribute" not in page.content()
                host = page.input_value("input[name=host]")
                assert host.startswith("postgresql://") and "***" in host, host  # the masked backend URL
                page.fill("input[name=userCount]", "10")
                page.fill("input[name=spawnRate]", "10")
                page.get_by_role("button", name="Custom parameters").click()
                page.select_option("select[name=strategy]", "naive")  # known-bad: loses updates
                page.fill("input[name=accounts]", "1")
                page.fill("input[name=waitMin]", "0")
                page.fill("input[name=waitMax]", "0.01")
                page.get_by_role("button", name="Start").click()
                page.get_by_role("tab", name="Consistency").click()
                first = wait_until("the tab's attempts", lambda: _attempts(page))
                later = wait_until("the tab's numbers to move", lambda: (a := _attempts(page)) > first and a)
                live = _row(page, "conflict rate (live)")
                assert live is not None and "threshold 0.05" in live[1], live
                page.get_by_role("button", name="Stop", exact=True).click()
                verdict = wait_until("the verdict row", lambda: (v := _reload_row(page, base, "verdict"))
                                     and v[0] not in ("RUN UNDER WAY", "JUDGING") and v, 90)
                assert verdict[0] == "ANOMALY" and "exit code 1" in verdict[1], verdict
                check = _row(page, "credits.lost_updates")
                assert check is not None and check[0] == "INVALID", check
                assert "/toolclash/evidence/credits.lost_updates" in check[1], check
                sections = [g for g, _n in _names(page)]
                assert sections == sorted(sections) and sections[0] == "1 verdict", sections
                assert {"2 checks", "3 SLA gates", "4 live figures"} <= set(sections), sections
                assert ("3 SLA gates", "credits.conflict_rate") in _names(page)
                banner = page.wait_for_selector("#toolclash-banner[data-verdict='ANOMALY']", timeout=10_000)
                assert banner is not None and "ANOMALY" in banner.inner_text()
                (run_dir,) = [d for d in tmp_path.iterdir() if (d / "checks.json").is_file()]
                judged = json.loads((run_dir / "checks.json").read_text())
                # the tab shows the run's verdict as checks.json has it: every check's state, every gate
                for c in judged["checks"]:
                    row = _row(page, c["name"])
                    want = {True: "valid", False: "INVALID"}.get(c["valid"], "UNKNOWN")
                    assert row is not None and row[0] == want, (c["name"], c["valid"], row)
                for g in judged["gates"]:
                    row = _row(page, f"{g['scope']}.{g['gate']}")
                    assert row is not None and row[0].startswith("met" if g["met"] else "MISSED"), (g, row)
                page.screenshot(path=str(shot), full_page=True)
                page.click("#toolclash-banner a[href='/toolclash/evidence/credits.lost_updates']")
                page.wait_for_selector("h1")
                evidence = page.inner_text("body")
                assert "credits.lost_updates: INVALID" in evidence and "op" in evidence, evidence[:500]
            finally:
                browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert later > first > 0
    assert shot.stat().st_size > 10_000
    warnings = [ln for ln in at_start if "WARNING" in ln or "host" in ln.lower()]
    assert not warnings, at_start  # nothing to warn about when the web UI starts
    kept = ROOT / "reports" / "screenshots"
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, kept / "consistency-tab.png")
    print(f"screenshot: {kept / 'consistency-tab.png'}")


def _names(page: Any) -> list[tuple[str, str]]:
    """(section, item) of every row of the Consistency table."""
    rows = page.eval_on_selector_all("table tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))")
    return [(r[0], r[1]) for r in rows if len(r) > 2]


def _attempts(page: Any) -> int:
    row = _row(page, "conflict rate (run)")
    match = re.search(r"in (\d+) attempts", row[1]) if row else None
    return int(match.group(1)) if match else 0


def _reload_row(page: Any, base: str, name: str) -> tuple[str, str] | None:
    """After stop Locust stops polling: load the tab again (one fetch on load) until *name* is there."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        page.goto(base + "/?tab=consistency")
        page.wait_for_selector("table tbody tr", timeout=5_000)
    except PlaywrightError:  # the master is still busy with the verdict: try again
        return None
    return _row(page, name)
