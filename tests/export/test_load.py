"""The loader refuses every kind of broken source with an error naming the key or file."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
import yaml

from emotion2vec_serving.export.load import CheckpointError, load_checkpoint


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


def test_unreachable_hub_never_hangs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EMOTION_EXPORT_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    # Point both hubs at a loopback listener that takes connections (the kernel completes the handshake)
    # and never answers: the stall timeout must bound the wait.
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", endpoint)
        monkeypatch.setenv("MODELSCOPE_DOMAIN", endpoint)
        started = time.monotonic()
        with pytest.raises(CheckpointError, match=r"--source DIR"):
            load_checkpoint("emotion2vec_plus_seed", timeout_s=2.0)
        assert time.monotonic() - started < 30.0
