"""The register checks from the history's columns against the same checks over Python records: the same verdict."""

from __future__ import annotations

from typing import Any


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
