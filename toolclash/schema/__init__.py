"""SQL of each scenario, one file per scenario, applied idempotently in the ``toolclash`` schema."""

from __future__ import annotations

from importlib import resources
from typing import Any

SCHEMA = "toolclash"


def sql(name: str) -> str:
    """The DDL of scenario *name* (read when called, never at import)."""
    return resources.files(__name__).joinpath(f"{name}.sql").read_text(encoding="utf-8")


def apply(conn: Any, name: str) -> None:
    """Create scenario *name*'s objects if missing, in one transaction.

    Concurrent appliers are serialised by an advisory lock so two runs starting at once
    against the same database don't race on ``CREATE ... IF NOT EXISTS``.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('toolclash.schema'))")
        cur.execute(sql(name))
    conn.commit()
