"""Rendezvous of a deadlock cycle group inside one Locust process (gevent; imports no Locust)."""

from __future__ import annotations

import itertools

import gevent.event


class GroupBarrier:
    """The rendezvous of one cycle group's members, reused round after round.

    ``go``: released when every current member has arrived. ``locked``: released when every member
    that the last ``go`` released has arrived (an agent that joins mid-round waits at the next ``go``).
    A member that stops leaves, which may release the others.
    """

    def __init__(self) -> None:
        self.members: set[str] = set()
        self.in_round: set[str] = set()
        self.round = 0
        """Rounds released so far: members read it right after ``go`` to name their common round."""
        self.arrived: dict[str, set[str]] = {"go": set(), "locked": set()}
        self.events: dict[str, gevent.event.Event] = {"go": gevent.event.Event(), "locked": gevent.event.Event()}

    def join(self, agent: str) -> None:
        self.members.add(agent)

    def leave(self, agent: str) -> None:
        self.members.discard(agent)
        self.in_round.discard(agent)
        for phase in ("go", "locked"):
            self.arrived[phase].discard(agent)
            self._maybe_release(phase)

    def _expected(self, phase: str) -> set[str]:
        return self.members if phase == "go" else self.in_round & self.members

    def _maybe_release(self, phase: str) -> None:
        arrived = self.arrived[phase]
        if arrived and arrived >= self._expected(phase):
            if phase == "go":
                self.in_round = set(arrived)
                self.round += 1
            event = self.events[phase]
            self.events[phase], self.arrived[phase] = gevent.event.Event(), set()
            event.set()

    def wait(self, phase: str, agent: str, timeout: float) -> bool:
        """Wait until the group is there; False on timeout (the agent goes on alone)."""
        event = self.events[phase]
        self.arrived[phase].add(agent)
        self._maybe_release(phase)
        if event.wait(timeout):
            return True
        self.arrived[phase].discard(agent)
        return False


_groups: dict[tuple[str, int], GroupBarrier] = {}
"""This process's cycle groups, by (run id, group)."""
_indexes: dict[str, itertools.count[int]] = {}
"""Per run: the next deadlock agent's 1-based index in this process (other agent classes don't count)."""


def next_index(run_id: str) -> int:
    for key in [k for k in _indexes if k != run_id]:
        del _indexes[key]
    return next(_indexes.setdefault(run_id, itertools.count(1)))


def group_barrier(run_id: str, group: int) -> GroupBarrier:
    for key in [k for k in _groups if k[0] != run_id]:  # a new run from the web UI: forget the old groups
        del _groups[key]
    return _groups.setdefault((run_id, group), GroupBarrier())
