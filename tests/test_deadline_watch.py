"""The batches' deadline timer (ratelimit/deadline_watch.py), on a real event loop: each piece
of work expires at its own deadline, never at an earlier one's, and a run of work done in time
arms one timer, not one each."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ratelimit.deadline_watch import DeadlineWatch


async def test_work_expires_at_its_own_deadline_after_earlier_work_done_in_time() -> None:
    loop = asyncio.get_running_loop()
    watch = DeadlineWatch()
    expired: list[tuple[str, float]] = []
    start = loop.time()
    watch.watch(start + 0.05, lambda: expired.append(("first", loop.time())))
    watch.clear()  # done in time
    await asyncio.sleep(0.02)
    second = loop.time() + 0.10
    watch.watch(second, lambda: expired.append(("second", loop.time())))
    await asyncio.sleep(0.2)
    assert [name for name, _ in expired] == ["second"]
    assert expired[0][1] >= second - 0.002  # the loop's clock resolution, not the first's 0.05


async def test_work_done_in_time_never_expires() -> None:
    loop = asyncio.get_running_loop()
    watch = DeadlineWatch()
    expired: list[str] = []
    watch.watch(loop.time() + 0.03, lambda: expired.append("x"))
    await asyncio.sleep(0.01)
    watch.clear()
    await asyncio.sleep(0.06)
    assert expired == []
    watch.close()


async def test_an_earlier_deadline_than_the_armed_one_is_kept() -> None:
    loop = asyncio.get_running_loop()
    watch = DeadlineWatch()
    expired: list[float] = []
    watch.watch(loop.time() + 5, lambda: expired.append(loop.time()))
    soon = loop.time() + 0.03
    watch.watch(soon, lambda: expired.append(loop.time()))
    await asyncio.sleep(0.1)
    assert len(expired) == 1
    assert expired[0] < soon + 1  # not the 5 s of the first
    watch.close()


async def test_a_run_of_work_arms_one_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    watch = DeadlineWatch()
    for _ in range(100):  # a hundred batches, each answered at once
        watch.watch(loop.time() + 0.5, lambda: None)
        await asyncio.sleep(0)
        watch.clear()
    assert len(armed) == 1
    watch.close()
