"""``--target python:<module>``: a client module of your own, like a Jepsen client, drives your platform.

The module (in a package of yours, installed where the agents run) implements one scenario::

    SCENARIO = "credits"                       # the scenario it implements

    class Client:                              # one per agent, made in the agent's process
        def __init__(self, agent: str, options: dict) -> None: ...   # the scenario's options (--accounts …)
        def invoke(self, tool: str, op_id: str, args: dict) -> dict | None:
            # do the call; return its result (ok), raise toolclash.targets.Rejected("insufficient-funds")
            # for a definite business rejection, toolclash.targets.NotApplied("…") for an error that surely
            # applied nothing; any other exception leaves the call in doubt (unknown)
        def close(self) -> None: ...           # optional

    def final_state(options: dict) -> dict:    # table name -> rows named as the checks read them
        return {"accounts": [...], "ledger": [...]}

    def reset(options: dict) -> None: ...      # optional: bring the platform to a known state before the run
    def check(options: dict) -> None: ...      # optional: raise with one line when the platform is unusable
    COLUMNS = {"ledger": ("op_id", …)}         # optional: the columns each table holds (else read off its rows)

``--target python:NAME`` names the module (``their_package.credits``), or an entry point of the group
``toolclash.targets`` (``[project.entry-points."toolclash.targets"] my-credits = "their_package.credits"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from toolclash.targets.spec import TargetError

ENTRY_POINT_GROUP = "toolclash.targets"
PREFIX = "python:"


class Rejected(Exception):
    """A definite business rejection (the call applied nothing): outcome ``fail`` with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotApplied(Exception):
    """An error that surely applied nothing (e.g. the request was never sent): outcome ``fail``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PythonTarget:
    source: str
    module_name: str
    scenario: str
    kind: str = "python"

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(self.module_name)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "module": self.module_name, "scenarios": [self.scenario]}

    def columns(self, table: str, rows: Sequence[Mapping[str, Any]], required: tuple[str, ...]) -> list[str]:
        declared = getattr(self.module, "COLUMNS", None)
        if isinstance(declared, Mapping) and table in declared:
            return list(declared[table])
        return list(rows[0]) if rows else list(required)


def resolve(source: str) -> str:
    """The module named by ``python:NAME``: an entry point of ``toolclash.targets``, else NAME itself."""
    from importlib.metadata import entry_points

    name = source[len(PREFIX):].strip()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.value.partition(":")[0]
    return name


def load(source: str, scenarios: tuple[str, ...]) -> PythonTarget:
    """Import and check the client module (one line, :class:`TargetError`, when it does not fit)."""
    name = resolve(source)
    if not name:
        raise TargetError(f"--target {source}: names no module; use python:<package.module>")
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - one line, exit 2
        raise TargetError(f"--target {source}: cannot import {name} ({type(exc).__name__}: {exc}); install the "
                          "package that provides it where the agents run") from None
    implements = getattr(module, "SCENARIO", None)
    if len(scenarios) != 1 or implements != scenarios[0]:
        raise TargetError(f"--target {source}: {name}.SCENARIO is {implements!r} but this run is "
                          f"{', '.join(scenarios)}; set SCENARIO = {scenarios[0]!r} or use that scenario's locustfile")
    for attr in ("Client", "final_state"):
        if not callable(getattr(module, attr, None)):
            raise TargetError(f"--target {source}: {name} has no {attr}; a client module defines class Client "
                              "and final_state(options) (see toolclash/targets/pyclient.py)")
    if not callable(getattr(module.Client, "invoke", None)):
        raise TargetError(f"--target {source}: {name}.Client has no invoke(tool, op_id, args) method")
    return PythonTarget(source, name, scenarios[0])
