"""Long recordings in memory: :class:`PcmStore`, 16-bit mono samples at the model's rate in fixed-size chunks.

What the ``decode_*_any`` decoders (``server/audio/pcm.py``, ``server/audio/decode.py``) return for audio
longer than one model pass (:data:`Decoded`), and what long-form recognition (``server/calls/longform.py``)
cuts into segments. numpy only.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

__all__ = ["Decoded", "FloatArray", "Int16Array", "PcmStore"]

FloatArray = npt.NDArray[np.float32]
Int16Array = npt.NDArray[np.int16]

#: Samples per chunk of a :class:`PcmStore` (~16 s at 16 kHz, 512 KiB of int16).
_STORE_CHUNK = 1 << 18


class PcmStore:
    """A long recording as 16-bit mono samples at the model's rate, held in fixed-size chunks.

    Long recordings are kept as int16 (2 bytes a sample: a 2-hour recording at 16 kHz is 230 MB, half of
    float32) and converted to float32 one segment at a time by :meth:`take`. Samples are appended in
    place into preallocated chunks, so growing never copies what is already held and the peak is one
    chunk above the samples themselves. A 16-bit source (WAV/FLAC s16, raw s16le) at 16 kHz is stored
    exactly (``take`` returns the same floats as the one-pass decoder); other sources are rounded to
    16 bits (quantisation noise at -96 dBFS; samples beyond [-1, 1) are clipped).
    """

    def __init__(self, sample_rate_hz: int = 16000, chunk_samples: int = _STORE_CHUNK) -> None:
        self.sample_rate_hz = sample_rate_hz
        self._chunk = chunk_samples
        self._chunks: list[Int16Array] = []
        self._size = 0

    @classmethod
    def from_int16(cls, samples: Int16Array, sample_rate_hz: int = 16000) -> PcmStore:
        """Wrap an int16 array as one chunk (no copy; the store keeps a reference)."""
        store = cls(sample_rate_hz, max(1, int(samples.size)))
        if samples.size:
            store._chunks.append(samples)
            store._size = int(samples.size)
        return store

    def __len__(self) -> int:
        return self._size

    @property
    def duration_s(self) -> float:
        return self._size / self.sample_rate_hz

    @property
    def nbytes(self) -> int:
        """Bytes held (allocated chunk capacity)."""
        return sum(int(c.nbytes) for c in self._chunks)

    def append(self, samples: FloatArray) -> None:
        """Append float samples (nominally in [-1, 1)), rounded to 16 bits."""
        x = np.asarray(samples, dtype=np.float32)
        pos = 0
        while pos < x.size:
            used = self._size % self._chunk
            if used == 0 and (not self._chunks or self._size == len(self._chunks) * self._chunk):
                self._chunks.append(np.empty(self._chunk, np.int16))
                used = 0
            room = self._chunk - used
            n = min(room, x.size - pos)
            part = x[pos : pos + n] * np.float32(32768.0)
            np.rint(part, out=part)
            np.clip(part, -32768.0, 32767.0, out=part)
            self._chunks[-1][used : used + n] = part
            self._size += n
            pos += n

    def truncate(self, size: int) -> None:
        """Keep only the first ``size`` samples (no effect when the store holds no more than that)."""
        self._size = min(self._size, max(0, size))

    def take(self, start: int, end: int) -> FloatArray:
        """A fresh float32 copy of samples ``[start, end)`` (clamped), scaled into [-1, 1)."""
        start, end = max(0, start), min(end, self._size)
        out = np.empty(max(0, end - start), np.float32)
        if end <= start:
            return out
        filled = 0
        base = 0
        for chunk in self._chunks:
            n = min(chunk.size, self._size - base)
            lo, hi = max(start, base), min(end, base + n)
            if lo < hi:
                out[filled : filled + hi - lo] = chunk[lo - base : hi - base]
                filled += hi - lo
            base += n
            if base >= end:
                break
        out *= np.float32(1.0 / 32768.0)
        return out

    def blocks(self, block_samples: int) -> Iterator[FloatArray]:
        """The whole recording as consecutive float32 blocks of ``block_samples`` (the last shorter)."""
        for start in range(0, self._size, block_samples):
            yield self.take(start, start + block_samples)


#: What the ``*_any`` decoders return: a float32 waveform for audio that fits one model pass (exactly what
#: ``decode_encoded``/``decode_pcm`` return), a :class:`PcmStore` for a longer recording.
Decoded = FloatArray | PcmStore
