"""No request field reaches the filesystem: audio bytes that name files are refused, nothing opens them.

FFmpeg can follow references inside media: HLS playlists, ``ffconcat`` scripts, SDP, ``file:`` URLs. A
file referenced that way here is a named pipe (FIFO) watched by a thread that tries to open it for writing
without blocking, which only succeeds while someone has it open for reading. So any open of it, from
Python or from C inside FFmpeg or libsndfile, is detected. The detector is itself tested first.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from emotion.v1 import emotion_pb2 as pb

from emotion2vec_serving.server.audio.decode import decode_encoded
from emotion2vec_serving.server.audio.errors import AudioError, AudioLimits
from tests.support.polling import wait_until
from tests.support.servers import Running, StartServer

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")


class OpenDetector:
    """Watches a FIFO; ``opened`` becomes true if anything opens it for reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.opened = threading.Event()
        self.cycles = 0  # watch iterations done (the thread alone writes it)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader, the normal case
                    raise
            else:
                self.opened.set()
                os.close(fd)  # gives the reader EOF, so it cannot hang
            self.cycles += 1
            time.sleep(0.0005)

    def __enter__(self) -> OpenDetector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Not a fixed sleep: let the watcher complete two more full cycles, so an open that happened before
        # this point (the reader still holding the FIFO) has been looked for at least once more.
        target = self.cycles + 2
        wait_until(lambda: self.cycles >= target, timeout_s=10, interval_s=0.001,
                   message="the FIFO watcher kept running")
        self._stop.set()
        self.thread.join(5)


@pytest.fixture
def bait(tmp_path: Path) -> Iterator[OpenDetector]:
    with OpenDetector(tmp_path / "secret.wav") as detector:
        yield detector


def test_the_detector_sees_an_open(bait: OpenDetector) -> None:
    fd = os.open(bait.path, os.O_RDONLY)  # blocks until the detector's writer opens: that is the signal
    os.close(fd)
    assert bait.opened.wait(2)


def hostile_payloads(path: Path) -> dict[str, bytes]:
    p = str(path)
    return {
        "hls playlist, path": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{p}\n".encode(),
        "hls playlist, file url": f"#EXTM3U\n#EXTINF:10,\nfile://{p}\n#EXT-X-ENDLIST\n".encode(),
        "hls behind an ID3 tag": b"ID3\x04\x00\x00\x00\x00\x00\x00" + f"#EXTM3U\n#EXTINF:1,\n{p}\n".encode(),
        "ffconcat": f"ffconcat version 1.0\nfile '{p}'\n".encode(),
        "ffconcat behind ID3": b"ID3\x04\x00\x00\x00\x00\x00\x00"
        + f"ffconcat version 1.0\nfile '{p}'\n".encode(),
        "sdp": f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nm=audio 9 RTP/AVP 0\na=x:{p}\n".encode(),
        "bare path": p.encode(),
        "file url": f"file:{p}".encode(),
        "concat protocol": f"concat:{p}|{p}".encode(),
        "subfile protocol": f"subfile,,start,0,end,0,,:{p}".encode(),
        "wav whose list chunk names the path": b"RIFF\x40\x00\x00\x00WAVELIST\x20\x00\x00\x00"
        + p.encode()[:32].ljust(32, b"\x00"),
    }


def test_decoding_never_opens_a_file_named_in_the_audio(bait: OpenDetector) -> None:
    limits = AudioLimits(max_duration_s=5.0)
    opened_from_python: list[str] = []

    def audit(event: str, args: tuple[object, ...]) -> None:
        if threading.current_thread() is bait.thread:
            return  # the detector's own probing opens
        if event == "open" and args and str(args[0]) == str(bait.path):
            opened_from_python.append(event)

    sys.addaudithook(audit)  # permanent for the process, but it only reacts to this test's FIFO path
    for name, data in hostile_payloads(bait.path).items():
        with pytest.raises(AudioError):
            decode_encoded(data, limits)
        assert not bait.opened.is_set(), f"{name}: the decoder opened the referenced file"
    assert not opened_from_python


async def test_the_server_never_opens_a_file_named_in_a_request(
    start_server: StartServer, bait: OpenDetector
) -> None:
    running: Running = await start_server()
    for name, data in hostile_payloads(bait.path).items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await running.stub.Recognize(pb.RecognizeRequest(audio=pb.Audio(encoded=data)), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, info.value.details())
    assert not bait.opened.is_set()
