"""The dependency-graph checker on tiny hand-written histories: a handful of transactions, one anomaly each.

A history is committed transactions ``(op id, [(f, key, value), …])`` and, per key, the installed versions
``[(value, writer), …]`` oldest first; every key starts at None.
"""

from __future__ import annotations

from typing import Any

from checks.graph import ANOMALIES, analyse, isolation_check


def found(committed: list[Any], versions: dict[str, list[tuple[Any, str]]], **kw: Any) -> dict[str, int]:
    return analyse(committed, versions, **kw).found()


def test_a_serial_history_has_no_anomaly() -> None:
    committed = [("T1", [("w", "x", 1), ("w", "y", 1)]),
                 ("T2", [("r", "x", 1), ("w", "x", 2)]),
                 ("T3", [("r", "x", 2), ("r", "y", 1)])]
    a = analyse(committed, {"x": [(1, "T1"), (2, "T2")], "y": [(1, "T1")]})
    assert a.found() == {} and a.edges > 0 and a.cyclic_components == 0


def test_g0_write_cycle() -> None:
    committed = [("T1", [("w", "x", 1), ("w", "y", 1)]),
                 ("T2", [("w", "x", 2), ("w", "y", 2)])]
    a = analyse(committed, {"x": [(1, "T1"), (2, "T2")], "y": [(2, "T2"), (1, "T1")]})
    assert a.found() == {"G0": 1}
    cycle = a.examples["G0"][0]["cycle"]
    assert {s["op_id"] for s in cycle} == {"T1", "T2"} and {s["edge"] for s in cycle} == {"ww"}


def test_g1a_aborted_read() -> None:
    committed = [("T2", [("r", "x", 1)])]
    assert found(committed, {}, aborted=[("T1", [("w", "x", 1)])]) == {"G1a": 1}


def test_g1b_intermediate_read() -> None:
    committed = [("T1", [("w", "x", 1), ("w", "x", 2)]), ("T2", [("r", "x", 1)])]
    assert found(committed, {"x": [(1, "T1"), (2, "T1")]}) == {"G1b": 1}


def test_g1c_cyclic_information_flow() -> None:
    committed = [("T1", [("w", "x", 1), ("r", "y", 1)]),
                 ("T2", [("w", "y", 1), ("r", "x", 1)])]
    a = analyse(committed, {"x": [(1, "T1")], "y": [(1, "T2")]})
    assert a.found() == {"G1c": 1}
    assert [s["edge"] for s in a.examples["G1c"][0]["cycle"]] == ["wr", "wr"]


def test_g_single_read_skew() -> None:
    committed = [("T1", [("r", "x", None), ("r", "y", 1)]),
                 ("T2", [("w", "x", 1), ("w", "y", 1)])]
    a = analyse(committed, {"x": [(1, "T2")], "y": [(1, "T2")]})
    assert a.found() == {"G-single": 1}
    cycle = a.examples["G-single"][0]["cycle"]
    assert sorted(s["edge"] for s in cycle) == ["rw", "wr"]
    assert "read x=None" in next(s["because"] for s in cycle if s["edge"] == "rw")


def test_g2_item_write_skew() -> None:
    committed = [("T1", [("r", "x", None), ("r", "y", None), ("w", "x", 1)]),
                 ("T2", [("r", "x", None), ("r", "y", None), ("w", "y", 2)])]
    a = analyse(committed, {"x": [(1, "T1")], "y": [(2, "T2")]})
    assert a.found() == {"G2-item": 1}
    assert [s["edge"] for s in a.examples["G2-item"][0]["cycle"]] == ["rw", "rw"]


def test_lost_update_is_also_a_g_single_cycle() -> None:
    committed = [("T1", [("r", "x", None), ("w", "x", 1)]),
                 ("T2", [("r", "x", None), ("w", "x", 2)])]
    a = analyse(committed, {"x": [(1, "T1"), (2, "T2")]})
    assert a.found() == {"lost-update": 1, "G-single": 1}
    assert [o["op_id"] for o in a.examples["lost-update"][0]["ops"]] == ["T1", "T2"]


def test_internal_and_garbage_reads() -> None:
    committed = [("T1", [("w", "x", 1), ("r", "x", 7)]), ("T2", [("r", "y", 99)])]
    assert found(committed, {"x": [(1, "T1")]}) == {"internal": 1, "garbage-read": 1}


def test_the_claimed_level_decides_what_fails() -> None:
    committed = [("T1", [("r", "x", None), ("r", "y", None), ("w", "x", 1)]),
                 ("T2", [("r", "x", None), ("r", "y", None), ("w", "y", 2)])]
    a = analyse(committed, {"x": [(1, "T1")], "y": [(2, "T2")]})
    at_rr = isolation_check("t.isolation", a, "repeatable_read", "")
    assert at_rr.valid is True and at_rr.counts["expected"] == "snapshot-isolation"
    assert at_rr.counts["allowed"] == {"G2-item": 1} and at_rr.evidence  # reported, not failed
    strict = isolation_check("t.isolation", a, "repeatable_read", "serializable")
    assert strict.valid is False and strict.counts["prohibited"] == {"G2-item": 1}
    assert {s["op_id"] for s in strict.evidence[0]["cycle"]} == {"T1", "T2"}
    assert "G2-item" in strict.summary
    assert set(a.counts) == set(ANOMALIES)


def test_a_long_chain_is_linear_and_acyclic() -> None:
    n = 20_000
    committed = [(f"T{i}", [("r", "x", i - 1 if i else None), ("w", "x", i)]) for i in range(n)]
    a = analyse(committed, {"x": [(i, f"T{i}") for i in range(n)]})
    assert a.found() == {} and a.edges == 2 * (n - 1)


def test_reading_a_key_twice_before_writing_it_is_no_lost_update() -> None:
    committed = [("T1", [("r", "x", None), ("r", "x", None), ("w", "x", 1)]), ("T2", [("r", "x", 1), ("w", "x", 2)])]
    assert found(committed, {"x": [(1, "T1"), (2, "T2")]}) == {}
