"""The polling helper waits for a condition that becomes true, and fails naming one that never does."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.support.polling import wait_until, wait_until_async


def test_wait_until_returns_once_a_thread_sets_the_condition() -> None:
    done = threading.Event()
    threading.Timer(0.05, done.set).start()
    wait_until(done.is_set, timeout_s=5, message="timer fired")
    assert done.is_set()


def test_wait_until_fails_with_the_message_after_the_bound() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"never true: not reached within 0\.1 s"):
        wait_until(lambda: False, timeout_s=0.1, message="never true")
    assert time.monotonic() - started < 5


async def test_wait_until_async_lets_other_tasks_run_and_accepts_coroutines() -> None:
    state = {"n": 0}

    async def bump() -> None:
        for _ in range(3):
            await asyncio.sleep(0)
            state["n"] += 1

    task = asyncio.ensure_future(bump())

    async def reached() -> bool:
        return state["n"] == 3

    await wait_until_async(reached, timeout_s=5, message="three bumps")
    await task
    with pytest.raises(AssertionError, match="n is 4"):
        await wait_until_async(lambda: state["n"] == 4, timeout_s=0.05, message="n is 4")
