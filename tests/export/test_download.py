"""Model downloads through the hubs' own clients (``huggingface_hub``, ``modelscope``) against a local hub
(tests/support/fake_hub.py) that answers as both hubs' APIs do and misbehaves on request.

Before issue 23 the downloads went through an own http.client hub client: no proxies, no tokens, no
retries on 429/5xx, ``MODELSCOPE_DOMAIN`` and offline mode ignored, the ModelScope commit never recorded,
plain files unchecked, and a pin (ModelScope v2.0.5) that may serve 5 of the 9 emotions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from emotion.v1 import emotion_pb2, emotion_pb2_grpc

from emotion2vec_serving.export import download as dl
from emotion2vec_serving.export.checkpoint import TOKENS_FIVE_LABELS, write_checkpoint
from emotion2vec_serving.export.download import (
    DOWNLOAD_RECORD,
    PINS,
    DownloadError,
    DownloadSettings,
    Pin,
    download_model,
)
from emotion2vec_serving.export.load import CheckpointError, load_checkpoint
from emotion2vec_serving.modelrepo import load_manifest
from emotion2vec_serving.modelrepo.labels import LabelCountError
from emotion2vec_serving.server.process import ServerProcess
from tests.support.fake_hub import FakeHub, read_tree
from tests.support.polling import wait_until
from tests.support.proxy import CountingProxy

ROOT = Path(__file__).resolve().parents[2]
MODEL = "emotion2vec_plus_large"
REPOS = ("emotion2vec/emotion2vec_plus_large", "iic/emotion2vec_plus_large")
HUBS = ("hf", "ms")
#: The weights file is padded (a pretraining-decoder tensor, as the real model.pt carries) beyond
#: huggingface_hub's 10 MB write chunk, so a stall or a drop at 15 MB leaves bytes on disk to resume from.
PAD_FLOATS = 6_000_000
CUT = 15_000_000
QUICK = DownloadSettings(timeout_s=1.0, retries=3, backoff_s=0.05)


def _padded(directory: Path) -> dict[str, bytes]:
    state = torch.load(directory / "model.pt", weights_only=True)
    pad = torch.randn(PAD_FLOATS, generator=torch.Generator().manual_seed(1))
    state["modality_encoders.AUDIO.decoder.pad"] = pad
    torch.save(state, directory / "model.pt")
    return read_tree(directory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("hub_checkpoints")
    return {"nine": _padded(write_checkpoint(root / "nine", size="tiny", seed=0)),
            "five": _padded(write_checkpoint(root / "five", size="tiny", seed=0, tokens=TOKENS_FIVE_LABELS))}


def _hub_env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    """Both hubs at the fake one, caches in tmp_path, no proxy, no token, online."""
    return {"HF_ENDPOINT": hub.url, "MODELSCOPE_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"),
            "MODELSCOPE_CACHE": str(tmp_path / "modelscope"), "MODELSCOPE_HOME": str(tmp_path / "ms-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1", "DO_NOT_TRACK": "1"}


_CLEARED = ("HF_HUB_CACHE", "HF_TOKEN", "MODELSCOPE_API_TOKEN", "MODELSCOPE_DOMAIN", "HF_HUB_OFFLINE",
            "EMOTION_EXPORT_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY",
            "no_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture
def hub(checkpoints: dict[str, dict[str, bytes]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as server:
        server.publish(REPOS, checkpoints["five"], refs=("v2.0.5",))  # the May-2024 shape: 5 of 9 emotions
        nine = server.publish(REPOS, checkpoints["nine"])  # main and master
        monkeypatch.setitem(PINS, MODEL, Pin("huggingface", nine, "the fake hub's nine-label commit"))
        for name in _CLEARED:
            monkeypatch.delenv(name, raising=False)
        for name, value in _hub_env(server, tmp_path).items():
            monkeypatch.setenv(name, value)
        yield server


def _nine_commit(hub: FakeHub) -> str:
    return hub.repos["iic/emotion2vec_plus_large"].refs["master"]


def _record(directory: Path) -> dict[str, object]:
    return json.loads((directory / DOWNLOAD_RECORD).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _ranges(hub: FakeHub, path: str = "model.pt") -> list[str | None]:
    return [r.range for r in hub.file_requests(path)]


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emotion2vec_serving.export.cli", *args], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False)


def _subprocess_env(hub: FakeHub, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    return {**env, **_hub_env(hub, tmp_path), "PYTHONPATH": str(ROOT), **extra}


# -- the whole path ----------------------------------------------------------------------------------


def test_download_export_and_serve_the_pinned_nine_label_model(hub: FakeHub, tmp_path: Path) -> None:
    env = _subprocess_env(hub, tmp_path)
    commit = PINS[MODEL].revision
    # The pin lives in this process (monkeypatched), so the subprocess asks for the commit explicitly.
    done = _cli(["download", MODEL, "--hub", "hf", "--revision", commit, "--out", str(tmp_path / "ck"),
                 "--require-labels", "9"], env)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == tmp_path / "ck"
    record = _record(tmp_path / "ck")
    assert record["hub"] == "huggingface" and record["commit"] == commit and record["revision"] == commit
    assert not any(p.is_symlink() for p in (tmp_path / "ck").iterdir())  # files, not cache links
    assert "WARNING" not in done.stderr
    # The directory is self-contained: it exports with the hubs out of reach (an offline machine).
    hub.close()
    repo = tmp_path / "repo"
    done = _cli(["onnx", "--source", str(tmp_path / "ck"), "--out", str(repo), "--no-verify",
                 "--require-labels", "9"], env)
    assert done.returncode == 0, done.stderr
    source = load_manifest(repo).source
    assert source is not None and source.hub is not None
    assert source.hub.commit == commit and source.hub.repo_id == REPOS[0]
    assert {f.path: f.sha256 for f in source.hub.files}["model.pt"] == source.checkpoint_sha256
    with (ServerProcess(repo, startup_timeout_s=180) as server,
          grpc.insecure_channel(server.target) as channel):
        info = emotion_pb2_grpc.EmotionRecognizerStub(channel).GetModelInfo(
            emotion_pb2.GetModelInfoRequest(), timeout=30)
    assert len(info.labels) == 9


def test_the_pins_name_their_source_and_plus_large_is_the_nine_label_commit() -> None:
    pin = dl.Pin("huggingface", "6c303ba987b86b93193de93e34bb2b077a6bedc4", "")
    assert (PINS[MODEL].hub, PINS[MODEL].revision) == (pin.hub, pin.revision)
    assert all(p.source for p in PINS.values())
    assert {PINS[m].hub for m in ("emotion2vec_plus_base", "emotion2vec_plus_seed", "emotion2vec_base")} == {
        "modelscope"}


@pytest.mark.parametrize("hub_name", HUBS)
def test_the_default_revision_is_resolved_and_its_commit_recorded(hub: FakeHub, hub_name: str) -> None:
    directory = download_model(MODEL, hub=hub_name, settings=QUICK)
    record = _record(directory)
    assert record["commit"] == _nine_commit(hub) and record["pinned_default"] is True
    assert record["revision"] == (PINS[MODEL].revision if hub_name == "hf" else "master")
    files = record["files"]
    assert isinstance(files, dict)
    assert set(files) == {"config.yaml", "configuration.json", "model.pt", "tokens.txt", "README.md"}
    ck = load_checkpoint(MODEL, hub=hub_name, timeout_s=1.0)  # from the cache, through the loader
    assert ck.hub == record and len(ck.tokens) == 9


# -- nine labels -------------------------------------------------------------------------------------


@pytest.mark.parametrize("hub_name", HUBS)
def test_a_five_label_revision_is_warned_about_and_refused_when_nine_are_required(
    hub: FakeHub, hub_name: str
) -> None:
    said: list[str] = []
    download_model(MODEL, hub=hub_name, revision="v2.0.5", settings=QUICK, progress=said.append)
    five = hub.repos["iic/emotion2vec_plus_large"].refs["v2.0.5"]
    warning = next(m for m in said if m.startswith("WARNING"))
    assert "enables only 5 of the 9" in warning and five in warning  # names the resolved commit
    with pytest.raises(LabelCountError, match=r"enables 5 labels; --require-labels asks for at least 9"):
        download_model(MODEL, hub=hub_name, revision="v2.0.5", settings=QUICK, require_labels=9)
    said.clear()
    download_model(MODEL, hub=hub_name, settings=QUICK, progress=said.append, require_labels=9)
    assert not [m for m in said if m.startswith("WARNING")]


def test_the_cli_refuses_the_five_label_revision(hub: FakeHub, tmp_path: Path) -> None:
    done = _cli(["download", MODEL, "--hub", "ms", "--revision", "v2.0.5", "--require-labels", "9"],
                _subprocess_env(hub, tmp_path), timeout=120)
    assert done.returncode == 2 and "enables 5 labels" in done.stderr, done.stderr


# -- interruptions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("hub_name", HUBS)
@pytest.mark.parametrize("kind", ["stall", "drop"])
def test_a_stalled_or_dropped_connection_is_resumed(hub: FakeHub, hub_name: str, kind: str) -> None:
    hub.fault("model.pt", kind, after=CUT)
    directory = download_model(MODEL, hub=hub_name, settings=QUICK)
    assert (directory / "model.pt").read_bytes() == hub.commits[_nine_commit(hub)]["model.pt"]
    first, *rest = _ranges(hub)
    assert first is None and rest, "the interrupted file was requested again"
    resumed_at = int(str(rest[0]).removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= CUT  # continued, not restarted


def _partial(cache: Path) -> int:
    """The largest partial file in ``cache`` now; one renamed or removed between listing and stat is skipped
    (the hub client's temporary files come and go while the download runs)."""
    sizes = [0]
    for path in cache.rglob("*.incomplete"):
        try:
            sizes.append(path.stat().st_size)
        except FileNotFoundError:
            continue
    return max(sizes)


@pytest.mark.parametrize("hub_name", HUBS)
def test_a_download_killed_mid_file_is_resumed_by_the_next_run(hub: FakeHub, hub_name: str,
                                                                tmp_path: Path) -> None:
    hub.fault("model.pt", "stall", after=CUT)
    cache = tmp_path / ("hf" if hub_name == "hf" else "modelscope")
    child = subprocess.Popen(
        [sys.executable, "-m", "emotion2vec_serving.export.cli", "download", MODEL, "--hub", hub_name,
         "--revision", _nine_commit(hub) if hub_name == "hf" else "master", "--timeout-s", "120"],
        env=_subprocess_env(hub, tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _partial(cache) >= 10 << 20, timeout_s=120, message="a partial model.pt")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    kept = _partial(cache)
    hub.release()
    directory = download_model(MODEL, hub=hub_name, revision=None if hub_name == "hf" else "master",
                               settings=QUICK)
    assert (directory / "model.pt").read_bytes() == hub.commits[_nine_commit(hub)]["model.pt"]
    assert _ranges(hub)[-1] == f"bytes={kept}-"  # the killed run's bytes were continued
    assert _partial(cache) == 0


@pytest.mark.parametrize("hub_name", HUBS)
def test_a_503_is_retried(hub: FakeHub, hub_name: str) -> None:
    fault = hub.fault("model.pt", "status", status=503, times=2)
    directory = download_model(MODEL, hub=hub_name, settings=QUICK)
    assert fault.hits == 2 and len(_ranges(hub)) == 3
    assert _record(directory)["files"]["model.pt"]["size"] == len(  # type: ignore[index]
        hub.commits[_nine_commit(hub)]["model.pt"])


@pytest.mark.parametrize("hub_name", HUBS)
def test_a_503_forever_gives_up_after_the_retries(hub: FakeHub, hub_name: str) -> None:
    # The other files arrive in the first attempt (bytes moved: not counted); then each attempt only meets
    # the 503, whose body and the listing fetched again are no progress.
    fault = hub.fault("model.pt", "status", status=503, times=None)
    settings = DownloadSettings(timeout_s=1.0, retries=2, backoff_s=0.05)
    with pytest.raises(DownloadError, match="503"):
        download_model(MODEL, hub=hub_name, settings=settings)
    assert fault.hits <= settings.retries + 2


# -- integrity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("hub_name", HUBS)
@pytest.mark.parametrize("path", ["model.pt", "tokens.txt"])  # an LFS file and a plain git file
def test_a_corrupted_file_is_refused_naming_it(hub: FakeHub, hub_name: str, path: str,
                                                tmp_path: Path) -> None:
    hub.corrupt(path)
    with pytest.raises(DownloadError, match=rf"{path}: .*(SHA-256|git blob id|Hash mismatch)"):
        download_model(MODEL, hub=hub_name, settings=QUICK)
    cached = [p for p in tmp_path.rglob(path) if p.is_file()]
    assert not cached, f"the corrupted {path} stayed in the cache: {cached}"
    hub.corrupted.clear()
    directory = download_model(MODEL, hub=hub_name, settings=QUICK)  # a rerun downloads it anew
    assert (directory / path).read_bytes() == hub.commits[_nine_commit(hub)][path]


# -- network settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("hub_name", HUBS)
def test_every_request_goes_through_the_proxy(hub: FakeHub, hub_name: str, tmp_path: Path) -> None:
    with CountingProxy() as proxy:
        env = _subprocess_env(hub, tmp_path, HTTP_PROXY=proxy.url, HTTPS_PROXY=proxy.url)
        branch = "master" if hub_name == "ms" else "main"
        done = _cli(["download", MODEL, "--hub", hub_name, "--revision", branch], env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert hub.file_requests("model.pt") and len(proxy.requests) == len(hub.requests)
    assert all(target.startswith(hub.url + "/") for _, target in proxy.requests), proxy.requests[:3]


@pytest.mark.parametrize("hub_name", HUBS)
def test_the_token_is_sent(hub: FakeHub, hub_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.require_token = "secret-token"
    with pytest.raises(DownloadError):
        download_model(MODEL, hub=hub_name, settings=dl.DownloadSettings(timeout_s=1.0, retries=0))
    hub.requests.clear()
    monkeypatch.setenv("HF_TOKEN" if hub_name == "hf" else "MODELSCOPE_API_TOKEN", "secret-token")
    download_model(MODEL, hub=hub_name, settings=QUICK)
    # Every repository request; ModelScope's region probe (/api/v1/repos/internalAccelerationInfo) is public.
    sent = {r.path.split("?")[0]: r.headers.get("authorization") for r in hub.requests
            if "internalAccelerationInfo" not in r.path}
    assert hub.file_requests("model.pt") and set(sent.values()) == {"Bearer secret-token"}, sent


@pytest.mark.parametrize("hub_name", HUBS)
def test_offline_mode_serves_the_cache(hub: FakeHub, hub_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match=r"offline|cache|Cannot find"):
        download_model(MODEL, hub=hub_name, settings=QUICK)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    online = download_model(MODEL, hub=hub_name, settings=QUICK)
    seen = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = download_model(MODEL, hub=hub_name, settings=QUICK)
    assert offline == online and len(hub.requests) == seen  # not one request
    assert _record(offline)["commit"] == _nine_commit(hub)
    (offline / "config.yaml").resolve().write_text("tampered\n", encoding="utf-8")  # offline, still checked
    with pytest.raises(DownloadError, match=r"config\.yaml"):
        download_model(MODEL, hub=hub_name, settings=QUICK)


def test_modelscope_domain_selects_the_mirror(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSCOPE_ENDPOINT")
    monkeypatch.setenv("MODELSCOPE_DOMAIN", hub.url)
    download_model(MODEL, hub="ms", settings=QUICK)
    assert hub.file_requests("model.pt")


def test_an_unknown_revision_fails_with_the_copy_in_hint(hub: FakeHub) -> None:
    with pytest.raises(CheckpointError, match=r"v0\.0\.0-missing.*--source DIR"):
        load_checkpoint(MODEL, timeout_s=1.0, hub="ms", revision="v0.0.0-missing")


def test_an_unknown_model_id_is_refused_without_a_request(hub: FakeHub) -> None:
    with pytest.raises(DownloadError, match="unknown model id 'emotion2vec_plus_huge'"):
        download_model("emotion2vec_plus_huge", settings=QUICK)
    assert not hub.requests
