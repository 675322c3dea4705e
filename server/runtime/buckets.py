"""Length buckets: on a GPU every batch is padded up to one of a small grid of lengths.

Why: cuDNN picks a convolution algorithm per input shape, and ONNX Runtime's CUDA provider caches the choice
per shape. With unbounded audio lengths every new length pays that search on every convolution layer and the
cache grows without bound; warm-up cannot cover arbitrary lengths, and its cold runs feed the latency model.
With a grid of a few dozen lengths every shape is seen during warm-up (and TensorRT profiles or CUDA graphs
become possible). The model is padding-exact (it masks by ``lengths``), so padding changes no result; it only
costs compute, which is why the grid is geometric (at most ``2**(1/per_octave) - 1`` extra, ~19 % with four
buckets per octave, ~9 % on average) and why CPUs do not use it (a CPU has no per-shape search to save).

The batcher's cost of a request is the length the runner really runs (``LengthBuckets.pad``), so its
padding-waste and latency model see the padded lengths: two requests in one bucket batch with no waste.
Standard library only.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

__all__ = ["LengthBuckets", "parse_length_buckets"]

#: Bucket edges are multiples of the feature extractor's total stride (320 samples = one 50 Hz frame).
FRAME_SAMPLES = 320


class LengthBuckets:
    """Sorted bucket edges in samples; ``pad(n)`` is the smallest edge ≥ n.

    Beyond the last edge lengths are rounded up to a multiple of ``tail_step`` samples (so a longer-than-
    planned input still reuses shapes).
    """

    def __init__(self, edges: Sequence[int], tail_step: int | None = None) -> None:
        cleaned = sorted({_round_up(int(e), FRAME_SAMPLES) for e in edges if int(e) > 0})
        if not cleaned:
            raise ValueError("length buckets need at least one positive edge")
        self.edges: tuple[int, ...] = tuple(cleaned)
        last = self.edges[-1]
        self.tail_step = tail_step if tail_step is not None else max(FRAME_SAMPLES, _round_up(last // 8, 320))

    @classmethod
    def geometric(cls, min_samples: int, max_samples: int, per_octave: int = 4) -> LengthBuckets:
        """Edges from ``min_samples`` to ``max_samples`` (both included), ``per_octave`` per doubling."""
        if min_samples < 1 or max_samples < min_samples or per_octave < 1:
            raise ValueError("need 1 <= min_samples <= max_samples and per_octave >= 1")
        edges = []
        steps = math.ceil(per_octave * math.log2(max_samples / min_samples))
        for k in range(steps + 1):
            edges.append(min(max_samples, math.ceil(min_samples * 2 ** (k / per_octave))))
        edges.append(max_samples)
        return cls(edges)

    def pad(self, n: int) -> int:
        """The length an input of ``n`` samples is padded to."""
        if n <= 0:
            return self.edges[0]
        i = bisect.bisect_left(self.edges, n)
        if i < len(self.edges):
            return self.edges[i]
        return _round_up(n, self.tail_step)

    def __len__(self) -> int:
        return len(self.edges)

    def __repr__(self) -> str:
        return f"LengthBuckets({len(self.edges)} edges, {self.edges[0]}..{self.edges[-1]} samples)"

    @property
    def worst_padding(self) -> float:
        """Largest fraction of a padded input that can be padding (inside the grid)."""
        worst = 0.0
        for lo, hi in zip(self.edges, self.edges[1:], strict=False):
            worst = max(worst, (hi - lo - 1) / hi)
        return worst


def _round_up(n: int, step: int) -> int:
    return max(step, -(-n // step) * step)


def parse_length_buckets(spec: str, *, gpu: bool, min_s: float, max_s: float,
                         rate: int = 16000) -> LengthBuckets | None:
    """``--length-buckets``: ``auto`` (a geometric grid on GPUs, none on CPUs), ``off``, or edges in seconds.

    ``auto`` spans ``min_s`` .. ``max_s`` with four buckets per octave.
    """
    text = spec.strip().lower()
    if text in ("off", "none", "0", ""):
        return None
    if text == "auto":
        if not gpu:
            return None
        return LengthBuckets.geometric(max(FRAME_SAMPLES, int(min_s * rate)), max(int(max_s * rate), 1))
    try:
        seconds = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"length buckets {spec!r}: expected auto, off or seconds like 1,2,4,8") from exc
    if not seconds or any(not (s > 0 and math.isfinite(s)) for s in seconds):
        raise ValueError(f"length buckets {spec!r}: every edge must be a positive number of seconds")
    return LengthBuckets([math.ceil(s * rate) for s in seconds])
