"""Checks of server facts captured at the end of a run (``final/server.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from checks import UNKNOWN, CheckResult, Evidence, result


def sessions_closed(server: Mapping[str, Any] | None) -> CheckResult:
    """No session of the run is left in ``pg_stat_activity`` (idle in transaction, active or idle)."""
    name = "server.sessions"
    if server is not None and "no_database" in server:  # a target reached over HTTP or a client of its own
        return result(name, True, {"left_open": 0}, None, str(server["no_database"]))
    if server is None or "sessions" not in server:
        return result(name, UNKNOWN, {}, None, "no server facts were captured")
    ev = Evidence()
    for s in server["sessions"]:
        ev.add({"pid": s.get("pid"), "application_name": s.get("application_name"), "state": s.get("state"),
                "xact_age_s": s.get("xact_age_s"), "query": (s.get("query") or "")[:200]})
    by_state: dict[str, int] = {}
    for s in server["sessions"]:
        by_state[s.get("state") or "?"] = by_state.get(s.get("state") or "?", 0) + 1
    counts = {"left_open": ev.total, "by_state": by_state, "waited_s": server.get("waited_s")}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} session(s) of the run still open after stop")
    return result(name, True, counts, ev, "no session of the run is left open")
