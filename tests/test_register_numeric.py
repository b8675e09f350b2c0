"""The register checks as array operations (:mod:`checks.register_numeric`, via :func:`checks.register_fast.columnar`)
against the checks over Python records (:func:`checks.register.check_all`), on random register histories with
anomalies of every kind planted (G0, G1a, G1b, G1c, G-single, G2-item, lost update, internal, garbage read), in-doubt
calls that did or did not commit, failed calls whose writes were logged, log rows nobody recorded, acknowledged
writes missing from the log, values logged twice, final values that are not the last logged, a transaction's writes
of a key split in the log, incomplete processes, and data of other shapes: the same verdicts, counts and evidence,
in the same order. The array path answers only when there is nothing to report, so the test also counts how often
it answered."""

from __future__ import annotations

import random
from typing import Any

import orjson

from checks import register as rc
from checks import register_fast, register_numeric
from checks.columns import FinalState, table_of_records
from toolclash.history import FAIL, OK, UNKNOWN, make_op

RUN_ID = "t-register-numeric"
PROCESSES = ("p1", "p2", "host-a-w1")
PLANTS = ("stale", "aborted_read", "intermediate_read", "garbage", "internal", "lost_update", "swap", "failed_logged",
          "phantom", "missing", "duplicate_value", "final", "split", "odd_shape", "string_key", "incomplete",
          "doubt_reads")
LEVELS = ("serializable", "repeatable_read", "read_committed")


def history(rng: random.Random, plants: frozenset[str]) -> tuple[list[dict[str, Any]], dict[str, Any], frozenset[str]]:
    """A serial execution of register transactions with *plants* disturbing it."""
    keys = rng.randint(1, 4)
    value: dict[int, str | None] = dict.fromkeys(range(1, keys + 1))
    written: dict[int, list[str]] = {k: [] for k in value}  # every version of each key, in order
    aborted_values: list[tuple[int, str]] = []
    ops: list[dict[str, Any]] = []
    log: list[list[Any]] = []
    seq = dict.fromkeys(PROCESSES, 0)
    for _ in range(rng.randint(0, 25)):
        process = rng.choice(PROCESSES)
        seq[process] += 1
        op_id = f"{process}-{seq[process]}"
        planned = [["r" if rng.random() < 0.5 else "w", rng.randint(1, keys), None] for _ in range(rng.randint(0, 5))]
        local: dict[int, str] = {}
        done: list[list[Any]] = []
        for j, (f, k, _) in enumerate(planned):
            if f == "r":
                seen = local.get(k, value[k])
                if "stale" in plants and written[k] and rng.random() < 0.3:
                    seen = rng.choice([None, *written[k]])  # an older version: read skew, write skew, cycles
                if "aborted_read" in plants and aborted_values and rng.random() < 0.2:
                    k, seen = rng.choice(aborted_values)
                if "garbage" in plants and rng.random() < 0.05:
                    seen = "nobody-1:0"
                if "internal" in plants and k in local and rng.random() < 0.3:
                    seen = value[k]
                done.append(["r", k, seen])
            else:
                local[k] = f"{op_id}:{j}"
                done.append(["w", k, local[k]])
        r = rng.random()
        outcome = OK if r < 0.8 else FAIL if r < 0.9 else UNKNOWN
        commit = outcome == OK or (outcome == UNKNOWN and rng.random() < 0.5)
        if "lost_update" in plants and commit and any(f == "w" for f, _, _ in done) and rng.random() < 0.3:
            k = next(k for f, k, _ in done if f == "w")
            if written[k]:
                done.insert(0, ["r", k, written[k][-2] if len(written[k]) > 1 else None])
        if commit:
            rows = [[len(log) + 1, k, v, op_id] for f, k, v in done if f == "w"]
            log.extend(rows)
            for f, k, v in done:
                if f == "w":
                    written[k].append(v)
            value.update(local)
        else:
            aborted_values.extend((k, v) for f, k, v in done if f == "w")
        if "intermediate_read" in plants and rng.random() < 0.2 and any(len(w) > 1 for w in written.values()):
            k = rng.choice([k for k, w in written.items() if len(w) > 1])
            done.append(["r", k, written[k][-2]])  # a version its writer may have overwritten in one transaction
        result = {"txn": done} if outcome != UNKNOWN else {}
        reason = "aborted-by-agent" if outcome == FAIL else "interrupted" if outcome == UNKNOWN else None
        ops.append(make_op(run_id=RUN_ID, op_id=op_id, process=process, agent=f"{process}-a{seq[process] % 3}",
                           tool=rc.TOOL, strategy="serializable", args={"txn": planned}, invoke_ts=1.0e9 + len(ops),
                           complete_ts=1.0e9 + len(ops) + 0.5, outcome=outcome, attempts=1, reason=reason,
                           result=result))
    if log and "swap" in plants:
        for _ in range(rng.randint(1, 3)):
            i, j = rng.randrange(len(log)), rng.randrange(len(log))
            log[i][2], log[j][2] = log[j][2], log[i][2]  # versions installed in another order: G0, G1c …
            log[i][3], log[j][3] = log[j][3], log[i][3]
    failed = [op for op in ops if op["outcome"] == FAIL and op["result"]["txn"]]
    if failed and "failed_logged" in plants:
        op = rng.choice(failed)
        log.extend([len(log) + 1, k, v, op["op_id"]] for f, k, v in op["result"]["txn"] if f == "w")
    if "phantom" in plants:
        log.append([len(log) + 1, 1, "stranger-1:0", rng.choice(["stranger-1", "p1-999"])])
    if log and "missing" in plants:
        del log[rng.randrange(len(log))]
    if log and "duplicate_value" in plants:
        row = rng.choice(log)
        log.append([len(log) + 1, row[1], row[2], row[3]])
    if log and "split" in plants:
        row = rng.choice(log)
        log.append([len(log) + 1, row[1], f"{row[3]}:9", row[3]])  # the same writer later again: _installed
    if log and "string_key" in plants:
        rng.choice(log)[1] = "1"
    if ops and "odd_shape" in plants:
        op = rng.choice(ops)
        op["result"] = rng.choice([{"txn": [["x", 1, None]]}, {"txn": None}, {"txn": [["r", 1.0, None]]},
                                   {"txn": [["w", 1, 'a"b\\c']]}, {"txn": [["r", 1, "é"]]}, {"other": 1},
                                   {"txn": [["r", -1, None]]}, {"txn": []}, {"txn": [["w", 1, None]]}])
    if ops and "doubt_reads" in plants:
        op = rng.choice(ops)
        op["outcome"], op["result"] = UNKNOWN, {}
    registers = [[k, value[k]] for k in sorted(value)]
    if "final" in plants and registers:
        rng.choice(registers)[1] = "someone-1:0"
    incomplete = frozenset({rng.choice([*PROCESSES, "stranger"])}) if "incomplete" in plants else frozenset()
    final = {"isolation": {"level": rng.choice(LEVELS), "expect": rng.choice(["", "", "serializable"])},
             "registers": registers, "register_log": log}
    return ops, final, incomplete


