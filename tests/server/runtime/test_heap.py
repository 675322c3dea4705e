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


# A fresh interpreter: free a 16 MiB block (glibc raises its sliding mmap threshold to 16 MiB), then allocate,
# touch and free three 8 MiB blocks, and print how much of them RSS still holds.
_PROBE = r"""
import ctypes, sys
from emotion2vec_serving.server.runtime.heap import set_mmap_threshold
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
applied = set_mmap_threshold(1024) if sys.argv[1] == "fixed" else None
MIB = 1 << 20
big = libc.malloc(16 * MIB); libc.memset(big, 1, 16 * MIB); libc.free(big)
before = rss_kib()
blocks = [libc.malloc(8 * MIB) for _ in range(3)]
for b in blocks:
    libc.memset(b, 1, 8 * MIB)
for b in blocks:
    libc.free(b)
print(applied, (rss_kib() - before) // 1024)
"""


def _probe(mode: str, env_extra: dict[str, str] | None = None) -> tuple[str, int]:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=root, env=env, capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    return out[0], int(out[1])


def test_a_fixed_mmap_threshold_gives_batch_sized_blocks_back_when_freed() -> None:
    # glibc's sliding threshold (the control): after one large free, 8 MiB blocks come from the heap and
    # stay there once freed (24 MiB held), which is what the fixed threshold is for.
    applied, held_sliding = _probe("sliding")
    assert held_sliding >= 16, held_sliding
    applied, held_fixed = _probe("fixed")
    assert applied == "True" and held_fixed <= 2, held_fixed


def test_the_operators_malloc_mmap_threshold_wins() -> None:
    # 32 MiB from the environment (and a trim threshold above the blocks): the blocks come from the heap and
    # stay there (the first two reuse the 16 MiB block's pages, already resident: 8 MiB more held); had the
    # server's 1 MiB threshold been applied, they would have been mapped and unmapped (held 0).
    env = {heap.MMAP_THRESHOLD_ENV: str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}
    applied, held = _probe("fixed", env)
    assert applied == "False" and held >= 6, held
