"""Length-aware dynamic batcher for variable-length requests (standard library only).

See docs/DESIGN.md, section "Batcher API".
"""

from .baselines import decide_equal_shape, decide_fifo
from .batcher import DynamicBatcher
from .errors import BatcherClosed, BatcherError, DeadlineExceeded, QueueFull
from .latency import LatencyModel
from .observer import BatchObserver, ObserverProtocol
from .policy import BatchPolicy, DecideFn, Dispatch, Wait, decide, padded_cost
from .queue import RequestQueue
from .registry import DECISIONS, DEFAULT_DECISION
from .request import QueuedRequest

__all__ = [
    "DECISIONS",
    "DEFAULT_DECISION",
    "BatchObserver",
    "BatchPolicy",
    "BatcherClosed",
    "BatcherError",
    "DeadlineExceeded",
    "DecideFn",
    "Dispatch",
    "DynamicBatcher",
    "LatencyModel",
    "ObserverProtocol",
    "QueueFull",
    "QueuedRequest",
    "RequestQueue",
    "Wait",
    "decide",
    "decide_equal_shape",
    "decide_fifo",
    "padded_cost",
]
