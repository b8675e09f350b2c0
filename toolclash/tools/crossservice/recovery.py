"""Recovery of cross-service operations left in doubt (run by the scenario's hooks, the relay and
``python -m toolclash.recover``).

* **Two-phase commit.** Every prepared transaction ``xs:<op>:m`` (main) or ``xs:<op>:a`` (auth) is
  resolved from the coordinator's decision log in main (``toolclash.xs_decisions``): ``commit`` →
  ``COMMIT PREPARED``, otherwise ``ROLLBACK PREPARED`` — each on the server where it was prepared.
  Presumed abort: with no decision, recovery first writes ``abort`` into the log. The log's primary key
  makes the first decision win, so a coordinator that is still alive and recovery never disagree, and
  this part is safe while agents run (*min_age_s* leaves young transactions to their coordinator).
* **Sagas** (only when no agent is running): a saga still ``debited`` whose grant is in force in auth
  is finished (``done``); any other ``debited`` or ``compensating`` saga is compensated (revoke, refund;
  both idempotent).
"""

from __future__ import annotations

from typing import Any

from toolclash.tools.crossservice.coordinator import GID_PREFIX, compensate, decide, finish_prepared, op_of_gid


def prepared(conn: Any) -> list[tuple[str, float]]:
    """``(gid, age in seconds)`` of this database's cross-service prepared transactions."""
    with conn.cursor() as cur:
        cur.execute("SELECT gid, EXTRACT(EPOCH FROM now() - prepared)::float8 FROM pg_prepared_xacts "
                    "WHERE database = current_database() AND gid LIKE %s ORDER BY prepared", (GID_PREFIX + "%",))
        rows = [(str(g), float(age)) for g, age in cur.fetchall()]
    if not conn.autocommit:
        conn.rollback()
    return rows


def resolve_prepared(main: Any, auth: Any, *, min_age_s: float = 0.0, who: str = "recovery") -> dict[str, int]:
    """Commit or roll back every in-doubt branch on both servers from the decision log (presumed abort)."""
    main.autocommit = True
    auth.autocommit = True
    by_op: dict[str, list[tuple[Any, str, float]]] = {}
    for conn in (main, auth):
        for g, age in prepared(conn):
            by_op.setdefault(op_of_gid(g), []).append((conn, g, age))
    counts = {"in_doubt_seen": len(by_op), "committed": 0, "rolled_back": 0, "left_young": 0}
    for op, branches in by_op.items():
        if max(age for _, _, age in branches) < min_age_s:
            counts["left_young"] += 1  # its coordinator is probably still at work
            continue
        verb = "COMMIT" if decide(main, op, "abort", who) == "commit" else "ROLLBACK"
        for conn, g, _ in branches:
            if finish_prepared(conn, verb, g):
                counts["committed" if verb == "COMMIT" else "rolled_back"] += 1
    return counts


def resolve_sagas(main: Any, auth: Any, *, who: str = "recovery") -> dict[str, int]:
    """Finish or compensate every saga left ``debited`` or ``compensating`` (no agent may be running)."""
    main.autocommit = False
    auth.autocommit = False
    with main.cursor() as cur:
        cur.execute("SELECT op_id, state FROM toolclash.xs_sagas WHERE state IN ('debited', 'compensating') "
                    "ORDER BY op_id")
        open_sagas = [(str(op), str(state)) for op, state in cur.fetchall()]
    main.rollback()
    counts = {"sagas_finished": 0, "sagas_compensated": 0}
    for op, state in open_sagas:
        if state == "debited":
            with auth.cursor() as cur:
                cur.execute("SELECT granted AND revoked_at IS NULL FROM toolclash.xs_grants WHERE op_id = %s", (op,))
                row = cur.fetchone()
            auth.rollback()
            if row is not None and row[0]:
                with main.cursor() as cur:
                    cur.execute("UPDATE toolclash.xs_sagas SET state = 'done', updated_at = clock_timestamp(), "
                                "updated_by = %s WHERE op_id = %s AND state = 'debited'", (who, op))
                main.commit()
                counts["sagas_finished"] += 1
                continue
        if compensate(main, auth, op, who) == "compensated":
            counts["sagas_compensated"] += 1
    return counts


def recover(main: Any, auth: Any, *, min_age_s: float = 0.0, who: str = "recovery",
            sagas: bool = True) -> dict[str, int]:
    """Resolve prepared transactions, then (if *sagas*) open sagas. Returns counts by what was done."""
    counts = resolve_prepared(main, auth, min_age_s=min_age_s, who=who)
    if sagas:
        counts.update(resolve_sagas(main, auth, who=who))
    main.autocommit = False
    auth.autocommit = False
    return counts
