""":func:`checks.graph_fast.analyse_fast` against :func:`checks.graph.analyse` on random histories: the same
anomalies, examples, edges and components (serial histories, and ones with lost updates, write cycles, read skew,
aborted, intermediate, internal and garbage reads planted at random)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checks.graph import analyse
from checks.graph_fast import analyse_fast

KEYS = (1, 2, 3, "x")


@st.composite
def histories(draw: Any) -> tuple[list[Any], dict[Any, list[Any]], list[Any], Any]:
    """Transactions run one after the other, then disturbed: reads of older versions, writes installed out of
    order, aborted and intermediate values read, values nobody wrote."""
    value: dict[Any, Any] = dict.fromkeys(KEYS)
    installed: dict[Any, list[tuple[Any, str]]] = {k: [] for k in KEYS}
    committed: list[Any] = []
    aborted: list[Any] = []
    for t in range(draw(st.integers(0, 25))):
        op_id = f"T{t}"
        mops: list[Any] = []
        local: dict[Any, Any] = {}
        for j in range(draw(st.integers(1, 5))):
            k = draw(st.sampled_from(KEYS))
            if draw(st.booleans()):
                v = f"{op_id}:{j}"
                local[k] = v
                mops.append(("w", k, v))
                continue
            seen = local.get(k, value[k])
            how = draw(st.integers(0, 12))
            if how == 0 and installed[k]:
                seen = draw(st.sampled_from(installed[k]))[0]  # an older version: lost update, read skew
            elif how == 1:
                seen = f"garbage-{j}"
            elif how == 2 and any(w for _, w in aborted):
                seen = draw(st.sampled_from([w for _, ws in aborted for w in ws]))[2]  # an aborted write
            elif how == 3 and k in local:
                seen = "not-my-write"  # internal
            mops.append(["r", k, seen] if draw(st.booleans()) else ("r", k, seen))
        if draw(st.integers(0, 6)) == 0:
            aborted.append((op_id, [m for m in mops if m[0] == "w"]))
            continue
        committed.append((op_id, mops))
        for f, k, v in mops:
            if f == "w":
                installed[k].append((v, op_id))  # every write, intermediate ones included
        value.update(local)
    versions = {}
    for k, rows in installed.items():
        if rows and draw(st.integers(0, 5)) == 0:
            rows = draw(st.permutations(rows))  # installed in another order than committed: cycles
        if rows or draw(st.booleans()):
            versions[k] = list(rows)
    if committed and draw(st.integers(0, 4)) == 0:
        committed = draw(st.permutations(committed))
    return committed, versions, aborted, draw(st.sampled_from([None, 0]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.booleans())
def test_analyse_fast_equals_analyse(case: Any, describe: bool) -> None:
    committed, versions, aborted, initial = case
    describe_fn = (lambda op_id: {"agent": f"a-{op_id}"}) if describe else None
    slow = analyse(committed, versions, initial=initial, aborted=aborted, describe=describe_fn)
    fast = analyse_fast(committed, versions, initial=initial, aborted=aborted, describe=describe_fn)
    assert (fast.counts, dict(fast.examples), fast.graph_figures()) == (slow.counts, dict(slow.examples),
                                                                        slow.graph_figures())


def test_a_history_it_cannot_read_goes_to_analyse() -> None:
    """A micro-operation that is not a triple: the same error as analyse's (the check then says unknown)."""
    committed = [("T1", [("w", "x", 1, "extra")])]
    with pytest.raises(ValueError, match="too many values to unpack"):
        analyse_fast(committed, {})


def test_register_verdict_from_columns_equals_the_verdict_over_records(tmp_path: Any) -> None:
    """Synthetic register runs (the bench's generator: a serial execution, aborts, in-doubt calls), then disturbed
    (log rows swapped, dropped, added; a process's history cut short): judged from columns and over records, the
    same verdict."""
    import random

    import orjson

    from bench.isolation import generate
    from checks.verdict import evaluate
    from toolclash.run import read_json, write_json

    for seed in range(6):
        run = generate(tmp_path / str(seed), ops=300, keys=5, seed=seed, say=lambda _: None)
        rng = random.Random(seed)
        final = read_json(run / "final" / "register.json")
        log = final["register_log"]
        for _ in range(seed):
            i, j = rng.randrange(len(log)), rng.randrange(len(log))
            log[i][2], log[j][2] = log[j][2], log[i][2]  # values installed in another order: cycles, G1b …
        if seed % 2:
            del log[rng.randrange(len(log))]
            log.append([len(log) + 10, 1, "stranger-1:0", "stranger-1"])
        if seed == 5:
            (run / "history" / "synth-2.done.json").unlink()
        write_json(run / "final" / "register.json", final)
        fast = evaluate(run)
        assert orjson.dumps(fast) == orjson.dumps(evaluate(run, columnar=False))
        assert seed == 0 or fast["exit_code"] != 0
