"""The engine's step timer: never wakes before its deadline, and a sleep that was abandoned
cannot end a later one early."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest

from kvgate.sim.timer import TIMER_SLACK_NS, PreciseTimer


async def test_sleeps_end_at_their_deadline_never_before() -> None:
    timer = PreciseTimer()
    try:
        for i in range(30):
            deadline = time.monotonic() + 0.0005 + 0.0002 * i  # off the millisecond grid
            await timer.sleep_until(deadline)
            assert time.monotonic() >= deadline
        assert timer.precise == sys.platform.startswith("linux")
        # The kernel may defer a wake-up by the thread's timer slack (the main one's here).
        slack = Path("/proc/self/timerslack_ns")
        if slack.exists() and threading.current_thread() is threading.main_thread():
            assert int(slack.read_text()) == TIMER_SLACK_NS
        # A deadline already past returns on the next loop pass.
        await asyncio.wait_for(timer.sleep_until(time.monotonic() - 1.0), 1)
    finally:
        timer.close()


async def test_an_abandoned_sleep_does_not_end_the_next_one_early() -> None:
    timer = PreciseTimer()
    try:
        first = asyncio.create_task(timer.sleep_until(time.monotonic() + 0.001))
        await asyncio.sleep(0)  # armed
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        end = time.monotonic() + 0.003
        while time.monotonic() < end:
            pass  # the first deadline passes while the loop is blocked: its expiry is pending
        deadline = time.monotonic() + 0.02
        await timer.sleep_until(deadline)
        assert time.monotonic() >= deadline
    finally:
        timer.close()


async def test_after_close_it_still_sleeps_without_a_timerfd() -> None:
    timer = PreciseTimer()
    await timer.sleep_until(time.monotonic() + 0.001)
    timer.close()
    assert not timer.precise
    deadline = time.monotonic() + 0.003
    await timer.sleep_until(deadline)
    assert time.monotonic() >= deadline - 0.0002  # asyncio's timers: within the re-sleep margin