def _dumps(results: list[Any]) -> list[bytes]:
    return [orjson.dumps(r.to_dict(), option=orjson.OPT_NON_STR_KEYS) for r in results]


def test_array_checks_equal_the_checks_over_records() -> None:
    answered = declined = 0
    rng = random.Random(20261130)
    for case in range(1500):
        plants = frozenset(rng.sample(PLANTS, rng.choice([0, 0, 0, 1, 1, 2, 3])))
        ops, final, incomplete = history(rng, plants)
        ref = rc.check_all(ops, final, incomplete)
        table = table_of_records(ops)
        fast = register_fast.columnar(table, FinalState.of(final), incomplete)
        if fast is None:  # the view could not be built: the verdict judges over records, as the reference does
            fast = ref
        assert _dumps(fast) == _dumps(ref), (case, sorted(plants))
        try:
            register_numeric.judge(table, FinalState.of(final), incomplete)
            answered += 1
        except register_numeric.Declined:
            declined += 1
        except Exception:  # noqa: BLE001 - the view's own failures (e.g. a key that is not a number)
            declined += 1
    assert answered > 400 and declined > 400, (answered, declined)


def test_a_clean_history_is_judged_by_the_array_path() -> None:
    rng = random.Random(7)
    ops, final, _ = history(rng, frozenset())
    while sum(op["outcome"] == OK for op in ops) < 5:
        ops, final, _ = history(rng, frozenset())
    got = register_numeric.judge(table_of_records(ops), FinalState.of(final), frozenset())
    assert _dumps(got) == _dumps(rc.check_all(ops, final))
    assert got[1].counts["transactions"] >= 5


