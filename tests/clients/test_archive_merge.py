"""``emotion-client merge``: shard summaries of real recognitions (a real server, real encoded audio)
concatenate to the unsharded summary, in any mix of the three formats, embeddings included; overlapping
shards are refused with an error naming the recordings, and nothing is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from emotion2vec_serving.clients import EmotionClient
from emotion2vec_serving.clients.archive_merge import read_embeddings, read_summary
from emotion2vec_serving.clients.cli import main
from tests.support.archive_rows import recognize_rows, shard_of, write_archive
from tests.support.audio import espeak_ng_wav
from tests.support.clients import AudioSet

Archive = tuple[list[str], list[dict[str, Any]], npt.NDArray[np.float32]]


@pytest.fixture(scope="module")
def archive(target: str, audio: AudioSet, tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """A small nested archive (4 formats, espeak-ng speech, a broken file) recognised by the real server."""
    root = tmp_path_factory.mktemp("archive")
    files = [audio.wav, audio.flac, audio.mp3, audio.ogg]
    for i, text in enumerate(["Hello, how can I help you?", "I want my money back.", "Thank you, goodbye."]):
        path = root / f"day{i % 2}" / "calls" / f"call{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(espeak_ng_wav(text))
        files.append(path)
    # Shards hash the whole path and pytest's temporary folder differs from run to run: copies of one
    # recording are added until each shard of 2 and of 3 holds one, so every merge below merges something.
    speech = files[-1]
    while any(all(shard_of(str(f), n) != i for f in files) for n in (2, 3) for i in range(n)):
        extra = speech.with_name(f"extra{len(files)}.wav")
        extra.write_bytes(speech.read_bytes())
        files.append(extra)
    broken = root / "day1" / "broken.wav"
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really")
    files.append(broken)
    with EmotionClient(target=target) as client:
        names, rows, matrix = recognize_rows(client, files)
    assert [r["status"] for r in rows].count("ok") == len(files) - 1
    return names, rows, matrix


def _shards(archive: Archive, tmp_path: Path, n: int, formats: list[str]) -> list[Path]:
    names, rows, matrix = archive
    out = []
    for i in range(n):
        mine = [j for j, row in enumerate(rows) if shard_of(row["path"], n) == i]
        shard = tmp_path / f"shard{i}{formats[i]}"
        out.append(write_archive(shard, names, [rows[j] for j in mine], matrix[mine]))
    return out


@pytest.mark.parametrize("out_format", [".csv", ".jsonl", ".parquet"])
def test_merge_of_shards_equals_the_whole(archive: Archive, tmp_path: Path, out_format: str) -> None:
    names, rows, matrix = archive
    whole = write_archive(tmp_path / "whole.parquet", names, rows, matrix)
    shards = _shards(archive, tmp_path, 3, [".csv", ".jsonl", ".parquet"])
    assert all(read_summary(s).rows for s in shards), "every shard has rows: the merge has something to do"
    out = tmp_path / f"merged{out_format}"
    code = main(["merge", str(out), *map(str, shards),
                 "--embeddings", *(str(s.with_suffix(".npy")) for s in shards),
                 "--embeddings-out", str(tmp_path / "merged.npy")])
    assert code == 0
    merged, expected = read_summary(out), read_summary(whole)
    assert merged.columns == expected.columns == names
    assert merged.rows == expected.rows
    got, got_keys = read_embeddings(tmp_path / "merged.npy")
    want, want_keys = read_embeddings(whole.with_suffix(".npy"))
    assert got_keys == want_keys == [(r["path"], r["channel"]) for r in expected.rows]
    np.testing.assert_array_equal(got, want)  # NaN rows (the broken file) compare equal too
    assert np.isnan(got).all(axis=1).sum() == 1


def test_merge_refuses_overlapping_shards(
    archive: Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = archive[0]
    shards = _shards(archive, tmp_path, 2, [".jsonl", ".csv"])
    # A third shard that repeats two recordings of shard 0 (as a run with the wrong --shard would).
    again = read_summary(shards[0]).rows[:2]
    overlap = write_archive(tmp_path / "overlap.parquet", names, again)
    out = tmp_path / "merged.csv"
    code = main(["merge", str(out), *map(str, shards), str(overlap)])
    err = capsys.readouterr().err
    assert code == 2
    assert "2 recording(s) appear in more than one shard" in err
    for row in again:
        assert f"{row['path']} (channel mix) in {shards[0]} and {overlap}" in err
    assert not out.exists()


def test_merge_refuses_the_same_shard_twice(
    archive: Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names, rows, matrix = archive
    shard = write_archive(tmp_path / "all.csv", names, rows, matrix)
    out = tmp_path / "merged.jsonl"
    assert main(["merge", str(out), str(shard), str(shard)]) == 2
    assert f"{len(rows)} recording(s) appear in more than one shard" in capsys.readouterr().err
    assert not out.exists()
