"""Length-aware dynamic batcher for variable-length requests (standard library only).

See docs/DESIGN.md, section "Batcher API".
"""

from .batcher import DynamicBatcher
from .errors import BatcherClosed, BatcherError, DeadlineExceeded, QueueFull
from .latency import LatencyModel
from .observer import BatchObserver, ObserverProtocol
from .policy import BatchPolicy, Dispatch, Wait, decide, padded_cost
from .queue import RequestQueue
from .request import QueuedRequest

__all__ = [
    "BatchObserver",
    "BatchPolicy",
    "BatcherClosed",
    "BatcherError",
    "DeadlineExceeded",
    "Dispatch",
    "DynamicBatcher",
    "LatencyModel",
    "ObserverProtocol",
    "QueueFull",
    "QueuedRequest",
    "RequestQueue",
    "Wait",
    "decide",
    "padded_cost",
]
