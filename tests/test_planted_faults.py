"""docs/planted-faults.md is the one table of planted faults: it must cover every fault every registered scenario
declares, name a test that exists and asserts the check it claims, and name every check of every scenario.

No server runs here: the table, the registry and the test sources are read.
"""

from __future__ import annotations

import ast
import importlib
import re
from functools import cache
from pathlib import Path

from toolclash import scenario

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "planted-faults.md"
RUN_WIDE = ("server.sessions", "server.prepared")
"""Checks every run gets, beside its scenarios' own."""
NEVER_FALSE = ("history.complete", "history.op_ids")
"""Checks that can only be true or unknown (a lost or broken history is never an anomaly)."""


def rows() -> list[dict[str, str]]:
    out = []
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("scenario", "---"):
            continue
        out.append(dict(zip(("scenario", "fault", "what", "caught_by", "test"), cells, strict=True)))
    return out


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


@cache
def functions(path: Path) -> dict[str, str]:
    source = path.read_text()
    return {node.name: ast.get_source_segment(source, node) or ""
            for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)}


def test_the_page_has_rows() -> None:
    assert len(rows()) >= 30, rows()


def test_every_declared_fault_of_every_registered_scenario_has_a_row() -> None:
    covered = {(r["scenario"], f.split()[1]) for r in rows() for f in ticked(r["fault"]) if f.startswith("--fault ")}
    declared = {(name, fault) for name in scenario.REGISTRY for fault in scenario.REGISTRY[name].faults}
    assert declared - covered == set(), f"faults without a row in {PAGE.name}: {sorted(declared - covered)}"
    assert covered - declared == set(), f"rows of faults no scenario declares: {sorted(covered - declared)}"


def test_every_rows_test_exists_and_asserts_the_checks_it_claims() -> None:
    for row in rows():
        (target,) = ticked(row["test"])
        file, _, rest = target.partition("::")
        name, _, param = rest.partition("[")
        path = ROOT / file
        assert path.is_file(), f"{row['fault']}: no test file {file}"
        found = functions(path)
        assert name in found, f"{row['fault']}: {file} has no test {name}"
        source = found[name]
        if param:  # a parametrized case: its id and its claims live in the module's parameter list
            source = path.read_text()
            assert f'"{param.rstrip("]")}"' in source, f"{row['fault']}: {file} has no case {param.rstrip(']')}"
        for claim in ticked(row["caught_by"]):
            assert f'"{claim}"' in source, f"{row['fault']}: {target} does not assert {claim}"


def test_every_check_of_every_scenario_is_caught_by_some_planted_fault() -> None:
    caught = {c for r in rows() for c in ticked(r["caught_by"])}
    names = set(RUN_WIDE)
    for name in scenario.REGISTRY:
        names.update(importlib.import_module(scenario.REGISTRY[name].checks).SPEC.names)
    assert names - caught == set(), f"checks no planted fault is shown to catch: {sorted(names - caught)}"
    assert not caught & set(NEVER_FALSE)
