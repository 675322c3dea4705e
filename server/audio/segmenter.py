"""Streaming audio: incremental PCM decoding and cutting a live stream into segments.

For ``StreamRecognize``: :class:`StreamDecoder` turns raw PCM chunks (any encoding, rate and channel
count the server accepts, split anywhere, even inside a sample) into 16 kHz float32 mono; a segmenter
(:class:`EnergySegmenter` or :class:`FixedSegmenter`) cuts that stream into :class:`Segment` s as the
audio arrives. Both keep only bounded state (one segment's worth of samples at most), never the stream.

Segment boundaries do not depend on how the stream was chunked: feeding the same samples in one piece
or sample by sample yields identical segments.

Not thread-safe: one instance per stream, used by one task at a time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import soxr

from emotion2vec_serving.server import defaults
from emotion2vec_serving.server.audio.errors import AudioError, AudioLimits
from emotion2vec_serving.server.audio.pcm import (
    PcmEncoding,
    check_samples,
    pcm_to_mono_float32,
    validate_pcm_format,
)

__all__ = [
    "SAMPLE_RATE_HZ",
    "EnergySegmenter",
    "FixedSegmenter",
    "Segment",
    "Segmenter",
    "StreamDecoder",
]

FloatArray = npt.NDArray[np.float32]

#: The rate segmenters work at (the model's rate).
SAMPLE_RATE_HZ = defaults.SAMPLE_RATE_HZ


@dataclass(frozen=True, eq=False)
class Segment:
    """A finished piece of the stream. ``samples`` is ``[start_sample, end_sample)`` of the 16 kHz stream."""

    index: int
    start_sample: int
    end_sample: int
    samples: FloatArray
    sample_rate_hz: int = SAMPLE_RATE_HZ

    @property
    def start_s(self) -> float:
        return self.start_sample / self.sample_rate_hz

    @property
    def end_s(self) -> float:
        return self.end_sample / self.sample_rate_hz

    @property
    def duration_s(self) -> float:
        return (self.end_sample - self.start_sample) / self.sample_rate_hz


class Segmenter(Protocol):
    """What the stream handler needs from a segmenter."""

    def feed(self, samples: FloatArray) -> list[Segment]:
        """Add mono samples; return the segments this completed, in order (often none)."""
        ...

    def finish(self) -> list[Segment]:
        """End of stream: return the segments still open. The segmenter accepts nothing afterwards."""
        ...

    @property
    def samples_received(self) -> int:
        """Samples fed so far."""
        ...

    @property
    def covered_samples(self) -> int:
        """Samples of the stream inside at least one emitted segment (overlaps counted once)."""
        ...


def _as_mono(samples: FloatArray) -> FloatArray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"segmenters take 1-D mono samples, got shape {x.shape}")
    return x


class _SampleBuffer:
    """Stream samples ``[start, end)`` (absolute indices) kept as a queue of chunks: appends never copy."""

    def __init__(self) -> None:
        self._chunks: deque[FloatArray] = deque()
        self.start = 0
        self.end = 0

    def append(self, chunk: FloatArray) -> None:
        if chunk.size:
            self._chunks.append(chunk)
            self.end += chunk.size

    def discard_before(self, index: int) -> None:
        """Forget samples before ``index`` (clamped to what is held)."""
        index = min(max(index, self.start), self.end)
        while self._chunks and self.start + self._chunks[0].size <= index:
            self.start += self._chunks.popleft().size
        if self._chunks and index > self.start:
            self._chunks[0] = self._chunks[0][index - self.start :]
            self.start = index
        if not self._chunks:
            self.start = self.end = max(index, self.end)

    def take(self, a: int, b: int) -> FloatArray:
        """A fresh copy of samples ``[a, b)``; precondition ``start <= a <= b <= end``."""
        assert self.start <= a <= b <= self.end, (a, b, self.start, self.end)
        out = np.empty(b - a, np.float32)
        pos, filled = self.start, 0
        for chunk in self._chunks:
            lo, hi = max(a, pos), min(b, pos + chunk.size)
            if lo < hi:
                out[filled : filled + hi - lo] = chunk[lo - pos : hi - pos]
                filled += hi - lo
            pos += chunk.size
            if pos >= b:
                break
        return out


class _BufferedSegmenter:
    """What both segmenters report the same way: audio covered by segments and samples held."""

    _buf: _SampleBuffer
    _covered: int

    @property
    def covered_samples(self) -> int:
        return self._covered

    @property
    def buffered_samples(self) -> int:
        """Samples held right now (bounded by one segment or window plus one chunk)."""
        return self._buf.end - self._buf.start + self._pending_size()

    def _pending_size(self) -> int:
        """Samples held outside ``_buf`` (an incomplete frame); none unless a subclass keeps some."""
        return 0


class EnergySegmenter(_BufferedSegmenter):
    """Energy end-pointing: segments of voiced audio between pauses, within length bounds.

    The stream is cut into ``frame_s`` (20 ms) frames; a frame is *voiced* when its RMS level is at
    least ``energy_threshold_db`` dBFS (0 dBFS = RMS 1.0; a full-scale sine is -3 dBFS).

    - A segment starts at the first voiced frame.
    - It ends at the end of its last voiced frame once ``min_silence_s`` of silence follows, provided it
      is by then at least ``min_segment_s`` long. A pause that comes earlier does not end it: short
      utterances separated by pauses merge (the pauses stay inside), and a short utterance followed by
      a long pause is extended with the audio after it up to ``min_segment_s`` -- nothing voiced is
      thrown away for being short, and the model always gets at least ``min_segment_s`` when the stream
      has it.
    - A segment is cut at ``max_segment_s`` (rounded down to whole frames) even without a pause; if the
      speech goes on, the next segment starts right at the cut.
    - Segments with less than ``min_voiced_s`` of voiced frames (clicks, pops) are dropped and counted
      in :attr:`dropped_segments`.
    - :meth:`finish` closes an open segment; if the stream ended before ``min_segment_s`` the segment is
      shorter.

    Memory: at most ``max_segment_s`` of samples plus one frame.
    """

    def __init__(
        self,
        min_segment_s: float = defaults.SEGMENT_MIN_S,
        max_segment_s: float = defaults.STREAM_MAX_SEGMENT_S,
        min_silence_s: float = defaults.SEGMENT_MIN_SILENCE_S,
        energy_threshold_db: float = defaults.SEGMENT_ENERGY_THRESHOLD_DB,
        *,
        min_voiced_s: float = 0.1,
        frame_s: float = 0.02,
        sample_rate_hz: int = SAMPLE_RATE_HZ,
    ) -> None:
        values = (min_segment_s, max_segment_s, min_silence_s, energy_threshold_db, min_voiced_s, frame_s)
        if not all(math.isfinite(v) for v in values):
            raise ValueError("segmentation settings must be finite numbers")
        self._frame = round(frame_s * sample_rate_hz)
        if self._frame < 1 or sample_rate_hz <= 0:
            raise ValueError("frame_s and sample_rate_hz must be positive")
        max_frames = math.floor(max_segment_s / frame_s + 1e-9)
        if max_frames < 1:
            raise ValueError(f"max_segment_s must be at least one frame ({frame_s} s), got {max_segment_s}")
        self._max = max_frames * self._frame
        self._min = round(min_segment_s * sample_rate_hz)
        if not 0 <= self._min <= self._max:
            raise ValueError(
                f"min_segment_s must be between 0 and max_segment_s, got {min_segment_s} and {max_segment_s}"
            )
        if min_silence_s <= 0 or min_voiced_s < 0:
            raise ValueError("min_silence_s must be positive and min_voiced_s not negative")
        self._min_silence = round(min_silence_s * sample_rate_hz)
        self._min_voiced = round(min_voiced_s * sample_rate_hz)
        # Compare mean squares instead of taking a log per frame.
        self._threshold_ms = 10.0 ** (energy_threshold_db / 10.0)
        self.sample_rate_hz = sample_rate_hz

        self._buf = _SampleBuffer()
        self._pending = np.zeros(0, np.float32)  # incomplete frame
        self._pos = 0  # absolute index of the next frame's first sample
        self._seg_start: int | None = None
        self._last_voiced_end = 0
        self._voiced = 0  # voiced samples in the open segment
        self._silence = 0  # samples of silence since the last voiced frame
        self._index = 0
        self._received = 0
        self._covered = 0
        self._finished = False
        self.dropped_segments = 0

    @property
    def samples_received(self) -> int:
        return self._received

    def _pending_size(self) -> int:
        return int(self._pending.size)

    def feed(self, samples: FloatArray) -> list[Segment]:
        """Add 16 kHz mono samples (any length); return the segments they completed."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        x = _as_mono(samples)
        self._received += x.size
        data = np.concatenate((self._pending, x)) if self._pending.size else x
        n_frames = data.size // self._frame
        whole = data[: n_frames * self._frame]
        # Copy: the caller may reuse its buffer, and a view would pin the whole chunk.
        self._pending = data[n_frames * self._frame :].copy()
        out: list[Segment] = []
        if n_frames:
            whole = np.array(whole, dtype=np.float32, copy=True)
            self._buf.append(whole)
            frames = whole.reshape(n_frames, self._frame).astype(np.float64)
            voiced = np.mean(frames * frames, axis=1) >= self._threshold_ms
            for is_voiced in voiced.tolist():
                self._step(is_voiced, self._pos + self._frame, out)
                self._pos += self._frame
        self._trim()
        return out

    def finish(self) -> list[Segment]:
        """End of stream: the trailing partial frame counts as a frame; the open segment is closed."""
        if self._finished:
            return []
        self._finished = True
        out: list[Segment] = []
        if self._pending.size:
            tail, self._pending = self._pending, np.zeros(0, np.float32)
            self._buf.append(tail)
            t64 = tail.astype(np.float64)
            self._step(bool(np.mean(t64 * t64) >= self._threshold_ms), self._pos + tail.size, out)
            self._pos += tail.size
        if self._seg_start is not None:
            end = max(self._last_voiced_end, min(self._seg_start + self._min, self._pos))
            self._emit(self._seg_start, end, out)
        self._trim()
        return out

    def _step(self, voiced: bool, frame_end: int, out: list[Segment]) -> None:
        frame_start = self._pos
        if self._seg_start is None:
            if not voiced:
                return
            self._seg_start, self._voiced, self._silence = frame_start, 0, 0
        if voiced:
            self._voiced += frame_end - frame_start
            self._last_voiced_end = frame_end
            self._silence = 0
        else:
            self._silence += frame_end - frame_start
        length = frame_end - self._seg_start
        if length >= self._max:
            self._emit(self._seg_start, self._seg_start + self._max, out)
        elif self._silence >= self._min_silence and length >= self._min:
            self._emit(self._seg_start, max(self._last_voiced_end, self._seg_start + self._min), out)

    def _emit(self, start: int, end: int, out: list[Segment]) -> None:
        if self._voiced < self._min_voiced or end <= start:
            self.dropped_segments += 1
        else:
            out.append(Segment(self._index, start, end, self._buf.take(start, end), self.sample_rate_hz))
            self._index += 1
            self._covered += end - start
        self._seg_start = None

    def _trim(self) -> None:
        self._buf.discard_before(self._pos if self._seg_start is None else self._seg_start)


