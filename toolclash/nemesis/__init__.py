"""Faults on a schedule while agents run (``--nemesis``, ``--nemesis-file``): the schedule's syntax
(:mod:`.spec`), the fault kinds (:mod:`.faults`), the scheduler that applies and heals them
(:mod:`.scheduler`), the record of every fault window in ``faults.jsonl`` (:mod:`.record`), iptables in
network namespaces (:mod:`.netfilter`) and the conditions of an emergency stop (:mod:`.abort`).
Locust-free; nothing happens at import.
"""

from toolclash.nemesis.record import FILE, applied, read_faults
from toolclash.nemesis.spec import KINDS, NemesisError, Plan, load, parse

__all__ = ["FILE", "KINDS", "NemesisError", "Plan", "applied", "load", "parse", "read_faults"]
