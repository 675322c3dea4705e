"""Stream segmentation and incremental PCM decoding, on synthetic tone bursts and real PCM bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emotion2vec_serving.server.audio.errors import AudioError
from emotion2vec_serving.server.audio.pcm import PcmEncoding, decode_pcm
from emotion2vec_serving.server.audio.segmenter import (
    EnergySegmenter,
    FixedSegmenter,
    Segment,
    Segmenter,
    StreamDecoder,
)
from tests.support.audio import make_signal, pcm_bytes, tone_bursts

RATE = 16000
FRAME = 320


def run(segmenter: Segmenter, x: np.ndarray, chunk: int | list[int] | None = None) -> list[Segment]:
    """Feed ``x`` in chunks of ``chunk`` samples (a size, a list of sizes cycled, or all at once)."""
    sizes = [x.size] if chunk is None else [chunk] if isinstance(chunk, int) else chunk
    out: list[Segment] = []
    pos, i = 0, 0
    while pos < x.size:
        step = sizes[i % len(sizes)]
        out += segmenter.feed(x[pos : pos + step])
        pos, i = pos + step, i + 1
    out += segmenter.finish()
    return out


def bounds_s(segments: list[Segment]) -> list[tuple[float, float]]:
    return [(s.start_s, s.end_s) for s in segments]


def check_consistent(segments: list[Segment], x: np.ndarray) -> None:
    assert [s.index for s in segments] == list(range(len(segments)))
    for s in segments:
        assert s.samples.dtype == np.float32
        np.testing.assert_array_equal(s.samples, x[s.start_sample : s.end_sample])


# ---------------------------------------------------------------------------------------- energy


def test_bursts_are_found_at_their_times() -> None:
    bursts = [(0.5, 2.0), (3.0, 4.5), (6.02, 8.0)]
    x = tone_bursts(bursts, 9.0)
    segments = run(EnergySegmenter(), x)
    check_consistent(segments, x)
    # Boundaries fall on 20 ms frames; a burst edge inside a frame is voiced when enough of it is tone.
    assert len(segments) == 3
    for (start, end), seg in zip(bursts, segments, strict=True):
        assert seg.start_s == pytest.approx(start, abs=0.02)
        assert seg.end_s == pytest.approx(end, abs=0.02)


def test_a_pause_shorter_than_min_silence_does_not_split() -> None:
    x = tone_bursts([(0.5, 2.0), (2.25, 4.0)], 5.0)  # 250 ms pause < 300 ms
    assert bounds_s(run(EnergySegmenter(), x)) == [(0.5, 4.0)]


def test_short_utterances_merge_across_pauses_until_min_segment() -> None:
    # 0.4 s words separated by 0.35 s pauses: each pause is long enough to end a segment, but no
    # segment is yet min_segment_s long, so they run together.
    bursts = [(1.0, 1.4), (1.75, 2.15), (2.5, 2.9)]
    x = tone_bursts(bursts, 5.0)
    assert bounds_s(run(EnergySegmenter(min_segment_s=1.6), x)) == [(1.0, 2.9)]


def test_a_short_utterance_is_extended_to_min_segment_with_the_audio_after_it() -> None:
    x = tone_bursts([(1.0, 1.4)], 5.0)
    segments = run(EnergySegmenter(min_segment_s=1.0), x)
    assert bounds_s(segments) == [(1.0, 2.0)]
    check_consistent(segments, x)


def test_the_stream_ending_early_shortens_the_last_segment() -> None:
    x = tone_bursts([(1.0, 1.4)], 1.7)
    assert bounds_s(run(EnergySegmenter(min_segment_s=1.0), x)) == [(1.0, 1.7)]


def test_speech_running_to_the_end_of_the_stream_is_flushed_by_finish() -> None:
    x = tone_bursts([(0.5, 3.013)], 3.013)  # ends mid-frame
    segmenter = EnergySegmenter()
    assert segmenter.feed(x) == []
    segments = segmenter.finish()
    assert [(s.start_sample, s.end_sample) for s in segments] == [(8000, x.size)]


def test_max_segment_forces_cuts_and_speech_continues_in_the_next_segment() -> None:
    x = tone_bursts([(1.0, 24.0)], 25.0)
    segments = run(EnergySegmenter(max_segment_s=10.0), x)
    assert bounds_s(segments) == [(1.0, 11.0), (11.0, 21.0), (21.0, 24.0)]
    check_consistent(segments, x)


def test_max_segment_is_rounded_down_to_whole_frames() -> None:
    x = tone_bursts([(0.0, 3.0)], 3.0)
    segments = run(EnergySegmenter(min_segment_s=0.5, max_segment_s=0.99), x)
    assert all(s.end_sample - s.start_sample <= round(0.99 * RATE) for s in segments)
    assert (segments[0].end_sample - segments[0].start_sample) % FRAME == 0
    assert segments[0].end_sample - segments[0].start_sample == 49 * FRAME


def test_clicks_are_dropped_and_counted() -> None:
    x = tone_bursts([(1.0, 1.04), (3.0, 5.0), (7.0, 7.06)], 9.0)
    segmenter = EnergySegmenter(min_voiced_s=0.1)
    assert bounds_s(run(segmenter, x)) == [(3.0, 5.0)]
    assert segmenter.dropped_segments == 2


def test_energy_threshold() -> None:
    quiet = tone_bursts([(1.0, 3.0)], 4.0, amplitude=10 ** (-50 / 20) * np.sqrt(2))  # -50 dBFS RMS
    assert run(EnergySegmenter(energy_threshold_db=-40), quiet) == []
    assert bounds_s(run(EnergySegmenter(energy_threshold_db=-60), quiet)) == [(1.0, 3.0)]


def test_silence_only_and_empty_streams() -> None:
    assert run(EnergySegmenter(), tone_bursts([], 5.0)) == []
    assert run(EnergySegmenter(), np.zeros(0, np.float32)) == []


def test_covered_samples_count_audio_inside_segments() -> None:
    x = tone_bursts([(0.5, 2.0), (3.0, 4.5)], 5.0)
    segmenter = EnergySegmenter()
    run(segmenter, x)
    assert segmenter.covered_samples == 3 * RATE
    assert segmenter.samples_received == x.size


@pytest.mark.parametrize(
    "chunks", [1, 7, FRAME - 1, FRAME, FRAME + 1, 4096, [1, 5000, 13, 320, 999]], ids=str
)
def test_energy_segments_do_not_depend_on_chunking(chunks: int | list[int]) -> None:
    bursts = [(0.3, 1.0), (1.35, 1.6), (2.5, 14.0), (14.2, 14.25), (15.0, 15.5)]
    x = tone_bursts(bursts, 16.0)
    if chunks == 1:
        x = x[: 4 * RATE]  # a sample at a time is slow in Python; 4 s is enough to cross boundaries
    whole = run(EnergySegmenter(), x)
    parts = run(EnergySegmenter(), x, chunks)
    assert [(s.index, s.start_sample, s.end_sample) for s in parts] == [
        (s.index, s.start_sample, s.end_sample) for s in whole
    ]
    check_consistent(parts, x)


@settings(max_examples=30, deadline=None)
@given(
    chunks=st.lists(st.integers(min_value=50, max_value=20000), min_size=1, max_size=8),
    fixed=st.booleans(),
)
def test_chunking_invariance_property(chunks: list[int], fixed: bool) -> None:
    x = tone_bursts([(0.3, 1.0), (1.35, 1.6), (2.5, 7.7), (8.0, 8.5)], 9.0)

    def make() -> Segmenter:
        return FixedSegmenter(1.5, 1.0) if fixed else EnergySegmenter(max_segment_s=3.0)

    whole = run(make(), x)
    parts = run(make(), x, chunks)
    assert [(s.start_sample, s.end_sample) for s in parts] == [(s.start_sample, s.end_sample) for s in whole]
    check_consistent(parts, x)


def test_memory_is_bounded_on_a_long_stream() -> None:
    # 10 minutes of unbroken tone, fed in 1 s chunks: never more than one segment plus a chunk is held.
    second = tone_bursts([(0.0, 1.0)], 1.0)
    energy, fixed = EnergySegmenter(max_segment_s=10.0), FixedSegmenter(2.0, 0.5)
    n_energy = n_fixed = 0
    for _ in range(600):
        n_energy += len(energy.feed(second))
        n_fixed += len(fixed.feed(second))
        assert energy.buffered_samples <= 11 * RATE
        assert fixed.buffered_samples <= 3 * RATE
    assert n_energy == 60
    assert n_fixed == (600 - 2) * 2 + 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_segment_s": 5.0, "max_segment_s": 2.0},
        {"max_segment_s": 0.001},
        {"min_silence_s": 0.0},
        {"energy_threshold_db": float("nan")},
        {"min_segment_s": -1.0},
    ],
)
def test_energy_settings_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        EnergySegmenter(**kwargs)


def test_feeding_after_finish_is_an_error() -> None:
    for segmenter in (EnergySegmenter(), FixedSegmenter()):
        segmenter.finish()
        assert segmenter.finish() == []
        with pytest.raises(RuntimeError):
            segmenter.feed(np.zeros(10, np.float32))


def test_segmenters_take_mono_only() -> None:
    with pytest.raises(ValueError, match="1-D mono"):
        EnergySegmenter().feed(np.zeros((10, 2), np.float32))


# ---------------------------------------------------------------------------------------- fixed


def test_fixed_windows_without_overlap_and_a_final_partial_window() -> None:
    x = make_signal(5.5, RATE, 1)[:, 0]
    segments = run(FixedSegmenter(2.0, 2.0), x, 1234)
    assert bounds_s(segments) == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.5)]
    check_consistent(segments, x)


def test_fixed_windows_with_overlap() -> None:
    x = make_signal(5.5, RATE, 1)[:, 0]
    segmenter = FixedSegmenter(2.0, 1.0)
    segments = run(segmenter, x, 777)
    assert bounds_s(segments) == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (3.0, 5.0), (4.0, 5.5)]
    check_consistent(segments, x)
    assert segmenter.covered_samples == x.size


def test_fixed_windows_with_gaps() -> None:
    x = make_signal(7.0, RATE, 1)[:, 0]
    segmenter = FixedSegmenter(1.0, 3.0)
    segments = run(segmenter, x, 5000)
    assert bounds_s(segments) == [(0.0, 1.0), (3.0, 4.0), (6.0, 7.0)]
    check_consistent(segments, x)
    assert segmenter.covered_samples == 3 * RATE


def test_fixed_final_window_rules() -> None:
    x = make_signal(4.05, RATE, 1)[:, 0]
    # 50 ms of tail is under min_final_s: not emitted.
    assert bounds_s(run(FixedSegmenter(2.0, 2.0, min_final_s=0.1), x)) == [(0.0, 2.0), (2.0, 4.0)]
    assert bounds_s(run(FixedSegmenter(2.0, 2.0, min_final_s=0.01), x))[-1] == (4.0, 4.05)
    # A stream shorter than one window is one short window.
    assert bounds_s(run(FixedSegmenter(2.0), x[: RATE // 2])) == [(0.0, 0.5)]
    # Overlapping windows: nothing new after the last full window -> no tail.
    assert bounds_s(run(FixedSegmenter(2.0, 1.0), x[: 4 * RATE])) == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0)]


def test_fixed_settings_are_validated() -> None:
    for window_s, hop_s in ((0.0, 1.0), (1.0, 0.0), (1.0, -1.0), (float("inf"), 1.0)):
        with pytest.raises(ValueError):
            FixedSegmenter(window_s, hop_s)


# ---------------------------------------------------------------------------------------- decoder


def feed_in_chunks(decoder: StreamDecoder, data: bytes, sizes: list[int]) -> np.ndarray:
    out, pos, i = [], 0, 0
    while pos < len(data):
        out.append(decoder.feed(data[pos : pos + sizes[i % len(sizes)]]))
        pos, i = pos + sizes[i % len(sizes)], i + 1
    out.append(decoder.finish())
    return np.concatenate(out)


@pytest.mark.parametrize(
    ("encoding", "rate", "channels"), [("s16le", 44100, 2), ("f32le", 8000, 1), ("s16le", 48000, 6)]
)
def test_stream_decoder_matches_whole_decoding_whatever_the_chunking(
    encoding: PcmEncoding, rate: int, channels: int
) -> None:
    signal = make_signal(3.0, rate, channels)
    data = pcm_bytes(signal, encoding)
    outputs = []
    # Odd sizes split samples and frames, so remainders are carried between calls.
    for sizes in ([len(data)], [1, 2, 3, 4097], [333]):
        decoder = StreamDecoder(encoding, rate, channels)
        out = feed_in_chunks(decoder, data, sizes)
        assert out.dtype == np.float32
        assert decoder.input_frames == signal.shape[0]
        assert decoder.duration_s == pytest.approx(3.0)
        assert decoder.output_samples == out.size
        outputs.append(out)
    for out in outputs[1:]:
        np.testing.assert_allclose(out, outputs[0], atol=1e-6)
    # Streaming and one-shot resampling agree (the one-shot filter sees both edges; compare inside).
    whole = decode_pcm(data, encoding, rate, channels)
    assert outputs[0].size == pytest.approx(whole.size, abs=2)
    np.testing.assert_allclose(outputs[0][1000:-1000], whole[1000:-1000], atol=2e-4)


def test_stream_decoder_one_byte_at_a_time() -> None:
    data = pcm_bytes(make_signal(0.25, 16000, 2), "s16le")
    decoder = StreamDecoder("s16le", 16000, 2)
    out = feed_in_chunks(decoder, data, [1])
    np.testing.assert_array_equal(out, decode_pcm(data, "s16le", 16000, 2))  # 16 kHz: no resampler


def test_stream_decoder_errors() -> None:
    with pytest.raises(AudioError, match="unsupported sample rate"):
        StreamDecoder("s16le", 100, 1)
    with pytest.raises(AudioError, match="unsupported channel count 0"):
        StreamDecoder("s16le", 16000, 0)
    with pytest.raises(AudioError, match="unsupported PCM encoding"):
        StreamDecoder("alaw", 16000, 1)  # type: ignore[arg-type]

    decoder = StreamDecoder("f32le", 16000, 1)
    bad = np.zeros(100, np.float32)
    bad[50] = np.inf
    with pytest.raises(AudioError, match="NaN or infinite") as info:
        decoder.feed(bad.tobytes())
    assert info.value.reason == "non_finite"
    decoder = StreamDecoder("f32le", 16000, 1)
    bad[50] = 1e30
    with pytest.raises(AudioError, match="beyond") as info:
        decoder.feed(bad.tobytes())
    assert info.value.reason == "out_of_range"

    decoder = StreamDecoder("s16le", 16000, 2)
    decoder.feed(b"\x00" * 7)  # one frame and 3 bytes
    with pytest.raises(AudioError, match="3 trailing bytes") as info:
        decoder.finish()
    assert info.value.reason == "bad_length"
    with pytest.raises(RuntimeError):
        decoder.feed(b"\x00" * 4)


def test_stream_decoder_feeds_the_segmenter_end_to_end() -> None:
    """44.1 kHz stereo s16 bursts through the decoder and the energy segmenter, in odd-sized chunks."""
    bursts = [(0.5, 2.0), (3.0, 4.5)]
    mono = tone_bursts(bursts, 5.0, rate=44100)
    data = pcm_bytes(np.stack([mono, mono], axis=1), "s16le")
    decoder, segmenter = StreamDecoder("s16le", 44100, 2), EnergySegmenter()
    segments: list[Segment] = []
    for pos in range(0, len(data), 3001):
        segments += segmenter.feed(decoder.feed(data[pos : pos + 3001]))
    segments += segmenter.feed(decoder.finish())
    segments += segmenter.finish()
    assert len(segments) == 2
    for (start, end), seg in zip(bursts, segments, strict=True):
        assert seg.start_s == pytest.approx(start, abs=0.021)
        assert seg.end_s == pytest.approx(end, abs=0.021)
