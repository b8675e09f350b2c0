"""Targets: point a scenario's agents and checks at your own platform instead of toolclash's reference tools.

``--target FILE.toml`` (HTTP requests or SQL statements, :mod:`.spec`) or ``--target python:<module>`` (a client
module of yours, :mod:`.pyclient`). A scenario is targetable when it declares ``Scenario.target``
(:class:`.shape.TargetShape`); :func:`.lifecycle.apply` gives it the target's hooks. See docs/your-platform.md.

Client modules import :class:`Rejected` and :class:`NotApplied` from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from toolclash.targets.pyclient import PREFIX as PYTHON_PREFIX
from toolclash.targets.pyclient import NotApplied, PythonTarget, Rejected
from toolclash.targets.shape import Table, TargetShape
from toolclash.targets.spec import FileTarget, TargetError

Target = FileTarget | PythonTarget

__all__ = ["FileTarget", "NotApplied", "PythonTarget", "Rejected", "Table", "Target", "TargetError", "TargetShape",
           "load"]


def load(source: str, scenarios: Sequence[str], data: Mapping[str, Any] | None = None) -> Target:
    """The target *source* names (a TOML file, or ``python:<module>``) for the run's *scenarios*, checked.

    *data*: the file's content already read and resolved (a worker gets it from the master; the file need
    not exist on its host). :class:`TargetError` (one line: file, key, fix) when it does not fit.
    """
    from toolclash.scenario import get
    from toolclash.targets import pyclient, spec

    if source.startswith(PYTHON_PREFIX):
        target: Target = pyclient.load(source, tuple(scenarios))
    else:
        raw = dict(data) if data is not None else spec.read_file(source)
        shapes = {}
        for name in scenarios:
            sc = get(name)
            shapes[name] = (sc.target, tuple(o.name for o in sc.options))
        target = spec.parse(source, raw, shapes)
    for name in scenarios:
        if get(name).target is None:
            raise TargetError(f"--target: scenario {name} cannot be pointed at another platform yet; targetable "
                              "scenarios declare Scenario.target (see docs/your-platform.md)")
    return target
