"""Long recordings through a server process with its default limits (30 s per pass, 2 h per call), and the
command-line client on them: 10 minutes here; 1 hour in a slow-marked test (see DESIGN.md, "Long
recordings", for its measured time and why CI runs it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from emotion.v1 import emotion_pb2, emotion_pb2_grpc

from emotion2vec_serving.clients.cli import main as client_main
from emotion2vec_serving.server.process import ServerProcess
from tests.support.longform import RATE, Recording, recording
from tests.support.metrics import metric_value
from tests.support.servers import server_process

MiB = 1 << 20


def _recognize(target: str, data: bytes, *, frames: bool, max_bytes: int = 32 * MiB,
               timeout: float = 600.0) -> emotion_pb2.RecognizeResponse:
    options = [("grpc.max_send_message_length", max_bytes), ("grpc.max_receive_message_length", max_bytes)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
        request = emotion_pb2.RecognizeRequest(
            audio=emotion_pb2.Audio(encoded=data), return_embedding=True,
            granularity=emotion_pb2.GRANULARITY_FRAME if frames else emotion_pb2.GRANULARITY_UTTERANCE,
        )
        response: emotion_pb2.RecognizeResponse = stub.Recognize(request, timeout=timeout)
        return response


def _check(response: emotion_pb2.RecognizeResponse, rec: Recording, max_segment_s: float) -> None:
    segs = list(response.segments)
    assert response.duration_s == pytest.approx(rec.duration_s, abs=1e-3)
    # Every sentence is a segment of its own, in order, each with a result.
    assert [(round(s.start_s * RATE), round(s.end_s * RATE)) for s in segs] == list(rec.clips)
    assert all(s.result.label and s.end_s - s.start_s <= max_segment_s for s in segs)
    weights = np.array([s.end_s - s.start_s for s in segs])
    stacked = np.array([[x.score for x in s.result.scores] for s in segs])
    np.testing.assert_allclose([x.score for x in response.utterance.scores],
                               weights @ stacked / weights.sum(), atol=1e-5)
    counts = np.array([s.frame_count for s in segs], np.float64)
    if counts.sum():
        assert counts.sum() == len(response.frames)


def test_ten_minutes_and_the_command_line_client(
    tiny_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = recording(600.0)
    wav = tmp_path / "ten_minutes.wav"
    wav.write_bytes(rec.wav())
    assert wav.stat().st_size < 32 * MiB  # fits the default message size as 16 kHz int16 WAV
    with server_process(tiny_repo) as srv:
        response = _recognize(srv.target, wav.read_bytes(), frames=True)
        _check(response, rec, 30.0)
        assert len(response.frames) == pytest.approx(50 * response.voiced_s, rel=0.02)  # 50 Hz of speech
        # The command-line client: result.json keeps its fields and gains the segments; plot draws it all.
        out = tmp_path / "outputs"
        capsys.readouterr()
        assert client_main(["--target", srv.target, "recognize", str(wav), "--granularity", "frame",
                            "--output-dir", str(out)]) == 0
        progress = capsys.readouterr().err
        assert f"[{len(rec.clips)} segments, 600 s audio in" in progress  # the per-file line
        assert "600.0/600.0" in progress  # the bar counts seconds of audio
        (result_json,) = out.glob("outputs_*/result.json")
        saved = json.loads(result_json.read_text())
        assert saved["emotion"] == response.utterance.label and saved["duration_s"] == pytest.approx(600.0)
        assert len(saved["segments"]) == len(rec.clips) and len(saved["frames"]) == len(response.frames)
        first = saved["segments"][1]
        frames = saved["frames"][first["first_frame"] : first["first_frame"] + first["frame_count"]]
        assert frames[0]["start_s"] == pytest.approx(first["start_s"], abs=1e-6)
        png = tmp_path / "timeline.png"
        assert client_main(["--target", srv.target, "plot", str(wav), "--out", str(png)]) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        text = srv.scrape()
    # Three long calls (ours, the client's recognize and its plot), each of one segment per sentence.
    assert metric_value(text, "emotion_request_segments_count", rpc="Recognize") == 3
    assert metric_value(text, "emotion_request_segments_sum", rpc="Recognize") == 3 * len(rec.clips)


@pytest.mark.slow
@pytest.mark.timeout(2100)  # the call's own deadline is 1,800 s; pytest's global one 600 s
def test_one_hour(tiny_repo: Path, tmp_path: Path) -> None:
    """One hour as a 16 kHz WAV (115 MB: the server and client allow 160 MiB messages here; the default
    32 MiB takes an hour as compressed audio)."""
    rec = recording(3600.0)
    data = rec.wav()
    with ServerProcess(tiny_repo, ["--no-warmup", "--max-message-bytes", str(160 * MiB)]) as srv:
        started = time.monotonic()
        response = _recognize(srv.target, data, frames=False, max_bytes=161 * MiB, timeout=1800.0)
        took = time.monotonic() - started
    _check(response, rec, 30.0)
    print(f"1 h recording, tiny model: {len(response.segments)} segments in {took:.1f} s")
