"""The scenario contract: one :class:`Scenario` value per scenario, and one registry of them.

A scenario is a vertical slice: its tools (``toolclash/tools/<name>``), its schema, its agents
(``users/<name>.py``), its locustfile, its checks (``checks/<name>.py``) and its tests. What the
rest of toolclash needs to know about it is one :class:`Scenario` value, declared next to its tools:

* what it is: name, the tool names its operation records carry, strategies and the default one,
  planted faults, its own options (declared once), the services it needs, the fail reasons that are
  correct business answers (left out of the success rate);
* its hooks, each called with a :class:`Context` (the run's services, the scenario's options,
  strategy and planted fault, the run directory):

  - ``reset(ctx, conn)``: create, empty and seed its schema (once per run, before any agent);
  - ``preflight(backend)`` (optional): raise with a one-line message when a service is unusable;
  - ``start(ctx)`` (optional): start helpers that run beside the agents (a relay, projectors);
    returns a handle given back to ``finish``;
  - ``finish(ctx, handle, deadline_s)`` (optional): after the load stopped and every process
    delivered its history (drain a queue, run recovery, stop helpers); returns *facts* (JSON-able)
    that ``snapshot`` finds in ``ctx.facts`` — nothing passes between hooks through globals;
  - ``snapshot(ctx, conn)``: the final state its checks need, as JSON-able data;
  - ``invariant(ctx, conn)`` (optional): a cheap query while agents run; returns what is broken (one line)
    or None. ``--abort-on invariant`` stops the run when one is broken; it must only say so when the data
    is wrong whatever the faults (never for a server that is merely down: that raises);

* the module path of its checks (``checks.<name>``), which :mod:`checks` loads; toolclash's core
  never imports it;
* optionally its :class:`~toolclash.targets.shape.TargetShape`: how ``--target`` points its agents and checks
  at another platform (an HTTP API, a database, a client package).

:data:`SCENARIOS` lists toolclash's own scenarios; a package may add its own through the Python entry
point group ``toolclash.scenarios`` (``name = "package.module:SCENARIO"``). Both are read lazily, on
first use, never at import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from toolclash.backend import Backend
from toolclash.option import Option, SettingsError
from toolclash.targets.shape import TargetShape

ENTRY_POINT_GROUP = "toolclash.scenarios"

SCENARIOS: dict[str, str] = {
    # scenario name -> "module:attribute" of its Scenario value; one registration line per scenario
    "credits": "toolclash.tools.credits:SCENARIO",
    "config": "toolclash.tools.config:SCENARIO",
    "deadlock": "toolclash.tools.deadlock:SCENARIO",
    "crossservice": "toolclash.tools.crossservice:SCENARIO",
    "queue": "toolclash.tools.queue:SCENARIO",
    "pool": "toolclash.tools.pool:SCENARIO",
    "workspace": "toolclash.tools.workspace:SCENARIO",
    "register": "toolclash.tools.register:SCENARIO",
    "budget": "toolclash.tools.budget:SCENARIO",
    "transfers": "toolclash.tools.transfers:SCENARIO",
}


@dataclass
class Context:
    """What a scenario's hooks get: the run's services and this scenario's settings."""

    backend: Backend
    opts: SimpleNamespace
    """The scenario's own options (attributes named as in its ``options``)."""
    strategy: str
    fault: str
    """The planted fault this scenario applies (``none`` when the run asked for one it does not know)."""
    run_dir: Path | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    """What ``finish`` returned (``snapshot`` reads it); empty before ``finish``."""

    @property
    def run_id(self) -> str:
        return self.backend.run_id


