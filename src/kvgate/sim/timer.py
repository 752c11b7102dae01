"""Sleeping until an exact time on the event loop, to tens of microseconds.

asyncio's (and uvloop's) timers wake on a millisecond grid, so a 4 ms modelled step could end
up to a millisecond off, and the error is systematic for a steady step length. On Linux a
``timerfd`` armed at an absolute ``CLOCK_MONOTONIC`` time (the clock of ``time.monotonic()``)
becomes readable when the kernel's high-resolution timer fires, and the event loop's poll
returns then, whatever its own timeout. :class:`PreciseTimer` uses one; elsewhere (or if
``timerfd_create`` fails) it falls back to ``asyncio.sleep`` with a short re-sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import sys
import time

__all__ = ["PreciseTimer"]

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1
_PR_SET_TIMERSLACK = 29
#: The kernel may defer a wake-up by the thread's timer slack (50 µs by default).
TIMER_SLACK_NS = 10_000


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class PreciseTimer:
    """One sleeper at a time until a ``time.monotonic()`` deadline."""

    def __init__(self) -> None:
        self._fd = -1
        self._fut: asyncio.Future[None] | None = None
        self._deadline = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened = False

    def _open(self) -> None:
        # (on first use, so an engine that never runs holds no descriptor)
        self._opened = True
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
                if fd >= 0:
                    self._settime = libc.timerfd_settime
                    self._fd = fd
                    ulong = ctypes.c_ulong
                    libc.prctl(
                        _PR_SET_TIMERSLACK, ulong(TIMER_SLACK_NS), ulong(0), ulong(0), ulong(0)
                    )

    @property
    def precise(self) -> bool:
        """Whether sleeps use a timerfd (known after the first one)."""
        return self._fd >= 0

    async def sleep_until(self, deadline: float) -> None:
        """Return at ``deadline`` (monotonic seconds), or on the next loop pass if it is past."""
        if not self._opened:
            self._open()
        if self._fd < 0:
            remaining = deadline - time.monotonic()
            while remaining > 0.0002:
                await asyncio.sleep(remaining)
                remaining = deadline - time.monotonic()
            return
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            loop.add_reader(self._fd, self._fired)
            self._loop = loop
        sec = int(deadline)
        nsec = max(1, int((deadline - sec) * 1e9))  # all zero would disarm it
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(sec, nsec))
        if self._settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            return
        fut = loop.create_future()
        self._fut = fut
        self._deadline = deadline
        try:
            await fut
        finally:
            self._fut = None

    def _fired(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self._fd, 8)
        fut = self._fut
        # (an expiry left from an abandoned sleep must not end this one early)
        if fut is not None and not fut.done() and time.monotonic() >= self._deadline - 1e-4:
            fut.set_result(None)

    def close(self) -> None:
        if self._fd >= 0:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
