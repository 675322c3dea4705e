"""``emotion-client cluster``: K-Means over an archive's embeddings.

Three clearly different espeak-ng voices (a low male voice, a high female voice, a whispering one, at
different pitches) each say six different sentences; every recording is recognised by a real server process,
so the summary's scores are real answers.

The voice-separation test cannot use the test model's embeddings: the tiny model has random weights and its
utterance embeddings collapse onto one direction (cosine similarity >= 0.97 between any two inputs, white
noise included), so they follow no voice; no trained checkpoint is available to the tests. That test clusters
a voice embedding computed from the same recordings instead (their long-term average log spectrum, what
speaker clustering starts from), and checks that each voice lands in a cluster of its own, with k chosen
by silhouette. A second test runs the command on the server's own embeddings, an error row included.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from emotion2vec_serving.clients import EmotionClient
from emotion2vec_serving.clients.archive.schema import SCORE_PREFIX
from emotion2vec_serving.clients.archive_merge import read_summary
from emotion2vec_serving.clients.cli import main
from tests.support.archive_rows import recognize_rows, write_archive

#: (espeak-ng voice, pitch 0-99)
VOICES = (("en+m3", 0), ("en+f4", 99), ("en+whisper", 50))
TEXTS = (
    "Hello, how can I help you today?",
    "I would like to cancel my order.",
    "The weather is nice outside.",
    "Please hold the line for a moment.",
    "My account number is one two three.",
    "Thank you for calling, goodbye.",
)

Archive = tuple[list[str], list[dict[str, Any]], npt.NDArray[np.float32], dict[str, int]]


@cache
def _speech(voice: str, pitch: int, text: str) -> bytes:
    return subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "--stdout", text],
                          capture_output=True, check=True).stdout


def voice_embedding(wav: bytes, bands: int = 24) -> npt.NDArray[np.float32]:
    """Long-term average spectrum in log-spaced bands (100 Hz - 5 kHz), in dB about its own mean: the
    voice's timbre and pitch range, independent of level and of what is said."""
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    n = 2048  # 10.8 Hz bins at espeak-ng's 22.05 kHz: every band holds some
    frames = np.lib.stride_tricks.sliding_window_view(samples, n)[:: n // 2] * np.hanning(n)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    edges = np.geomspace(100.0, 5000.0, bands + 1)
    band = np.array([power[(freqs >= lo) & (freqs < hi)].mean() for lo, hi in itertools.pairwise(edges)])
    db = 10.0 * np.log10(band + 1e-12)
    return (db - db.mean()).astype(np.float32)


@pytest.fixture(scope="module")
def voices(target: str, tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("voices")
    paths, voice_of = [], {}
    for v, (voice, pitch) in enumerate(VOICES):
        for t, text in enumerate(TEXTS):
            path = root / f"voice{v}" / f"call{t}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_speech(voice, pitch, text))
            paths.append(path)
            voice_of[str(path)] = v
    with EmotionClient(target=target) as client:
        names, rows, server_embeddings = recognize_rows(client, paths)
    assert all(r["status"] == "ok" for r in rows)
    return names, rows, server_embeddings, voice_of


def _clusters_csv(out: Path) -> list[dict[str, str]]:
    with open(out / "clusters.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("k", ["auto", "3"])
def test_each_voice_gets_its_own_cluster(voices: Archive, tmp_path: Path, k: str) -> None:
    names, rows, _, voice_of = voices
    matrix = np.stack([voice_embedding(Path(r["path"]).read_bytes()) for r in rows])
    summary = write_archive(tmp_path / "summary.jsonl", names, rows, matrix)
    out = tmp_path / "clusters"
    assert main(["cluster", str(summary), "--embeddings", str(summary.with_suffix(".npy")),
                 "--k", k, "--out", str(out)]) == 0

    info = json.loads((out / "clusters.json").read_text())
    assert info["k"] == 3
    if k == "auto":
        assert info["k_chosen_by"] == "silhouette"
        assert max(info["silhouette"], key=info["silhouette"].get) == "3"
    clustered = read_summary(out / "summary.jsonl")
    assert clustered.columns == [*names, "cluster"]
    assert [{c: r[c] for c in names} for r in clustered.rows] == read_summary(summary).rows
    cluster_of_voice: dict[int, set[int]] = {}
    for row in clustered.rows:
        cluster_of_voice.setdefault(voice_of[row["path"]], set()).add(row["cluster"])
    assert all(len(c) == 1 for c in cluster_of_voice.values()), cluster_of_voice  # a voice is one cluster
    assert len(set().union(*cluster_of_voice.values())) == 3  # and the voices' clusters differ

    table = _clusters_csv(out)
    assert [int(t["size"]) for t in table] == [len(TEXTS)] * 3
    score_cols = [c for c in names if c.startswith(SCORE_PREFIX)]
    for t in table:
        members = [r for r in clustered.rows if r["cluster"] == int(t["cluster"])]
        means = {c: float(np.mean([m[c] for m in members])) for c in score_cols}
        assert {c: float(t[f"mean_{c}"]) for c in score_cols} == pytest.approx(means, abs=1e-9)
        assert t["label"] == max(means, key=means.__getitem__)[len(SCORE_PREFIX):]
    png = (out / "clusters.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (900, 700)


def test_cluster_of_the_servers_embeddings(
    voices: Archive, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names, rows, server_embeddings, _ = voices
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really")
    with EmotionClient(target=target) as client:
        _, error_rows, _ = recognize_rows(client, [broken])
    assert error_rows[0]["status"] != "ok"
    all_rows = rows + error_rows
    matrix = np.concatenate([server_embeddings, np.full((1, server_embeddings.shape[1]), np.nan, np.float32)])
    summary = write_archive(tmp_path / "summary.parquet", names, all_rows, matrix)
    out = tmp_path / "clusters"
    assert main(["cluster", str(summary), "--embeddings", str(summary.with_suffix(".npy")),
                 "--k", "2", "--out", str(out)]) == 0
    assert "k=2: 18 rows clustered" in capsys.readouterr().err
    clustered = read_summary(out / "summary.parquet").rows
    assert len(clustered) == len(all_rows)
    assert [r["cluster"] for r in clustered if r["status"] != "ok"] == [None]
    assert {r["cluster"] for r in clustered if r["status"] == "ok"} == {0, 1}
    assert sum(int(t["size"]) for t in _clusters_csv(out)) == len(rows)
    assert json.loads((out / "clusters.json").read_text())["excluded"] == 1


def test_cluster_refuses_embeddings_of_another_summary(voices: Archive, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    names, rows, server_embeddings, _ = voices
    summary = write_archive(tmp_path / "a.csv", names, rows[:6], server_embeddings[:6])
    other = write_archive(tmp_path / "b.csv", names, rows[6:], server_embeddings[6:])
    code = main(["cluster", str(summary), "--embeddings", str(other.with_suffix(".npy")), "--out",
                 str(tmp_path / "out")])
    assert code == 2
    assert "not its embeddings" in capsys.readouterr().err
