"""Malformed-audio generators shared by the in-process fuzz tests and the gRPC fuzz tests.

Everything is built from real encoded files (ffmpeg) or from the byte layouts of the formats, so the
fuzzers reach deep into the demuxers and decoders instead of bouncing off the format sniffer.
"""

from __future__ import annotations

import functools
import struct
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from tests.support.audio import encode, make_signal

# Every reason server.audio.AudioError may carry (its docstring); anything else is a new, untested path.
AUDIO_ERROR_REASONS = frozenset(
    {
        "empty",
        "too_large",
        "undecodable",
        "unsupported_encoding",
        "no_audio_stream",
        "too_short",
        "too_long",
        "non_finite",
        "out_of_range",
        "bad_sample_rate",
        "bad_channels",
        "bad_length",
        "invalid_audio",
    }
)

# Requests tests/reliability/test_fuzz_grpc.py sends through the real server (tests/reliability/
# test_fuzz_decoding.py checks that with its in-process examples they add up to at least 10,000).
ENCODED_CASES = 240
RAW_CASES = 60
STREAM_CASES = 24  # hand-written malformed streams (test_fuzz_grpc.MALFORMED_STREAMS), each sent once
GRPC_FUZZ_CASES = ENCODED_CASES + RAW_CASES + STREAM_CASES

# Formats of tests/support/audio.FORMATS, i.e. every container and codec the server accepts.
SEED_FORMATS = ("wav", "wav_f32", "mp3", "m4a", "aac", "flac", "ogg_vorbis", "ogg_opus")

# Magic prefixes the sniffer keys on: random bodies behind them reach every demuxer.
MAGIC_PREFIXES = (
    b"RIFF\x24\x00\x00\x00WAVEfmt ",
    b"RF64\xff\xff\xff\xffWAVEds64",
    b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00",
    b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00",
    b"\x00\x00\x00\x18ftypisom",
    b"fLaC\x00\x00\x00\x22",
    b"fLaC",
    b"ID3\x04\x00\x00\x00\x00\x00\x10",
    b"ID3\x03\x00\x00\x7f\x7f\x7f\x7f",
    b"\xff\xfb\x90\x00",
    b"\xff\xf3\x28\xc4",
    b"\xff\xf1\x50\x80",
    b"\xff\xf9\x4c\x80",
)


@functools.cache
def seed_file(fmt: str) -> bytes:
    """A short real encoded file of ``fmt`` (0.4 s, stereo, 22.05 kHz) to mutate."""
    return encode(make_signal(0.4, 22050, 2, seed=7), 22050, fmt)