def test_each_anomaly_sends_the_history_to_the_view() -> None:
    """One transaction pair per anomaly class, as the graph's own tests write them: the array path declines, the
    checks over records name it, and the columnar path gives exactly their result."""
    def op(n: int, txn: list[list[Any]], outcome: str = OK) -> dict[str, Any]:
        return make_op(run_id=RUN_ID, op_id=f"p1-{n}", process="p1", agent="p1-a1", tool=rc.TOOL,
                       strategy="serializable", args={"txn": [[f, k, None] for f, k, _ in txn]}, invoke_ts=1.0e9 + n,
                       complete_ts=1.0e9 + n + 0.5, outcome=outcome, attempts=1, result={"txn": txn})

    cases = {
        "G0": ([op(1, [["w", 1, "p1-1:0"], ["w", 2, "p1-1:1"]]), op(2, [["w", 1, "p1-2:0"], ["w", 2, "p1-2:1"]])],
               [[1, 1, "p1-1:0", "p1-1"], [2, 1, "p1-2:0", "p1-2"], [3, 2, "p1-2:1", "p1-2"],
                [4, 2, "p1-1:1", "p1-1"]], {1: "p1-2:0", 2: "p1-1:1"}),
        "G1a": ([op(1, [["w", 1, "p1-1:0"]], FAIL), op(2, [["r", 1, "p1-1:0"]])], [], {1: None}),
        "G1b": ([op(1, [["w", 1, "p1-1:0"], ["w", 1, "p1-1:1"]]), op(2, [["r", 1, "p1-1:0"]])],
                [[1, 1, "p1-1:0", "p1-1"], [2, 1, "p1-1:1", "p1-1"]], {1: "p1-1:1"}),
        "G1c": ([op(1, [["w", 1, "p1-1:0"], ["r", 2, "p1-2:0"]]), op(2, [["w", 2, "p1-2:0"], ["r", 1, "p1-1:0"]])],
                [[1, 1, "p1-1:0", "p1-1"], [2, 2, "p1-2:0", "p1-2"]], {1: "p1-1:0", 2: "p1-2:0"}),
        "G-single": ([op(1, [["r", 1, None], ["r", 2, "p1-2:1"]]), op(2, [["w", 1, "p1-2:0"], ["w", 2, "p1-2:1"]])],
                     [[1, 1, "p1-2:0", "p1-2"], [2, 2, "p1-2:1", "p1-2"]], {1: "p1-2:0", 2: "p1-2:1"}),
        "G2-item": ([op(1, [["r", 1, None], ["w", 2, "p1-1:1"]]), op(2, [["r", 2, None], ["w", 1, "p1-2:1"]])],
                    [[1, 2, "p1-1:1", "p1-1"], [2, 1, "p1-2:1", "p1-2"]], {1: "p1-2:1", 2: "p1-1:1"}),
        "lost-update": ([op(1, [["r", 1, None], ["w", 1, "p1-1:1"]]), op(2, [["r", 1, None], ["w", 1, "p1-2:1"]])],
                        [[1, 1, "p1-1:1", "p1-1"], [2, 1, "p1-2:1", "p1-2"]], {1: "p1-2:1"}),
        "internal": ([op(1, [["w", 1, "p1-1:0"], ["r", 1, None]])], [[1, 1, "p1-1:0", "p1-1"]], {1: "p1-1:0"}),
        "garbage-read": ([op(1, [["r", 1, "nobody-1:0"]])], [], {1: None}),
    }
    for anomaly, (ops, log, registers) in cases.items():
        final = {"isolation": {"level": "serializable", "expect": ""}, "register_log": log,
                 "registers": [[k, v] for k, v in registers.items()]}
        ref = rc.check_all(ops, final)
        assert ref[1].counts["anomalies"][anomaly] >= 1, (anomaly, ref[1].counts)
        table = table_of_records(ops)
        try:
            register_numeric.judge(table, FinalState.of(final), frozenset())
            raise AssertionError(f"{anomaly}: the array path did not decline")
        except register_numeric.Declined:
            pass
        fast = register_fast.columnar(table, FinalState.of(final), frozenset())
        assert fast is not None and _dumps(fast) == _dumps(ref), anomaly
