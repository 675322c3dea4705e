"""The heap trimmer (server/runtime/heap.py): trims only while work happens, off the event loop, and stops."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from emotion2vec_serving.server.runtime import heap
from tests.support.polling import wait_until_async


async def test_trims_only_after_activity_and_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = heap.trim_heap

    def recorded() -> None:
        threads.append(threading.current_thread().name)
        real()  # the real malloc_trim: it must run wherever it is called

    monkeypatch.setattr(heap, "trim_heap", recorded)
    batches = 0
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as executor:
        trimmer = heap.HeapTrimmer(0.01, executor, lambda: batches)
        trimmer.start()
        await wait_until_async(lambda: trimmer.checks >= 5, message="idle wake-ups")
        assert trimmer.trims == 0 and not threads, "an idle server is never trimmed"
        batches += 3
        await wait_until_async(lambda: trimmer.trims == 1, message="a trim after batches ran")
        checks = trimmer.checks
        await wait_until_async(lambda: trimmer.checks >= checks + 5, message="idle again")
        assert trimmer.trims == 1, "one trim per burst of activity"
        await trimmer.stop()
    assert threads == ["decode_0"], threads


async def test_zero_interval_never_starts() -> None:
    with ThreadPoolExecutor(1) as executor:
        trimmer = heap.HeapTrimmer(0.0, executor, lambda: 1)
        trimmer.start()
        await trimmer.stop()
        assert trimmer.checks == 0
