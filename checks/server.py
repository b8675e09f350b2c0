"""Checks of server facts captured at the end of a run (``final/server.json``), for every scenario.

* ``server.sessions`` — no PostgreSQL session of the run is left open;
* ``server.prepared`` — no prepared transaction was left behind on any PostgreSQL server the run used.

A session is named ``tc:<run-id>:<who>``, and an agent's *who* starts with its process's name
(``<process>-a<n>``): a session left by a process whose history is incomplete (a lost worker, frozen
with its sessions open) cannot be judged, so it makes the check unknown, never false.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from checks import UNKNOWN, CheckResult, Evidence, result


def owner_process(application_name: str, processes: Iterable[str]) -> str | None:
    """The process among *processes* whose session ``tc:<run>:<process>-…`` this is (None if none)."""
    who = application_name.split(":", 2)[-1] if application_name.count(":") >= 2 else application_name
    for process in processes:
        if who == process or who.startswith(process + "-"):
            return process
    return None


def _held_up_by(sessions: Iterable[Mapping[str, Any]], doubtful: frozenset[str]) -> set[Any]:
    """Pids of the sessions that wait, directly or through others, for the locks of a session of a process whose
    history is incomplete (a frozen worker's open transaction holds every other agent up until it ends)."""
    if not doubtful:
        return set()
    blocked_by = {s.get("pid"): set(s.get("blocked_by") or ()) for s in sessions}
    lost = {s.get("pid") for s in sessions if owner_process(str(s.get("application_name") or ""), doubtful)}
    held: set[Any] = set()
    changed = True
    while changed:
        changed = False
        for pid, blockers in blocked_by.items():
            if pid not in held and pid not in lost and blockers & (lost | held):
                held.add(pid)
                changed = True
    return held


def sessions_closed(server: Mapping[str, Any] | None, incomplete: Iterable[str] = ()) -> CheckResult:
    """No session of the run is left in ``pg_stat_activity`` (idle in transaction, active or idle); one of a
    process whose history is incomplete makes the verdict unknown."""
    name = "server.sessions"
    if server is not None and "no_database" in server:  # a target reached over HTTP or a client of its own
        return result(name, True, {"left_open": 0}, None, str(server["no_database"]))
    if server is None or "sessions" not in server:
        return result(name, UNKNOWN, {}, None, "not checked: needs final/server.json (the server's sessions)")
    doubtful = frozenset(incomplete)
    ev = Evidence()
    of_lost: list[str] = []
    by_state: dict[str, int] = {}
    held_up = _held_up_by(server["sessions"], doubtful)
    for s in server["sessions"]:
        app = str(s.get("application_name") or "")
        owner = owner_process(app, doubtful)
        if owner is not None or s.get("pid") in held_up:
            of_lost.append(app)
            continue
        by_state[s.get("state") or "?"] = by_state.get(s.get("state") or "?", 0) + 1
        ev.add({"pid": s.get("pid"), "application_name": app, "state": s.get("state"),
                "xact_age_s": s.get("xact_age_s"), "query": (s.get("query") or "")[:200]})
    counts = {"left_open": ev.total, "by_state": by_state, "waited_s": server.get("waited_s"),
              "of_processes_with_incomplete_history": len(of_lost)}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} session(s) of the run still open after stop")
    if of_lost:
        for app in of_lost:
            ev.add({"application_name": app, "what": "open, but its process's history is incomplete (a lost "
                                                     "process keeps its sessions), or it waits for the locks of "
                                                     "such a session: not judged"})
        return result(name, UNKNOWN, counts, ev, f"{len(of_lost)} session(s) left open by a process whose history "
                      "is incomplete")
    return result(name, True, counts, ev, "no session of the run is left open")


def prepared_left(server: Mapping[str, Any] | None) -> CheckResult:
    """No prepared transaction (``pg_prepared_xacts``, every database of the server) appeared on any of the run's
    PostgreSQL servers and was left there: one holds its locks until somebody commits or rolls it back.
    Those already there before the run began are counted, not blamed on it."""
    name = "server.prepared"
    if server is not None and "no_database" in server:  # a target reached over HTTP or a client of its own
        return result(name, True, {"left": 0}, None, str(server["no_database"]))
    servers = (server or {}).get("servers")
    if not servers:
        return result(name, UNKNOWN, {}, None, "not checked: needs the prepared transactions of each server "
                      "(final/server.json 'servers')")
    ev = Evidence()
    unreadable: list[str] = []
    before_run = 0
    for var, facts in sorted(servers.items()):
        if facts.get("error") or "prepared_xacts" not in facts:
            unreadable.append(var)
            continue
        earlier = {x.get("gid") for x in facts.get("prepared_at_start") or []}
        for x in facts["prepared_xacts"]:
            if x.get("gid") in earlier:
                before_run += 1
                continue
            ev.add({"server": var, "gid": x.get("gid"), "database": x.get("database"), "owner": x.get("owner"),
                    "prepared": x.get("prepared"),
                    "what": "prepared during the run and never committed or rolled back"})
    counts = {"servers": len(servers), "left_prepared": ev.total, "prepared_before_the_run": before_run,
              "unreadable_servers": unreadable}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} prepared transaction(s) left behind")
    if unreadable:
        return result(name, UNKNOWN, counts, ev, f"not checked: the prepared transactions of {', '.join(unreadable)} "
                      "could not be read")
    return result(name, True, counts, ev, "no prepared transaction left on any server of the run")
