"""What a scenario declares so that its agents and checks can be pointed at another platform (``Scenario.target``).

A :class:`TargetShape` names the scenario's operations with their arguments (the placeholders a target file may
use besides ``{op_id}`` and ``{agent}``) and the tables of its final state: for each, the columns its checks
need (``required``), those that enable more checks (``optional``), and where each table goes in the final state
the checks read (``final/<scenario>.json``). Pure data: nothing here touches the network or the disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

COLUMNS_KEY = "columns"
"""Key of the final state that lists, per table, the columns the target provided (absent: all of them)."""

TARGET_KEY = "target"
"""Key of the final state that says where it was read from (kind, source)."""


@dataclass(frozen=True)
class Table:
    """One table of a scenario's final state, as a target maps it."""

    name: str
    """Its name in a target file (``[credits.final.ledger]``)."""
    key: str
    """Its key in the final state its checks read (``credit_ledger``)."""
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    enables: Mapping[str, str] = field(default_factory=dict)
    """Column (or the table, under ``""``) → what it lets the checks decide (for docs and messages)."""
    json_columns: tuple[str, ...] = ()
    """Columns holding a JSON document (a string is parsed)."""
    from_start: Mapping[str, str] = field(default_factory=dict)
    """Optional column → column read at the start of the run (before any agent) that stands in for it
    (``{"initial_balance": "balance"}``: without an initial balance column, the balance before the load)."""

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.required, *self.optional)


@dataclass(frozen=True)
class TargetShape:
    """How a scenario is pointed at another platform (see the module's documentation)."""

    operations: Mapping[str, tuple[str, ...]]
    """Tool name → its arguments (placeholders of the operation's request or statements)."""
    tables: tuple[Table, ...]

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)

    def to_final(self, rows: Mapping[str, Sequence[Mapping[str, Any]]], provided: Mapping[str, Sequence[str]],
                 start: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                 source: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The final state the checks read, from rows already renamed to the checks' column names.

        *rows*: table name → rows; *provided*: table name → the columns the target mapped; *start*: the same
        tables read at the start of the run, for :attr:`Table.from_start`. Tables the target does not map are
        left out, and ``columns`` lists what each mapped table holds: the checks say what they could not decide.
        """
        out: dict[str, Any] = {}
        columns: dict[str, list[str]] = {}
        for table in self.tables:
            if table.name not in rows:
                continue
            have = [c for c in table.columns if c in provided.get(table.name, ())]
            found = [_clean(table, dict(r)) for r in rows[table.name]]
            for col, stand_in in table.from_start.items():
                if col in have or start is None or table.name not in start:
                    continue
                key = table.required[0]
                before = {str(r[key]): r.get(stand_in) for r in start[table.name]}
                for r in found:
                    r[col] = before.get(str(r[key]))
                if all(r[col] is not None for r in found):
                    have.append(col)
                else:  # a row that did not exist at the start: nothing stands in for it
                    for r in found:
                        r.pop(col, None)
            out[table.key] = found
            columns[table.key] = have
        out[COLUMNS_KEY] = columns
        if source is not None:
            out[TARGET_KEY] = dict(source)
        return out


def _clean(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    for col in table.json_columns:
        if isinstance(row.get(col), str | bytes):
            row[col] = json.loads(row[col])
    return row


def provided(final: Mapping[str, Any], key: str) -> frozenset[str] | None:
    """The columns a target provided for table *key* of *final*; None when the final state is toolclash's own
    (every column is there)."""
    columns = final.get(COLUMNS_KEY)
    if not isinstance(columns, Mapping):
        return None
    return frozenset(columns.get(key, ()))
