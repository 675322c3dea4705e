"""The one bounded polling helper of the test suite.

A test that waits for something the system reaches asynchronously polls a condition until it holds or a
bound passes, then fails naming what never happened. Never a fixed sleep: a sleep is too short on a
loaded machine and wastes time on an idle one, and a fixed sleep before a negative assertion ("X did not
happen") proves nothing. Use a positive synchronisation point for those instead (a later request that
completed, a counter that moved, a watcher that ran N more cycles).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["wait_until", "wait_until_async"]


def wait_until(predicate: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.01,
               message: str = "condition") -> None:
    """Call ``predicate`` every ``interval_s`` until it is truthy; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message}: not reached within {timeout_s:g} s")
        time.sleep(interval_s)


async def wait_until_async(predicate: Callable[[], Any | Awaitable[Any]], timeout_s: float = 10.0,
                           interval_s: float = 0.01, message: str = "condition") -> None:
    """The same on the event loop (``predicate`` may be a coroutine function); other tasks run meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message}: not reached within {timeout_s:g} s")
        await asyncio.sleep(interval_s)
