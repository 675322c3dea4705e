"""Retry policy: exponential backoff with jitter on UNAVAILABLE and RESOURCE_EXHAUSTED.

Attempts share the call's deadline: a retry whose backoff would end after the deadline is not made, and
the last error is raised instead (more useful than a bare DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import grpc

__all__ = ["NO_RETRY", "RetryPolicy"]

_DEFAULT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before trying a failed call again.

    The n-th retry waits ``min(max_backoff_s, initial_backoff_s * multiplier**(n-1))`` scaled by a random
    factor in ``[1 - jitter, 1 + jitter]`` (jitter spreads a crowd of clients shed at the same moment).
    A server's ``retry-after-ms`` trailing metadata raises the wait to at least that hint, capped at
    ``max_retry_after_s``.
    """

    max_attempts: int = 4  # first try included; 1 disables retries
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    retry_on: frozenset[grpc.StatusCode] = field(default=_DEFAULT_CODES)
    honour_retry_after: bool = True
    max_retry_after_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise ValueError("backoff must be non-negative and multiplier at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be in [0, 1]")

    def should_retry(self, code: grpc.StatusCode | None, attempt: int) -> bool:
        """Whether a call that failed with ``code`` on attempt ``attempt`` (1-based) is tried again."""
        return code in self.retry_on and attempt < self.max_attempts

    def backoff_s(
        self, attempt: int, retry_after_s: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        factor = 1.0 + self.jitter * (2.0 * (rng or random).random() - 1.0)
        delay = base * factor
        if self.honour_retry_after and retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_retry_after_s))
        return delay

    def delay_before_retry(
        self,
        code: grpc.StatusCode | None,
        attempt: int,
        retry_after_s: float | None,
        deadline: float | None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds to sleep before retrying failed attempt ``attempt``, or None when the call must fail now.

        None when ``code`` is not retried, the attempts are used up, or the backoff would end at or after
        ``deadline`` (a ``time.monotonic()`` value; None means no deadline). The sync and asyncio clients
        share this decision and differ only in how they sleep.
        """
        if not self.should_retry(code, attempt):
            return None
        delay = self.backoff_s(attempt, retry_after_s, rng)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay


#: Fail at once: no retries.
NO_RETRY = RetryPolicy(max_attempts=1)