class FixedSegmenter(_BufferedSegmenter):
    """Fixed windows: ``[k * hop_s, k * hop_s + window_s)`` for k = 0, 1, 2, ...

    ``hop_s < window_s`` overlaps windows; ``hop_s > window_s`` skips the audio between them. At the end
    of the stream the next unfinished window is emitted truncated, if it holds audio no earlier window
    covered and is at least ``min_final_s`` long (shorter tails carry too little for an estimate).

    Memory: at most one window of samples plus the last chunk.
    """

    def __init__(
        self,
        window_s: float = defaults.FIXED_WINDOW_S,
        hop_s: float | None = None,
        *,
        min_final_s: float = 0.1,
        sample_rate_hz: int = SAMPLE_RATE_HZ,
    ) -> None:
        hop_s = window_s if hop_s is None else hop_s
        if not all(math.isfinite(v) for v in (window_s, hop_s, min_final_s)):
            raise ValueError("segmentation settings must be finite numbers")
        self._window = round(window_s * sample_rate_hz)
        self._hop = round(hop_s * sample_rate_hz)
        if self._window < 1 or self._hop < 1:
            raise ValueError(f"window_s and hop_s must be positive, got {window_s} and {hop_s}")
        self._min_final = max(1, round(min_final_s * sample_rate_hz))
        self.sample_rate_hz = sample_rate_hz
        self._buf = _SampleBuffer()
        self._next_start = 0
        self._last_end = 0
        self._index = 0
        self._covered = 0
        self._finished = False

    @property
    def samples_received(self) -> int:
        return self._buf.end

    def feed(self, samples: FloatArray) -> list[Segment]:
        """Add 16 kHz mono samples (any length); return the windows they completed."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        x = _as_mono(samples)
        self._buf.append(np.array(x, dtype=np.float32, copy=True))
        out: list[Segment] = []
        while self._next_start + self._window <= self._buf.end:
            self._emit(self._next_start, self._next_start + self._window, out)
            self._next_start += self._hop
        self._buf.discard_before(self._next_start)
        return out

    def finish(self) -> list[Segment]:
        """End of stream: emit the last, partial window when it is worth it."""
        if self._finished:
            return []
        self._finished = True
        out: list[Segment] = []
        end = self._buf.end
        if self._next_start < end and end > self._last_end and end - self._next_start >= self._min_final:
            self._emit(self._next_start, end, out)
        self._buf.discard_before(end)
        return out

    def _emit(self, start: int, end: int, out: list[Segment]) -> None:
        out.append(Segment(self._index, start, end, self._buf.take(start, end), self.sample_rate_hz))
        self._index += 1
        self._covered += end - max(start, self._last_end)
        self._last_end = end


class StreamDecoder:
    """Raw PCM chunks -> 16 kHz float32 mono, incrementally.

    Chunks may end anywhere, even inside a sample or frame: the incomplete bytes wait for the next
    chunk. Resampling is soxr's streaming high-quality filter, so the output does not depend on the
    chunking (up to float rounding) and carries a short filter delay that :meth:`finish` flushes.
    ``channels`` must be >= 1 (the proto's "0 means 1" is the service's conversion).
    """

    def __init__(
        self,
        encoding: PcmEncoding,
        sample_rate_hz: int,
        channels: int = 1,
        limits: AudioLimits | None = None,
    ) -> None:
        limits = limits or AudioLimits()
        self._frame_bytes = validate_pcm_format(encoding, sample_rate_hz, channels, limits)
        self.encoding: PcmEncoding = encoding
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self.target_sample_rate_hz = limits.target_sample_rate_hz
        self._remainder = b""
        self._resampler = (
            None
            if sample_rate_hz == self.target_sample_rate_hz
            else soxr.ResampleStream(sample_rate_hz, self.target_sample_rate_hz, 1, "float32", "HQ")
        )
        self._input_frames = 0
        self._output_samples = 0
        self._finished = False

    @property
    def input_frames(self) -> int:
        """Whole PCM frames (one sample of every channel) received so far."""
        return self._input_frames

    @property
    def duration_s(self) -> float:
        """Audio received so far, in seconds."""
        return self._input_frames / self.sample_rate_hz

    @property
    def output_samples(self) -> int:
        return self._output_samples

    def feed(self, data: bytes | bytearray | memoryview) -> FloatArray:
        """Decode one chunk; return the 16 kHz samples it completed (possibly none).

        Raises :class:`AudioError` (reason ``non_finite`` or ``out_of_range``) on NaN/Inf or absurd samples.
        """
        if self._finished:
            raise RuntimeError("feed() after finish()")
        buf = self._remainder + bytes(data) if self._remainder else bytes(data)
        usable = len(buf) - len(buf) % self._frame_bytes
        self._remainder = buf[usable:]
        if usable == 0:
            return np.zeros(0, np.float32)
        mono = pcm_to_mono_float32(memoryview(buf)[:usable], self.encoding, self.channels)
        check_samples(mono)
        self._input_frames += mono.size
        return self._out(mono, last=False)

    def finish(self) -> FloatArray:
        """End of stream: flush the resampler. Raises :class:`AudioError` if a partial frame is left."""
        if self._finished:
            return np.zeros(0, np.float32)
        self._finished = True
        if self._remainder:
            raise AudioError(
                f"stream ended inside a sample frame: {len(self._remainder)} trailing bytes, frames are "
                f"{self._frame_bytes} bytes ({self.channels} channel(s) of {self.encoding})",
                "bad_length",
            )
        return self._out(np.zeros(0, np.float32), last=True)

    def _out(self, mono: FloatArray, *, last: bool) -> FloatArray:
        if self._resampler is not None:
            mono = np.asarray(self._resampler.resample_chunk(mono, last=last), dtype=np.float32)
        self._output_samples += mono.size
        return mono
