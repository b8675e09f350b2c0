"""The web UI's Consistency tab in a real headless Chromium (Debian's, through Playwright): start a short run
from the form, see the tab's numbers move, stop, see the verdict with evidence; a screenshot is saved."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
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
    """(value, detail) of the Consistency table's row *name*, None while it is not shown."""
    for cells in page.eval_on_selector_all("table tbody tr", "rows => rows.map(r => [...r.cells].map(c => "
                                                               "c.innerText))"):
        if cells and cells[0] == name:
            return cells[1], cells[2] if len(cells) > 2 else ""
    return None


def test_consistency_tab_moves_during_a_run_and_shows_the_verdict(database_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "TOOLCLASH_"))}
    env.pop("PROMETHEUS_URL", None)
    env["DATABASE_URL"] = database_url
    proc = subprocess.Popen([LOCUST, "-f", "locustfiles/credits.py", "--web-host", "127.0.0.1", "--web-port", port,
                             "--reports-dir", str(tmp_path), "--metrics-port", "0", "--loglevel", "WARNING"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
                page.fill("input[name=userCount]", "10")
                page.fill("input[name=spawnRate]", "10")
                page.get_by_role("button", name="Custom parameters").click()
                page.select_option("select[name=strategy]", "serializable")
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
                verdict = wait_until("the verdict row", lambda: _reload_row(page, base, "verdict"), 90)
                assert verdict[0] in ("exit code 0", "exit code 4"), verdict
                check = _row(page, "check credits.conservation")
                assert check is not None and check[0] == "valid", check
                gates = [name for name, _v in _names(page) if name.startswith("gate credits.")]
                assert "gate credits.conflict_rate" in gates, gates
                page.screenshot(path=str(shot), full_page=True)
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
    kept = ROOT / "reports" / "screenshots"
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, kept / "consistency-tab.png")
    print(f"screenshot: {kept / 'consistency-tab.png'}")


def _names(page: Any) -> list[tuple[str, str]]:
    rows = page.eval_on_selector_all("table tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))")
    return [(r[0], r[1]) for r in rows if len(r) > 1]


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
