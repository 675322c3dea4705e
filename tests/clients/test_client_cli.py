"""``emotion-client`` commands against the real server: exit codes, printed output, files and their schema."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emotion2vec_serving.clients.cli import main, make_output_dir
from tests.support.clients import AudioSet, free_port

FOLDER = re.compile(r"^outputs_\d{8}_\d{6}(_\d+)?$")


def run(target: str, *args: str) -> int:
    return main(["--target", target, *args])


def _check_result_json(doc: dict[str, object], labels: list[str], granularity: str) -> None:
    assert {"emotion", "confidence", "scores", "granularity", "input", "timing", "model"} <= set(doc)
    scores = doc["scores"]
    assert isinstance(scores, dict) and list(scores) == labels
    assert math.isclose(sum(scores.values()), 1.0, abs_tol=1e-4)
    assert doc["emotion"] == max(scores, key=lambda k: scores[k])
    assert doc["confidence"] == pytest.approx(scores[doc["emotion"]])
    assert doc["granularity"] == granularity
    assert isinstance(doc["timing"], dict) and doc["timing"]["total_ms"] > 0
    assert isinstance(doc["model"], dict) and doc["model"]["untrained"] is True


def _labels(target: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert run(target, "info") == 0
    info = json.loads(capsys.readouterr().out)
    return [label["name"] for label in info["labels"]]


def test_recognize_writes_one_webui_folder_per_input(
    target: str, audio: AudioSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = _labels(target, capsys)
    out = tmp_path / "outputs"
    code = run(target, "recognize", str(audio.directory), "--granularity", "frame", "--embedding",
               "--output-dir", str(out), "--concurrency", "3", "--no-progress")  # fmt: skip
    assert code == 0
    folders = sorted(out.iterdir())
    inputs = {audio.wav, audio.flac, audio.mp3, audio.ogg}  # notes.txt is not audio: skipped
    assert len(folders) == len(inputs)
    assert all(FOLDER.match(f.name) for f in folders)
    seen = set()
    dim = None
    for folder in folders:
        doc = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        _check_result_json(doc, labels, "frame")
        seen.add(Path(str(doc["input"])))
        frames = doc["frames"]
        assert isinstance(frames, list) and len(frames) > 10
        assert set(frames[0]) >= {"start_s", "end_s", "emotion", "confidence", "scores"}
        assert len(frames) == pytest.approx(float(doc["duration_s"]) * 50, abs=2)
        emb = np.load(folder / "embedding.npy")
        assert emb.dtype == np.float32 and emb.ndim == 1
        dim = dim or emb.shape[0]
        assert emb.shape == (dim,)
    assert seen == inputs


def test_recognize_json_lines_to_stdout(
    target: str,
    audio: AudioSet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    labels = _labels(target, capsys)
    monkeypatch.chdir(tmp_path)
    assert run(target, "recognize", str(audio.wav), str(audio.mp3), "--json", "--no-progress") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    docs = [json.loads(line) for line in lines]
    assert {d["input"] for d in docs} == {str(audio.wav), str(audio.mp3)}
    for doc in docs:
        _check_result_json(doc, labels, "utterance")
        assert "frames" not in doc and "embedding" not in doc
    assert not (tmp_path / "outputs").exists()  # --json writes no files


def test_recognize_reports_bad_inputs_and_keeps_going(
    target: str, audio: AudioSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEfmt not really")
    out = tmp_path / "out"
    assert run(target, "recognize", str(bad), str(audio.ogg), "--output-dir", str(out), "--no-progress") == 1
    err = capsys.readouterr().err
    assert "broken.wav" in err and "INVALID_ARGUMENT" in err
    assert len(list(out.iterdir())) == 1  # the good file still has its folder
    assert run(target, "recognize", str(tmp_path / "missing.wav")) == 2


def test_output_folders_never_collide(tmp_path: Path) -> None:
    moment = datetime(2024, 5, 1, 12, 30, 45)
    names = [make_output_dir(tmp_path, moment).name for _ in range(3)]
    assert names == ["outputs_20240501_123045", "outputs_20240501_123045_1", "outputs_20240501_123045_2"]


def test_embed_to_npy_and_stdout(
    target: str, audio: AudioSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "emb" / "speech.npy"
    assert run(target, "embed", str(audio.wav), "--frames", "--out", str(out)) == 0
    emb = np.load(out)
    frames = np.load(out.with_name("speech.frames.npy"))
    assert frames.shape == ((6 * 16000 - 400) // 320 + 1, emb.shape[0])
    np.testing.assert_allclose(frames.mean(axis=0), emb, atol=1e-4)
    capsys.readouterr()
    assert run(target, "embed", str(audio.ogg)) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dim"] == len(doc["embedding"]) == emb.shape[0]


def test_stream_prints_segments_then_summary(
    target: str, audio: AudioSet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(target, "stream", str(audio.wav), "--chunk-ms", "200", "--json") == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [d["type"] for d in docs] == ["segment"] * (len(docs) - 1) + ["summary"]
    assert docs[-1]["segments"] == len(docs) - 1
    assert docs[-1]["duration_s"] == pytest.approx(6.0, abs=0.05)
    assert [d["segment_id"] for d in docs[:-1]] == list(range(len(docs) - 1))
    # Fixed 1.5 s windows over 6 s: four segments, printed as text lines.
    assert run(target, "stream", str(audio.wav), "--segmentation", "fixed", "--window-s", "1.5") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("summary: 4 segments")


def test_stream_realtime_takes_the_audio_duration(
    target: str, audio: AudioSet, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    started = time.monotonic()
    assert run(target, "stream", str(audio.ogg), "--realtime", "--chunk-ms", "100") == 0
    assert time.monotonic() - started >= 1.8  # 2 s of audio paced in real time
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("summary:")


def test_health_and_info(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(target, "health") == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert run(target, "health", "--service", "") == 0
    capsys.readouterr()
    assert run(target, "info") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sample_rate_hz"] == 16000 and info["embedding_dim"] > 0 and info["labels"]
    assert info["warnings"] == []
    assert run(f"127.0.0.1:{free_port()}", "--retries", "0", "health") == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


@pytest.mark.parametrize(("width", "height"), [(800, 400), (1234, 567)])
def test_plot_writes_a_png_of_the_requested_size(
    target: str, audio: AudioSet, tmp_path: Path, width: int, height: int
) -> None:
    out = tmp_path / f"plot_{width}.png"
    assert run(target, "plot", str(audio.wav), "--out", str(out), "--width", str(width),
               "--height", str(height)) == 0  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        assert image.size == (width, height)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10  # lines and shading were drawn, not a blank canvas
    colours = {tuple(p) for p in pixels.reshape(-1, 3)[::97].astype(int)}
    assert len(colours) > 20


def test_console_script_entry_point(target: str, audio: AudioSet, tmp_path: Path) -> None:
    exe = shutil.which("emotion-client", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "emotion2vec_serving.clients.cli"]
    env_target = {"EMOTION_TARGET": target, "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run([*cmd, "recognize", str(audio.ogg), "--json", "--no-progress"], capture_output=True,
                          text=True, env=env_target, cwd=tmp_path, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["input"] == str(audio.ogg)
    usage = subprocess.run(
        [*cmd, "bogus"], capture_output=True, text=True, env=env_target, timeout=60, check=False
    )
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


def test_stub_example_once_and_http_front_end(target: str, audio: AudioSet) -> None:
    """examples/stub_client.py, which uses only the generated stubs, against the real server."""
    import urllib.error
    import urllib.request

    script = Path(__file__).resolve().parents[2] / "examples" / "stub_client.py"
    once = subprocess.run([sys.executable, str(script), "--target", target, "once", str(audio.mp3)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert once.returncode == 0, once.stderr
    doc = json.loads(once.stdout)
    assert doc["emotion"] in doc["scores"] and doc["untrained"] is True

    port = free_port()
    serve = [sys.executable, str(script), "--target", target, "serve", "--http-port", str(port)]
    proc = subprocess.Popen(serve, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}/recognize"
        with urllib.request.urlopen(
            urllib.request.Request(url, data=audio.ogg.read_bytes()), timeout=30
        ) as reply:
            assert reply.status == 200
            assert json.loads(reply.read())["emotion"] in doc["scores"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, data=b"not audio" * 50), timeout=30)
        assert refused.value.code == 400
        assert json.loads(refused.value.read())["code"] == "INVALID_ARGUMENT"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_plot_segments_absorb_flicker() -> None:
    from emotion2vec_serving.clients.plot import label_runs

    assert label_runs([]) == []
    assert label_runs(list("aaabbc")) == [(0, 3, "a"), (3, 5, "b"), (5, 6, "c")]
    # One-frame flickers are absorbed, and the run they interrupted continues.
    assert label_runs(list("aaaabaaaacccc"), min_frames=2) == [(0, 9, "a"), (9, 13, "c")]
