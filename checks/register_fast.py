"""The register checks from the history's columns: first as array operations (:mod:`checks.register_numeric`, for a
history in which they find nothing to report), else the same :class:`checks.register.RegisterView` and the same two
checks, without making a Python record of every operation first (only the fields the view reads: the op id,
outcome, agent, reason, the result's JSON parsed in one call per chunk, and the arguments of the few calls that did
not succeed). The dependency graph is :func:`checks.graph.analyse`, as before.

:func:`columnar` returns None when the view cannot be built (the checks over records then say why, as always).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from checks import CheckResult, guarded, register_numeric
from checks.columns import FinalState, numpy, select
from checks.register import SPEC, TOOL, RegisterView
from toolclash import columnar as files
from toolclash.history import OK

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("toolclash.checks")


def columnar(table: pa.Table, final: FinalState, incomplete: frozenset[str]) -> list[CheckResult] | None:
    ops = select(table, (TOOL,))
    try:
        return register_numeric.judge(ops, final, incomplete)
    except register_numeric.Declined:
        pass
    except Exception:  # whatever went wrong there, the view below decides
        log.exception("the register checks as array operations failed; judging with the view")
    try:
        view = RegisterView(light_ops(ops), final.as_dict(), incomplete)
    except Exception:  # noqa: BLE001 - the checks over records say what is wrong, as they always did
        return None
    out = []
    for name, fn in SPEC.checks:
        res = guarded(name, partial(fn, view))
        if res is not None:
            out.append(res)
    return out


def light_ops(ops: pa.Table) -> list[dict[str, Any]]:
    """Each operation as a dict of the fields :class:`checks.register.RegisterView` reads."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = ops.num_rows
    ok = numpy(pc.fill_null(pc.equal(ops.column("outcome"), OK), False)) if n else np.zeros(0, bool)
    results: list[Any] = []
    for chunk in ops.column("result").chunks:
        results.extend(files.json_lines(chunk))
    others = np.flatnonzero(~ok)
    args: list[Any] = [None] * n
    if len(others):
        rest = ops.take(pa.array(others)).combine_chunks()
        for i, record in zip(others.tolist(), (r for b in rest.to_batches() for r in files.decode(b)), strict=True):
            args[i] = record["args"]
    return [{"op_id": o, "tool": TOOL, "outcome": out, "agent": a, "reason": r, "result": res, "args": arg}
            for o, out, a, r, res, arg in zip(ops.column("op_id").to_pylist(), ops.column("outcome").to_pylist(),
                                              ops.column("agent").to_pylist(), ops.column("reason").to_pylist(),
                                              results, args, strict=True)]
