"""The stale judge times a heartbeat that stopped changing on its own clock; the heartbeat's
value (whoever's clock wrote it) is never compared with a time."""

from __future__ import annotations

from datetime import datetime, timedelta

from search.study.storage import StaleJudge


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_heartbeat_unchanged_for_the_grace_period_is_stale_whatever_its_time_says():
    clock = Clock()
    judge = StaleJudge(grace_s=3, clock=clock)
    past = datetime(2001, 1, 1)  # a worker whose clock is far behind: looks long dead
    future = datetime(2100, 1, 1)  # one far ahead: would look alive for a century
    assert judge.stale({1: past, 2: future}) == []  # first sight: the clock starts
    for step in range(1, 10):  # trial 1 beats every second; trial 2's worker is gone
        clock.now += 1
        stale = judge.stale({1: past + timedelta(seconds=step), 2: future})
        assert stale == ([2] if step > 3 else [])
    assert judge.stale({1: past + timedelta(seconds=20)}) == []  # trial 2 finished: forgotten
    clock.now += 10
    assert judge.stale({1: past + timedelta(seconds=20), 2: future}) == [1]  # 2: seen anew
