"""``make chaos``: a known-bad strategy under loss and a partition between real hosts (network namespaces, as in
tests/test_multihost.py, whose lab this uses), still caught."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_multihost import Lab, _faulty_run


def test_a_known_bad_strategy_is_caught_under_loss_and_a_partition(lab: Lab, remote_database: str,
                                                                  tmp_path: Path) -> None:
    code, out, err = _faulty_run(lab, remote_database, tmp_path, "bad", "loss worker1-postgres 20% at 1s for 1.5s; "
                                 "partition worker2-master at 3s for 1.5s", strategy="naive",
                                 load=("--profile", "stress"))
    assert code == 1, f"{code}\n{out[-3000:]}\n{err[-3000:]}"
    verdict = json.loads((tmp_path / "bad" / "checks.json").read_text())
    assert next(c for c in verdict["checks"] if c["name"] == "credits.lost_updates")["valid"] is False
    assert sorted(f["kind"] for f in verdict["faults"]) == ["loss", "partition"]
    assert all(f["healed"] for f in verdict["faults"])
