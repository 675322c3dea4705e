"""The one registry of batch decision functions: ``--batch-policy`` name -> ``DecideFn``.

``length_aware`` is this project's policy; ``fifo`` and ``equal_shape`` are the baselines of
``baselines`` (kept for benchmarks and comparisons). The server's flag, its validation and the
benchmarks all read this dict.
"""

from __future__ import annotations

from .baselines import decide_equal_shape, decide_fifo
from .policy import DecideFn, decide

__all__ = ["DECISIONS", "DEFAULT_DECISION"]

DEFAULT_DECISION = "length_aware"

DECISIONS: dict[str, DecideFn] = {
    "length_aware": decide,
    "fifo": decide_fifo,
    "equal_shape": decide_equal_shape,
}
