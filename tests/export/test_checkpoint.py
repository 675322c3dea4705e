"""The checkpoint generator writes the real layout, and FunASR itself agrees on every key and shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from emotion2vec_serving.export.checkpoint import (
    SIZES,
    TOKENS,
    expected_shapes,
    make_config,
    write_checkpoint,
)


def _funasr_module(config: dict, num_labels: int) -> torch.nn.Module:
    from funasr.models.emotion2vec.model import Emotion2vec

    return Emotion2vec(model_conf=config["model_conf"], vocab_size=num_labels if num_labels else -1)


def test_layout_matches_the_published_model_directory(tiny_checkpoint: Path) -> None:
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"config.yaml", "configuration.json", "model.pt", "tokens.txt"} <= names
    tokens = (tiny_checkpoint / "tokens.txt").read_text(encoding="utf-8")
    assert tokens.split("\n") == list(TOKENS)
    assert tokens.split("\n")[0] == "生气/angry" and tokens.split("\n")[-1] == "<unk>"
    metas = json.loads((tiny_checkpoint / "configuration.json").read_text())["file_path_metas"]
    assert metas == {
        "init_param": "model.pt", "config": "config.yaml", "tokenizer_conf": {"token_list": "tokens.txt"}
    }
    config = yaml.safe_load((tiny_checkpoint / "config.yaml").read_text())
    assert config["model"] == "Emotion2vec" and config["tokenizer"] == "CharTokenizer"
    assert config["model_conf"]["modalities"]["audio"]["num_extra_tokens"] == 10


def test_headless_layout_is_emotion2vec_base(tmp_path: Path) -> None:
    out = write_checkpoint(tmp_path, "tiny", seed=1, headless=True)
    assert (out / "emotion2vec_base.pt").is_file()
    assert not (out / "tokens.txt").exists() and not (out / "model.pt").exists()
    state = torch.load(out / "emotion2vec_base.pt", weights_only=True)
    assert "proj.weight" not in state
    assert "tokenizer" not in yaml.safe_load((out / "config.yaml").read_text())


@pytest.mark.parametrize("size", sorted(SIZES))
def test_keys_and_shapes_equal_funasrs_own_module(size: str) -> None:
    config = make_config(SIZES[size])
    ours = expected_shapes(config, len(TOKENS))
    theirs = {k: tuple(v.shape) for k, v in _funasr_module(config, len(TOKENS)).state_dict().items()}
    assert ours == theirs


def test_large_has_the_published_parameter_count() -> None:
    shapes = expected_shapes(make_config(SIZES["large"]), len(TOKENS))
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert 290e6 < total < 340e6, total  # "~300M" on the model card


def test_every_parameter_is_randomised_and_seeded(tiny_checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(tiny_checkpoint / "model.pt", weights_only=True)
    for key, value in state.items():
        assert value.numel() == 1 or value.std() > 0.01, f"{key} is not random"
        assert not torch.allclose(value, torch.ones_like(value))
        assert not torch.allclose(value, torch.zeros_like(value))
    assert (state["modality_encoders.AUDIO.alibi_scale"] > 0).all()
    again = torch.load(write_checkpoint(tmp_path / "same", "tiny", seed=0) / "model.pt", weights_only=True)
    other = torch.load(write_checkpoint(tmp_path / "other", "tiny", seed=1) / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not torch.equal(state["blocks.0.attn.qkv.weight"], other["blocks.0.attn.qkv.weight"])


def test_funasr_automodel_loads_it_offline_with_all_keys(tiny_checkpoint: Path) -> None:
    from emotion2vec_serving.export.verify import _load_funasr

    automodel = _load_funasr(tiny_checkpoint)
    loaded = automodel.model.state_dict()
    saved = torch.load(tiny_checkpoint / "model.pt", weights_only=True)
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