Hook = Callable[[Context], Any]


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One scenario of toolclash (see the module's documentation for the contract)."""

    name: str
    summary: str
    """One line: what the agents do and what the checks prove."""
    tools: tuple[str, ...]
    """The ``tool`` names of this scenario's operation records; its checks judge those records."""
    strategies: tuple[str, ...]
    default_strategy: str
    reset: Callable[[Context, Any], None]
    snapshot: Callable[[Context, Any], Mapping[str, Any]]
    checks: str
    """Module path of its checks (``checks.<name>``): loaded by :mod:`checks`, never by the core."""
    faults: tuple[str, ...] = ()
    """Planted faults (``--fault``); each must make one of its checks false."""
    options: tuple[Option, ...] = ()
    services: tuple[str, ...] = ("postgres",)
    """Services it needs (names of the embedded stack's services); the stack starts those not given by URL."""
    rejections: frozenset[str] = frozenset()
    """Fail reasons that are correct business answers (e.g. insufficient funds), left out of the success rate."""
    validate: Callable[[SimpleNamespace], None] | None = None
    """Checks across options (single options are checked by their declared bounds and choices)."""
    preflight: Callable[[Backend], None] | None = None
    start: Hook | None = None
    finish: Callable[[Context, Any, float], Mapping[str, Any] | None] | None = None
    target: TargetShape | None = None
    """How ``--target`` points it at another platform: its operations' arguments and its final state's tables
    (None: not targetable). See :mod:`toolclash.targets` and docs/your-platform.md."""
    invariant: Callable[[Context, Any], str | None] | None = None
    """A live invariant (``--abort-on invariant``): what is broken, or None."""

    def __post_init__(self) -> None:
        if self.default_strategy not in self.strategies:
            raise ValueError(f"scenario {self.name}: default strategy {self.default_strategy!r} is not one of "
                             f"its strategies")
        if "none" in self.faults:
            raise ValueError(f"scenario {self.name}: 'none' is not a fault name")

    def strategy_for(self, asked: str) -> str:
        """The strategy it runs when *asked* was asked for: that one if it knows it, else its default."""
        return asked if asked in self.strategies else self.default_strategy

    def fault_for(self, asked: str) -> str:
        """The fault it plants when *asked* was asked for: that one if it knows it, else ``none``."""
        return asked if asked in self.faults else "none"

    def options_from(self, values: Mapping[str, Any]) -> SimpleNamespace:
        """Its options from parsed *values* (defaults where absent), checked; :class:`SettingsError` if bad."""
        ns = SimpleNamespace(**{o.name: o.coerce(values[o.name]) if values.get(o.name) is not None else o.default
                                for o in self.options})
        if self.validate is not None:
            self.validate(ns)
        return ns

    def context(self, backend: Backend, opts: SimpleNamespace, *, strategy: str = "", fault: str = "none",
                run_dir: Path | None = None) -> Context:
        return Context(backend, opts, self.strategy_for(strategy), self.fault_for(fault), run_dir)


class _Registry(Mapping[str, Scenario]):
    """Scenario name → :class:`Scenario`: toolclash's own (:data:`SCENARIOS`) and those of installed packages
    (entry point group ``toolclash.scenarios``), loaded on first use."""

    def __init__(self) -> None:
        self._refs: dict[str, str] | None = None
        self._loaded: dict[str, Scenario] = {}

    def _names(self) -> dict[str, str]:
        if self._refs is None:
            from importlib.metadata import entry_points

            refs = dict(SCENARIOS)
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                refs.setdefault(ep.name, ep.value)
            self._refs = refs
        return self._refs

    def __getitem__(self, name: str) -> Scenario:
        found = self._loaded.get(name)
        if found is not None:
            return found
        ref = self._names()[name]
        module, _, attr = ref.partition(":")
        value = getattr(importlib.import_module(module), attr or "SCENARIO")
        if not isinstance(value, Scenario) or value.name != name:
            raise TypeError(f"{ref} is not the Scenario named {name!r}")
        self._loaded[name] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def add(self, scenario: Scenario) -> None:
        """Register *scenario* at run time (tests, or a locustfile that defines its own)."""
        self._names()[scenario.name] = f"<added>:{scenario.name}"
        self._loaded[scenario.name] = scenario


REGISTRY = _Registry()


def get(name: str) -> Scenario:
    """The scenario called *name*; :class:`SettingsError` (one line) if none is."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise SettingsError(f"unknown scenario {name!r}; known: {', '.join(REGISTRY)}") from None


def services_of(names: list[str] | tuple[str, ...]) -> list[str]:
    """The stack services the scenarios *names* need, in order, deduplicated."""
    return list(dict.fromkeys(s for name in names for s in get(name).services))
