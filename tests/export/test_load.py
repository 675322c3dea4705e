"""The loader refuses every kind of broken source with an error naming the key or file."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from emotion2vec_serving.export.download import DownloadError, DownloadSettings, download_model
from emotion2vec_serving.export.load import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def source(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


def _edit_state(directory: Path, edit) -> None:  # type: ignore[no-untyped-def]
    state = torch.load(directory / "model.pt", weights_only=True)
    edit(state)
    torch.save(state, directory / "model.pt")


def test_good_checkpoint_loads_with_sizes_from_config_and_weights(source: Path) -> None:
    ck = load_checkpoint(source)
    assert ck.embed_dim == 32 and ck.has_head and len(ck.tokens) == 9
    assert ck.untrained and ck.model_name == "emotion2vec_tiny_random"
    assert not any(".decoder." in k for k in ck.state_dict)  # pretraining-only keys dropped
    assert len(ck.sha256) == 64


def test_wrapped_state_dict_and_module_prefix_are_accepted(source: Path) -> None:
    state = torch.load(source / "model.pt", weights_only=True)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, source / "model.pt")
    assert load_checkpoint(source).embed_dim == 32


def test_missing_key_is_named(source: Path) -> None:
    _edit_state(source, lambda s: s.pop("blocks.1.norm2.bias"))
    with pytest.raises(CheckpointError, match=r"missing .*'blocks\.1\.norm2\.bias'"):
        load_checkpoint(source)


def test_misshaped_key_is_named(source: Path) -> None:
    def edit(state: dict[str, torch.Tensor]) -> None:
        state["blocks.0.mlp.fc1.weight"] = state["blocks.0.mlp.fc1.weight"][:-1]

    _edit_state(source, edit)
    with pytest.raises(CheckpointError, match=r"'blocks\.0\.mlp\.fc1\.weight' has shape \(127, 32\)"):
        load_checkpoint(source)


def test_config_disagreeing_with_weights(source: Path) -> None:
    config = yaml.safe_load((source / "config.yaml").read_text(encoding="utf-8"))
    config["model_conf"]["depth"] = 3
    config["model_conf"]["modalities"]["audio"]["model_depth"] = 3
    (source / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"missing .*'blocks\.2\."):
        load_checkpoint(source)


def test_config_with_other_embed_dim(source: Path) -> None:
    config = yaml.safe_load((source / "config.yaml").read_text(encoding="utf-8"))
    config["model_conf"]["embed_dim"] = 64
    (source / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(source)


def test_truncated_weights_file(source: Path) -> None:
    data = (source / "model.pt").read_bytes()
    (source / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pt: unreadable or truncated"):
        load_checkpoint(source)


@pytest.mark.parametrize("lines", [8, 10])
def test_tokens_with_wrong_line_count(source: Path, lines: int) -> None:
    tokens = (source / "tokens.txt").read_text(encoding="utf-8").split("\n")
    tokens = tokens[:lines] if lines < len(tokens) else tokens + ["extra"] * (lines - len(tokens))
    (source / "tokens.txt").write_text("\n".join(tokens), encoding="utf-8")
    with pytest.raises(CheckpointError, match=rf"tokens\.txt: {lines} labels, but the head proj\.weight"):
        load_checkpoint(source)


def test_missing_files(source: Path) -> None:
    (source / "model.pt").unlink()
    with pytest.raises(CheckpointError, match=r"model\.pt: weights file missing"):
        load_checkpoint(source)
    (source / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match=r"config\.yaml: missing"):
        load_checkpoint(source)


def test_nan_weights_are_refused(source: Path) -> None:
    def edit(state: dict[str, torch.Tensor]) -> None:
        state["proj.bias"][3] = float("nan")

    _edit_state(source, edit)
    with pytest.raises(CheckpointError, match=r"'proj\.bias' holds NaN"):
        load_checkpoint(source)


def test_a_model_id_offline_and_not_cached_fails_at_once(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    # Offline, a model id is served from the hubs' caches (tests/export/test_download.py); empty caches here.
    monkeypatch.setenv("EMOTION_EXPORT_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=r"cached snapshot.*copy DIR here and pass --source DIR"):
        load_checkpoint("emotion2vec_plus_large")
    assert time.monotonic() - started < 10.0


#: A silent hub: every request times out, no byte arrives. retries + 1 stalled attempts in a row fail it.
SILENT = DownloadSettings(timeout_s=1.0, retries=2, backoff_s=0.5)
#: Each stalled attempt costs about timeout_s (x3: connect, read, slack), plus our pauses between attempts
#: and huggingface_hub's own between its retries (1, 2, 4 ... s): about 13.5 s here. Before the stall count
#: was shared, ModelScope took 4 tries x 15 s per listing per attempt of ours, and huggingface_hub's listing
#: waited forever.
SILENT_BOUND_S = ((SILENT.retries + 1) * 3 * SILENT.timeout_s
                  + sum(min(SILENT.backoff_s * 2**i, 60.0) for i in range(SILENT.retries))
                  + sum(min(2**i, 8) for i in range(SILENT.retries)))
#: A known model per hub: emotion2vec_plus_seed is ModelScope master, emotion2vec_plus_large a pinned
#: Hugging Face commit (so the first request is the listing, not the revision lookup).
SILENT_MODELS = {"ms": "emotion2vec_plus_seed", "hf": "emotion2vec_plus_large"}
#: The libraries' own defaults (modelscope_hub constants, huggingface_hub constants), as a process that
#: imported them before any download has them.
_MS_DEFAULTS = {"API_TIMEOUT": 60, "API_CONNECT_TIMEOUT": 10, "DOWNLOAD_TIMEOUT": 60, "API_MAX_RETRIES": 5,
                "REPO_TREE_PAGE_TIMEOUT_SECONDS": 15,
                "REPO_TREE_PAGE_MAX_ATTEMPTS": 4, "DOWNLOAD_RETRY_TIMES": 5}
_MS_VARIABLES = {"MODELSCOPE_API_TIMEOUT": 60, "MODELSCOPE_API_CONNECT_TIMEOUT": 10,
                 "MODELSCOPE_DOWNLOAD_TIMEOUT": 60, "MODELSCOPE_REPO_TREE_PAGE_TIMEOUT_SECONDS": 15,
                 "MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS": 4, "MODELSCOPE_DOWNLOAD_MAX_RETRIES": 5}
_CHILD = """
import json, sys, time
from emotion2vec_serving.export.download import DownloadSettings, download_model
settings = DownloadSettings(**json.loads(sys.argv[2]))
started = time.monotonic()
try:
    download_model(sys.argv[1], settings=settings)
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"elapsed": time.monotonic() - started, "error": error}))
"""


@pytest.fixture
def silent_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Both hubs at a loopback listener that takes connections (the kernel completes the handshake) and
    never answers; caches in tmp_path, online, no proxy."""
    for name in ("EMOTION_EXPORT_OFFLINE", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HTTP_PROXY", "HTTPS_PROXY",
                 "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        for name in ("HF_ENDPOINT", "MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN"):
            monkeypatch.setenv(name, endpoint)
        yield endpoint


def _as_first_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both libraries imported, with their defaults, before any download ran in this process."""
    import huggingface_hub.constants
    import modelscope_hub._download
    import modelscope_hub._legacy_api
    from modelscope import snapshot_download  # noqa: F401

    for name, value in _MS_VARIABLES.items():
        monkeypatch.setenv(name, str(value))
    for module_name, module in list(sys.modules.items()):
        if module is not None and module_name.startswith("modelscope_hub"):
            for name, value in _MS_DEFAULTS.items():
                if isinstance(getattr(module, name, None), int):
                    monkeypatch.setattr(module, name, value)
    init = modelscope_hub._legacy_api.LegacyClient.__init__
    monkeypatch.setattr(init, "__defaults__", (60, 5, None))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DOWNLOAD_TIMEOUT", 10)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_ETAG_TIMEOUT", 10)


@pytest.mark.parametrize("process", ["fresh", "imported"])
@pytest.mark.parametrize("hub", sorted(SILENT_MODELS))
def test_a_silent_hub_fails_naming_the_stall_within_the_stall_bound(
    silent_hub: str, monkeypatch: pytest.MonkeyPatch, hub: str, process: str
) -> None:
    model = SILENT_MODELS[hub]
    if process == "fresh":  # a new interpreter: the libraries read the variables at their first import
        settings = {"timeout_s": SILENT.timeout_s, "retries": SILENT.retries, "backoff_s": SILENT.backoff_s}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        try:
            done = subprocess.run([sys.executable, "-c", _CHILD, model, json.dumps(settings)], env=env,
                                  cwd=ROOT, capture_output=True, text=True, timeout=SILENT_BOUND_S + 120,
                                  check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{hub}: still waiting on a silent hub after {SILENT_BOUND_S + 120:g} s")
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        elapsed, error = float(result["elapsed"]), str(result["error"])
    else:  # this process imported both libraries, with their defaults, before the download
        _as_first_imported(monkeypatch)
        started = time.monotonic()
        with pytest.raises(DownloadError) as raised:
            download_model(model, settings=SILENT)
        elapsed, error = time.monotonic() - started, str(raised.value)
    assert process == "imported" or error.startswith("DownloadError: "), error
    stall = rf"the hub stalled: no byte for 1 s, {SILENT.retries + 1} attempts in a row"
    assert re.search(stall, error), error
    assert silent_hub in error
    assert elapsed < SILENT_BOUND_S, f"{hub} ({process}): {elapsed:.1f} s on a silent hub (bound " \
                                     f"{SILENT_BOUND_S:g} s): {error}"