def seed_files() -> dict[str, bytes]:
    """Every seed file, encoded in parallel (ffmpeg start-up dominates)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(SEED_FORMATS, pool.map(seed_file, SEED_FORMATS), strict=True))


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    """A real file of a random format with one to four random corruptions."""
    fmt = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[fmt])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("truncate", "flip", "overwrite", "insert", "delete", "zero", "header")))
        n = len(data)
        if n == 0:
            break
        pos = draw(st.integers(0, n - 1))
        if op == "truncate":
            data = data[:pos]
        elif op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=64))
            data[pos : pos + len(chunk)] = chunk
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=256))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 512))]
        elif op == "zero":
            data[pos : pos + draw(st.integers(1, 4096))] = b""
            data[pos:pos] = bytes(draw(st.integers(1, 4096)))
        else:  # corrupt the first 64 bytes, where headers and declared sizes live
            hpos = draw(st.integers(0, min(63, n - 1)))
            data[hpos : hpos + 4] = draw(
                st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
            )
    return bytes(data)


@st.composite
def magic_then_noise(draw: st.DrawFn) -> bytes:
    """A recognised magic prefix followed by random bytes."""
    return draw(st.sampled_from(MAGIC_PREFIXES)) + draw(st.binary(max_size=2048))


@st.composite
def wav_with_hostile_header(draw: st.DrawFn) -> bytes:
    """A RIFF/WAVE file whose fmt and data chunks declare arbitrary (often absurd) values."""
    u32 = st.integers(0, 2**32 - 1)
    u16 = st.integers(0, 2**16 - 1)
    audio_format = draw(st.sampled_from([1, 3, 0, 2, 0x11, 0x55, 0xFFFE]) | u16)
    channels = draw(st.sampled_from([0, 1, 2, 8, 255, 65535]) | u16)
    rate = draw(st.sampled_from([0, 1, 8000, 16000, 44100, 384001, 2**31, 2**32 - 1]) | u32)
    bits = draw(st.sampled_from([0, 1, 8, 16, 24, 32, 64, 65535]) | u16)
    block_align = draw(st.sampled_from([0, max(1, channels * bits // 8) % 65536]) | u16)
    byte_rate = draw(st.sampled_from([0, rate * block_align % 2**32]) | u32)
    body = draw(st.binary(max_size=4096))
    declared_data = draw(st.sampled_from([0, len(body), 2**31, 2**32 - 1]) | u32)
    declared_riff = draw(st.sampled_from([36 + len(body), 0, 2**32 - 1]) | u32)
    fmt_chunk = struct.pack("<HHIIHH", audio_format, channels, rate, byte_rate, block_align, bits)
    fmt_size = draw(st.sampled_from([16, 18, 40, 0, 2**32 - 1]))
    return (
        b"RIFF"
        + struct.pack("<I", declared_riff)
        + b"WAVEfmt "
        + struct.pack("<I", fmt_size)
        + fmt_chunk
        + b"data"
        + struct.pack("<I", declared_data)
        + body
    )


@st.composite
def flac_with_hostile_streaminfo(draw: st.DrawFn) -> bytes:
    """``fLaC`` + a STREAMINFO block with arbitrary rate/channels/bits/total samples + random frames."""
    min_block = draw(st.integers(0, 65535))
    max_block = draw(st.integers(0, 65535))
    rate = draw(st.sampled_from([0, 1, 8000, 655350, 2**20 - 1]) | st.integers(0, 2**20 - 1))
    channels_m1 = draw(st.integers(0, 7))
    bits_m1 = draw(st.integers(0, 31))
    total = draw(st.sampled_from([0, 2**36 - 1, 10**10]) | st.integers(0, 2**36 - 1))
    packed = (rate << 44) | (channels_m1 << 41) | (bits_m1 << 36) | total
    streaminfo = struct.pack(">HH", min_block, max_block) + bytes(6) + packed.to_bytes(8, "big") + bytes(16)
    header = bytes([0x80]) + len(streaminfo).to_bytes(3, "big")  # last-metadata-block flag + type 0
    return b"fLaC" + header + streaminfo + draw(st.binary(max_size=2048))


@st.composite
def mp4_with_hostile_boxes(draw: st.DrawFn) -> bytes:
    """An ``ftyp`` box followed by boxes of random type with random (often huge) declared sizes."""
    out = bytearray(b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00M4A mp42")
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(
            st.sampled_from([b"moov", b"trak", b"mdia", b"stsd", b"mdat", b"stsz", b"stco", b"dref", b"url "])
        )
        size = draw(st.sampled_from([0, 1, 8, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1))
        out += struct.pack(">I", size) + kind
        if size == 1:  # 64-bit extended size
            out += struct.pack(">Q", draw(st.integers(0, 2**64 - 1)))
        out += draw(st.binary(max_size=512))
    return bytes(out)


def hostile_files() -> st.SearchStrategy[bytes]:
    """Every header-level generator in one strategy."""
    return st.one_of(
        wav_with_hostile_header(),
        flac_with_hostile_streaminfo(),
        mp4_with_hostile_boxes(),
        magic_then_noise(),
    )


# ------------------------------------------------------------------------------------------ bombs


def _ffmpeg(args: list[str], out_suffix: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="bomb-") as tmp:
        out = Path(tmp) / f"bomb.{out_suffix}"
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args, str(out)],
            check=True,
            capture_output=True,
        )
        return out.read_bytes()


# name -> (ffmpeg codec arguments, suffix, duration of silence in seconds). Low bit rates and 8 kHz keep
# the files small and quick to make; every one decodes to far more than the test's 5 s limit.
BOMB_SPECS: dict[str, tuple[tuple[str, ...], str, float]] = {
    "flac_1h": (("-c:a", "flac"), "flac", 3600.0),
    "mp3_1h": (("-c:a", "libmp3lame", "-b:a", "8k"), "mp3", 3600.0),
    "m4a_1h": (("-c:a", "aac", "-b:a", "8k"), "m4a", 3600.0),
    "aac_adts_1h": (("-c:a", "aac", "-b:a", "8k", "-f", "adts"), "aac", 3600.0),
    "ogg_vorbis_10min": (("-c:a", "libvorbis", "-q:a", "0"), "ogg", 600.0),
    "ogg_opus_2min": (("-c:a", "libopus", "-b:a", "6k"), "opus", 120.0),
}


def _bomb(name: str) -> bytes:
    codec, suffix, duration_s = BOMB_SPECS[name]
    return _ffmpeg(["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", str(duration_s), *codec], suffix)


@functools.lru_cache(maxsize=1)
def bombs() -> dict[str, bytes]:
    """Small files that decode to minutes or hours of audio, plus header-only ones that claim to."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        made = dict(zip(BOMB_SPECS, pool.map(_bomb, BOMB_SPECS), strict=True))
    # A FLAC written to a pipe declares no length: only counting decoded samples catches it.
    made["flac_1h_unknown_length"] = subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=8000:cl=mono",
            "-t",
            "3600",
            "-c:a",
            "flac",
            "-f",
            "flac",
            "pipe:1",
        ],
        check=True,
        capture_output=True,
    ).stdout
    # Headers that declare hours over a few bytes of data.
    pcm = np.zeros(800, "<i2").tobytes()
    made["wav_declares_37h"] = (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFF0)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data"
        + struct.pack("<I", 0xFFFFFFE0)
        + pcm
    )
    return made
