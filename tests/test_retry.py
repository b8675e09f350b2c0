"""Retry policy: full-jitter backoff bounds, tries, deadline, and the count of every attempt.

Time is a plain callable the test advances (:class:`Clock`), and sleeping records the delay and
moves that clock on (:class:`Sleeper`): the policy's arithmetic is checked exactly, with no real
waiting and no timing assertion.
"""

from __future__ import annotations

import random

import pytest

from toolclash.retry import DEADLOCK, SERIALIZATION, VERSION_CONFLICT, Attempts, RetryPolicy


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sleeper:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.now += seconds


def attempts(policy: RetryPolicy, seed: int = 7) -> tuple[Attempts, Clock, Sleeper]:
    clock = Clock()
    sleeper = Sleeper(clock)
    return Attempts(policy, random.Random(seed), clock=clock, sleep=sleeper), clock, sleeper


def test_backoff_stays_within_full_jitter_bounds() -> None:
    policy = RetryPolicy(base_s=0.002, cap_s=0.2)
    rng = random.Random(1)
    for n in range(1, 13):
        ceiling = min(policy.cap_s, policy.base_s * 2 ** (n - 1))
        samples = [policy.backoff(n, rng) for _ in range(300)]
        assert all(0.0 <= s <= ceiling for s in samples), n
        # full jitter uses the whole range, not just its bottom
        assert max(samples) > 0.8 * ceiling, n
    assert policy.base_s * 2 ** (12 - 1) > policy.cap_s  # the cap was reached above


def test_backoff_of_a_huge_retry_number_is_capped() -> None:
    policy = RetryPolicy(base_s=0.002, cap_s=0.2)
    rng = random.Random(3)
    assert all(0.0 <= policy.backoff(10_000, rng) <= 0.2 for _ in range(100))


def test_backoff_is_deterministic_for_a_seed() -> None:
    policy = RetryPolicy()
    first = [policy.backoff(n, random.Random(42)) for n in range(1, 10)]
    again = [policy.backoff(n, random.Random(42)) for n in range(1, 10)]
    other = [policy.backoff(n, random.Random(43)) for n in range(1, 10)]
    assert first == again
    assert first != other


def test_gives_up_after_max_tries_and_counts_by_cause() -> None:
    policy = RetryPolicy(max_tries=4, base_s=0.01, cap_s=0.05, deadline_s=60.0)
    att, _, sleeper = attempts(policy, seed=11)
    causes = iter([SERIALIZATION, DEADLOCK, SERIALIZATION, SERIALIZATION])
    sqlstates = {SERIALIZATION: "40001", DEADLOCK: "40P01"}
    ran = 0
    while att.next():
        ran += 1
        cause = next(causes)
        if att.conflict(cause, sqlstates[cause]):
            continue
        break
    assert ran == 4
    assert att.count == 4
    assert att.gave_up == "retries-exhausted"
    assert dict(att.retries) == {SERIALIZATION: 3, DEADLOCK: 1}
    assert att.conflicts == 4
    assert att.sqlstates == ["40001", "40P01", "40001", "40001"]
    # a sleep before each of the three retries, the same draws as the policy with the same seed
    replay = random.Random(11)
    assert sleeper.delays == [policy.backoff(n, replay) for n in (1, 2, 3)]
    assert att.backoff_s == pytest.approx(sum(sleeper.delays))
    assert not att.next()  # no fifth attempt


def test_success_on_a_retry_stops_counting() -> None:
    att, _, sleeper = attempts(RetryPolicy(max_tries=5, deadline_s=60.0))
    assert att.next()
    assert att.conflict(VERSION_CONFLICT)
    assert att.next()  # second attempt succeeds; the caller stops here
    assert (att.count, att.conflicts, att.gave_up) == (2, 1, None)
    assert dict(att.retries) == {VERSION_CONFLICT: 1}
    assert att.sqlstates == []
    assert len(sleeper.delays) == 1
    assert att.backoff_s == pytest.approx(sleeper.delays[0])


def test_gives_up_when_the_next_sleep_would_cross_the_deadline() -> None:
    policy = RetryPolicy(max_tries=10, base_s=0.5, cap_s=0.5, deadline_s=1.0)
    delay = policy.backoff(1, random.Random(5))  # the first draw of seed 5
    assert delay > 0
    att, clock, sleeper = attempts(policy, seed=5)
    assert att.next()
    clock.now += 1.0 - delay / 2  # the attempt took so long that sleeping `delay` would end past the deadline
    assert att.conflict(SERIALIZATION, "40001") is False
    assert att.gave_up == "deadline"
    assert sleeper.delays == []
    assert att.backoff_s == 0.0
    assert att.conflicts == 1


def test_sleeps_when_the_next_sleep_ends_before_the_deadline() -> None:
    policy = RetryPolicy(max_tries=10, base_s=0.5, cap_s=0.5, deadline_s=1.0)
    delay = policy.backoff(1, random.Random(5))
    att, clock, sleeper = attempts(policy, seed=5)
    assert att.next()
    clock.now += 1.0 - delay - 1e-6
    assert att.conflict(SERIALIZATION, "40001") is True
    assert att.gave_up is None
    assert sleeper.delays == [delay]
    assert att.backoff_s == delay


def test_deadline_counts_backoff_already_spent() -> None:
    # every retry sleeps up to 0.4 s; with a 1 s budget the sleeps themselves exhaust it
    policy = RetryPolicy(max_tries=100, base_s=0.4, cap_s=0.4, deadline_s=1.0)
    att, clock, sleeper = attempts(policy, seed=2)
    while att.next():
        if not att.conflict(DEADLOCK, "40P01"):
            break
    assert att.gave_up == "deadline"
    assert att.count < 100
    assert clock.now - 1000.0 == pytest.approx(sum(sleeper.delays))
    assert sum(sleeper.delays) <= policy.deadline_s
    assert att.backoff_s == pytest.approx(sum(sleeper.delays))
    assert att.retries[DEADLOCK] == att.count
