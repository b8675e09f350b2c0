"""What the isolation scenarios (register, budget, transfers) share: PostgreSQL's levels by strategy name, and the
``--expect-isolation`` option that says which consistency model their dependency-graph check judges against."""

from __future__ import annotations

from typing import Any

from psycopg2.extensions import (
    ISOLATION_LEVEL_READ_COMMITTED,
    ISOLATION_LEVEL_REPEATABLE_READ,
    ISOLATION_LEVEL_SERIALIZABLE,
)

from toolclash.option import Option

LEVELS = {"read_committed": ISOLATION_LEVEL_READ_COMMITTED, "repeatable_read": ISOLATION_LEVEL_REPEATABLE_READ,
          "serializable": ISOLATION_LEVEL_SERIALIZABLE}
"""PostgreSQL's isolation levels, by the name a strategy (and the checks) use."""

MODELS = ("read-committed", "snapshot-isolation", "repeatable-read", "serializable")
"""Consistency models a run may claim (checks.graph.PROHIBITED says what each forbids)."""

EXPECT_ISOLATION = Option(
    "expect_isolation", str, "", "consistency model the dependency-graph check judges the run against: "
    "read-committed, snapshot-isolation, repeatable-read (ANSI: write skew forbidden too) or serializable; empty: "
    "what the level used provides (PostgreSQL's REPEATABLE READ is snapshot isolation)", choices=("", *MODELS))


def claim(level: str, opts: Any) -> dict[str, str]:
    """What the final state records for the checks: the level the agents ran at and the model the run claims."""
    return {"level": level, "expect": str(getattr(opts, "expect_isolation", "") or "")}
