"""``emotion-client recognize`` in archive mode against a real server process (tiny model) and a generated
archive of real encoded files: summaries in every format, resume after SIGKILL, shards, s3:// URLs."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emotion2vec_serving.clients import EmotionClient
from emotion2vec_serving.clients.archive.journal import journal_path, read_summary
from emotion2vec_serving.clients.cli import main
from emotion2vec_serving.server.process import ServerProcess
from tests.support.archive import Archive, make_archive
from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
TIMING = ("finished_at",)
TEXT = ("path", "channel", "channel_name", "fingerprint", "label", "status", "flags")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    return make_archive(tmp_path_factory.mktemp("archive"))


def recognize(target: str, *args: str) -> int:
    return main(["--target", target, "recognize", "--no-progress", *args])


def recognize_calls(server: ServerProcess) -> float:
    """Recognize calls the server finished (every status code), from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(server.scrape()):
        for s in family.samples:
            if s.name == "emotion_requests_total" and s.labels.get("rpc") == "Recognize":
                total += s.value
    return total


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without their timings, numbers as floats (CSV cells are strings)."""
    out = []
    for row in rows:
        clean: dict[str, Any] = {}
        for k, v in row.items():
            if k in TIMING:
                continue
            if isinstance(v, str) and k not in TEXT and not k.startswith("model_"):
                v = float(v) if v != "" else None
            clean[k] = round(v, 5) if isinstance(v, float) else v
        out.append(clean)
    return out


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_archive_summary_in_every_format(
    target: str, archive: Archive, tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = tmp_path / f"summary{suffix}"
    embeddings = tmp_path / "emb.npy"
    code = recognize(target, str(archive.root), "--summary", str(summary), "--embeddings", str(embeddings),
                     "--flag", "neutral>=0", "--concurrency", "3")  # fmt: skip
    assert code == 1  # the broken and the empty file failed; everything else went on
    rows = read_summary(summary)
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(str(p) for p in archive.recordings), "every recording exactly once"
    assert all(r["channel"] == "mix" for r in rows)
    by_path = {r["path"]: r for r in rows}
    assert by_path[str(archive.empty)]["status"] == "ValueError: empty file (0 bytes)"
    broken = str(by_path[str(archive.broken)]["status"])
    assert broken.startswith("InvalidAudio: ") and "decode" in broken.lower(), broken
    good = [by_path[str(p)] for p in archive.good]
    assert all(r["status"] == "ok" for r in good)
    with EmotionClient(target) as client:
        direct = client.recognize(archive.good[0])
    row = by_path[str(archive.good[0])]
    for label, score in direct.scores.items():
        assert float(row[f"score_{label}"]) == pytest.approx(score, abs=1e-5)
    assert row["label"] == direct.label and int(row["size"]) == archive.good[0].stat().st_size
    assert row["model_name"] == direct.model.name and float(row["duration_s"]) > 0
    assert all(r["flags"] == "neutral>=0" for r in good)
    out = capsys.readouterr().err
    assert f"{len(archive.good)} flagged" in out and "audio-s/s" in out.splitlines()[-1]
    # Embeddings: one row per summary row, NaN for the error rows; the index names them.
    matrix = np.load(embeddings)
    assert matrix.shape[0] == len(rows)
    index = embeddings.with_name("emb.index.csv").read_text().splitlines()[1:]
    for i, (line, r) in enumerate(zip(index, rows, strict=True)):
        assert line.split(",")[1] == r["path"]
        assert np.isnan(matrix[i]).all() == (r["status"] != "ok")
    with EmotionClient(target) as client:
        vector = client.embed(archive.good[0]).embedding
    np.testing.assert_allclose(matrix[paths.index(str(archive.good[0]))], vector, atol=1e-5)


def test_lists_globs_and_missing_files(target: str, archive: Archive, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    missing = archive.root / "gone.wav"
    listing.write_text(f"# comment\n{archive.good[0]}\n\n{missing}\n")
    summary = tmp_path / "s.jsonl"
    pattern = str(archive.root / "2024" / "**" / "*.flac")
    assert recognize(target, pattern, "--from-list", str(listing), "--summary", str(summary)) == 1
    rows = {r["path"]: r for r in read_summary(summary)}
    flacs = {str(p) for p in archive.recordings if p.suffix == ".flac" and "2024" in str(p)}
    assert set(rows) == {str(archive.good[0]), str(missing)} | flacs
    assert rows[str(missing)]["status"].startswith("not found: ")
    assert rows[str(archive.good[0])]["status"] == "ok"


def test_shards_together_equal_one_run(target: str, archive: Archive, tmp_path: Path) -> None:
    whole = tmp_path / "all.csv"
    recognize(target, str(archive.root), "--summary", str(whole))
    parts: list[dict[str, Any]] = []
    for i in range(3):
        part = tmp_path / f"part{i}.csv"
        recognize(target, str(archive.root), "--summary", str(part), "--shard", f"{i}/3")
        parts += read_summary(part)
    assert len(parts) == len({r["path"] for r in parts}), "a recording in two shards"
    key = lambda r: r["path"]  # noqa: E731
    assert comparable(sorted(parts, key=key)) == comparable(read_summary(whole))


def _cli(target: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")])}
    return subprocess.Popen(
        [sys.executable, "-m", "emotion2vec_serving.clients.cli", "--target", target, "recognize",
         "--no-progress", *args],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_resume_after_sigkill_equals_an_uninterrupted_run(
    server: ServerProcess, tmp_path: Path
) -> None:
    big = make_archive(tmp_path / "big", copies=6)
    total = len(big.recordings)
    concurrency = 2
    reference = tmp_path / "ref.csv"
    before = recognize_calls(server)
    assert _cli(server.target, str(big.root), "--summary", str(reference),
                "--concurrency", str(concurrency)).wait(timeout=300) == 1  # fmt: skip
    uninterrupted_calls = recognize_calls(server) - before

    summary = tmp_path / "resumed.csv"
    journal = journal_path(summary)
    before = recognize_calls(server)
    proc = _cli(server.target, str(big.root), "--summary", str(summary), "--concurrency", str(concurrency))

    def journal_lines() -> int:
        return len(journal.read_text().splitlines()) if journal.exists() else 0

    try:
        wait_until(lambda: journal_lines() >= 5, timeout_s=120, interval_s=0.005, message="5 rows written")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = journal_lines()
    assert done < total, "the run ended before it was killed: nothing was tested"
    killed_rows = [json.loads(line)["rows"][0] for line in journal.read_text().splitlines() if line.strip()]
    # Failed recordings are retried on resume by design: those the server saw count once more.
    retried = sum(1 for r in killed_rows if r["status"] != "ok" and not r["status"].startswith("ValueError"))
    assert _cli(server.target, str(big.root), "--summary", str(summary), "--resume",
                "--concurrency", str(concurrency)).wait(timeout=300) == 1  # fmt: skip
    calls = recognize_calls(server) - before
    assert comparable(read_summary(summary)) == comparable(read_summary(reference))
    sent_twice = calls - uninterrupted_calls - retried
    assert 0 <= sent_twice <= concurrency, (calls, uninterrupted_calls, retried)


def test_archive_through_s3_urls(target: str, archive: Archive, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": endpoint}  # fmt: skip
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        import fsspec.config

        fsspec.config.conf.clear()
        fsspec.config.set_conf_env(fsspec.config.conf)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="calls")
        for path in archive.recordings:
            key = f"archive/{path.relative_to(archive.root)}"
            s3.put_object(Bucket="calls", Key=key, Body=path.read_bytes())
        summary = tmp_path / "s3.parquet"
        assert recognize(target, "s3://calls/archive/", "--summary", str(summary)) == 1
        rows = read_summary(summary)
        local = tmp_path / "local.parquet"
        recognize(target, str(archive.root), "--summary", str(local))

        def strip(rows: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
            out = []
            for r in comparable(rows):
                r = {**r, "path": r["path"].removeprefix(prefix), "fingerprint": None}
                out.append(r)
            return sorted(out, key=lambda r: r["path"])

        assert strip(rows, "s3://calls/archive/") == strip(read_summary(local), f"{archive.root}/")
        assert all(str(r["fingerprint"]).startswith("ETag:") for r in rows)
        # Resume with the same objects: nothing is sent again.
        assert recognize(target, "s3://calls/archive/", "--summary", str(summary), "--resume") == 1
        assert len(read_summary(summary)) == len(rows)
    finally:
        srv.stop()
        fsspec_clear = sys.modules.get("fsspec.config")
        if fsspec_clear is not None:
            fsspec_clear.conf.clear()


def test_plain_recognize_still_writes_outputs_folders(
    target: str, archive: Archive, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert recognize(target, str(archive.good[0]), "--output-dir", str(out)) == 0
    folders = list(out.iterdir())
    assert len(folders) == 1 and (folders[0] / "result.json").exists()
    assert not math.isnan(json.loads((folders[0] / "result.json").read_text())["confidence"])
    shutil.rmtree(out)


def test_split_channels_give_one_row_per_channel_equal_to_that_channel_alone(
    target: str, archive: Archive, tmp_path: Path
) -> None:
    """``--channels split --channel-names agent,customer``: mono recordings get one row (channel 0), stereo
    calls two, named; each channel's scores equal ``Recognize`` on that channel extracted alone (lossless
    files: WAV and FLAC; the AAC call is only counted, a re-encoded channel would differ anyway)."""
    import soundfile as sf

    summary = tmp_path / "split.parquet"
    embeddings = tmp_path / "split.npy"
    code = recognize(target, str(archive.root), "--summary", str(summary), "--channels", "split",
                     "--channel-names", "agent,customer", "--embeddings", str(embeddings))  # fmt: skip
    assert code == 1  # the broken and the empty file
    rows = read_summary(summary)
    per_path: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        per_path.setdefault(r["path"], []).append(r)
    assert sorted(per_path) == sorted(str(p) for p in archive.recordings), "every recording, once per channel"
    for path in archive.good:
        got = sorted((str(r["channel"]), r["channel_name"]) for r in per_path[str(path)])
        expected = [("0", "agent"), ("1", "customer")] if path in archive.stereo else [("0", "agent")]
        assert got == expected, (path, got)
    assert [r["status"] for r in per_path[str(archive.empty)]] == ["ValueError: empty file (0 bytes)"]
    assert np.load(embeddings).shape[0] == len(rows)
    lossless = [p for p in archive.stereo if p.suffix in (".wav", ".flac")]
    assert lossless
    with EmotionClient(target) as client:
        for path in lossless:
            samples, rate = sf.read(path, dtype="float32", always_2d=True)
            assert samples.shape[1] == 2
            for channel in (0, 1):
                alone = client.recognize(samples[:, channel].copy(), sample_rate=rate)
                row = next(r for r in per_path[str(path)] if str(r["channel"]) == str(channel))
                assert row["status"] == "ok" and row["label"] == alone.label
                for label, score in alone.scores.items():
                    assert float(row[f"score_{label}"]) == pytest.approx(score, abs=1e-5), (path, channel)
