"""Checkpoint directories in the real ModelScope / Hugging Face layout, with seeded random weights.

The real emotion2vec weights cannot be downloaded everywhere (CI, air-gapped machines), so tests and
measurements use checkpoints that have exactly the published layout and key names but random values:

``emotion2vec_plus_*`` layout::

    config.yaml          as FunASR's ``AutoModel`` reads it (model: Emotion2vec, model_conf, tokenizer)
    configuration.json   maps init_param -> model.pt, config -> config.yaml, token_list -> tokens.txt
    model.pt             a plain pickled state dict (decoder.* pretraining keys included)
    tokens.txt           the 9 labels, head order

``emotion2vec_base`` layout (``headless=True``): ``emotion2vec_base.pt`` and no tokens file, no head.

Every parameter is randomised (layer norms and ALiBi scales included), so a swapped or missing parameter
shows up as a parity failure instead of hiding behind an identity initialisation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = ["SIZES", "TOKENS", "TOKENS_FIVE_LABELS", "CheckpointSize", "make_config", "make_state_dict",
           "write_checkpoint"]

#: ``tokens.txt`` of the emotion2vec+ models: head row order. The file has no trailing newline.
TOKENS: tuple[str, ...] = (
    "生气/angry",
    "厌恶/disgusted",
    "恐惧/fearful",
    "开心/happy",
    "中立/neutral",
    "其他/other",
    "难过/sad",
    "吃惊/surprised",
    "<unk>",
)
#: A ``tokens.txt`` with four ``unuse_*`` placeholders: the shape of the early hub snapshots that enable
#: only five of the nine emotions (which four were placeholders there is not known here; the count is what
#: the label check sees). For tests of that check.
TOKENS_FIVE_LABELS: tuple[str, ...] = (
    "生气/angry",
    "unuse_1",
    "unuse_2",
    "开心/happy",
    "中立/neutral",
    "unuse_5",
    "难过/sad",
    "unuse_7",
    "<unk>",
)

#: First line of the README.md of generated checkpoints.
GENERATED_MARKER = "generated-by: emotion-export checkpoint"
REAL_FEATURE_ENCODER_SPEC = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"


@dataclass(frozen=True)
class CheckpointSize:
    """Dimensions of a generated checkpoint. ``base`` and ``large`` use the published sizes."""

    name: str
    embed_dim: int
    num_heads: int
    depth: int
    prenet_depth: int
    conv_channels: int
    decoder_dim: int
    decoder_layers: int = 4


SIZES: dict[str, CheckpointSize] = {
    # Small enough to build in well under a second and run a 5 s clip in milliseconds, but with every
    # structural feature of the real model (prenet + main blocks, 10 extra tokens, 5 positional convs with
    # kernel 19 and 16 groups, 7-layer CNN with the real kernels and strides, ALiBi, head).
    "tiny": CheckpointSize("tiny", embed_dim=32, num_heads=4, depth=2, prenet_depth=1, conv_channels=32,
                           decoder_dim=16, decoder_layers=2),
    "base": CheckpointSize("base", embed_dim=768, num_heads=12, depth=8, prenet_depth=4, conv_channels=512,
                           decoder_dim=384),
    # Deliberately unlike any published size: 3 heads of 16, and a 160-channel CNN whose convs reduce over
    # more than 128 inputs, ONNX Runtime's SGEMM K-block for wide GEMMs (256 for GEMMs of <= 64 output
    # frames), so a short clip's rounding depends on padding (tests/export/test_int8_as_served.py, issue 24).
    "odd": CheckpointSize("odd", embed_dim=48, num_heads=3, depth=2, prenet_depth=1, conv_channels=160,
                          decoder_dim=16, decoder_layers=2),
    # emotion2vec_plus_large: heads and prenet depth are not public (see MODEL_NOTES.md); 16 and 16 give
    # the published ~300M parameters.
    "large": CheckpointSize("large", embed_dim=1024, num_heads=16, depth=8, prenet_depth=16,
                            conv_channels=512, decoder_dim=768),
}


def _feature_encoder_spec(channels: int) -> str:
    if channels == 512:
        return REAL_FEATURE_ENCODER_SPEC
    c = channels
    return f"[({c}, 10, 5)] + [({c}, 3, 2)] * 4 + [({c},2,2)] + [({c},2,2)]"


def make_config(size: CheckpointSize, headless: bool = False) -> dict[str, Any]:
    """The ``config.yaml`` content, with the field names and values of the published emotion2vec models."""
    audio: dict[str, Any] = {
        "type": "AUDIO",
        "prenet_depth": size.prenet_depth,
        "prenet_layerdrop": 0.05,
        "prenet_dropout": 0.1,
        "start_drop_path_rate": 0.0,
        "end_drop_path_rate": 0.0,
        "num_extra_tokens": 10,
        "init_extra_token_zero": False,
        "mask_noise_std": 0.01,
        "mask_prob_min": None,
        "inverse_mask": False,
        "mask_prob": 0.7,
        "mask_prob_adjust": 0.05,
        "keep_masked_pct": 0.0,
        "mask_length": 5,
        "add_masks": False,
        "remove_masks": False,
        "mask_dropout": 0.0,
        "encoder_zero_mask": True,
        "mask_channel_prob": 0.0,
        "mask_channel_length": 64,
        "ema_local_encoder": False,
        "local_grad_mult": 1.0,
        "use_alibi_encoder": True,
        "alibi_scale": 1.0,
        "learned_alibi": False,
        "alibi_max_pos": None,
        "learned_alibi_scale": True,
        "learned_alibi_scale_per_head": True,
        "learned_alibi_scale_per_layer": False,
        "num_alibi_heads": size.num_heads,
        "model_depth": size.depth,
        "decoder": {
            "decoder_dim": size.decoder_dim,
            "decoder_groups": 16,
            "decoder_kernel": 7,
            "decoder_layers": size.decoder_layers,
            "input_dropout": 0.1,
            "add_positions_masked": False,
            "add_positions_all": False,
            "decoder_residual": True,
            "projection_layers": 1,
            "projection_ratio": 2.0,
        },
        "extractor_mode": "layer_norm",
        "feature_encoder_spec": _feature_encoder_spec(size.conv_channels),
        "conv_pos_width": 95,
        "conv_pos_groups": 16,
        "conv_pos_depth": 5,
        "conv_pos_pre_ln": False,
    }
    model_conf: dict[str, Any] = {
        "loss_beta": 0.0,
        "loss_scale": None,
        "depth": size.depth,
        "start_drop_path_rate": 0.0,
        "end_drop_path_rate": 0.0,
        "num_heads": size.num_heads,
        "norm_eps": 1e-05,
        "norm_affine": True,
        "encoder_dropout": 0.1,
        "post_mlp_drop": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "dropout_input": 0.0,
        "layerdrop": 0.05,
        "embed_dim": size.embed_dim,
        "mlp_ratio": 4.0,
        "layer_norm_first": False,
        "average_top_k_layers": size.depth,
        "end_of_block_targets": False,
        "clone_batch": 8,
        "layer_norm_target_layer": False,
        "batch_norm_target_layer": False,
        "instance_norm_target_layer": True,
        "instance_norm_targets": False,
        "layer_norm_targets": False,
        "ema_decay": 0.999,
        "ema_same_dtype": True,
        "log_norms": True,
        "ema_end_decay": 0.99999,
        "ema_anneal_end_step": 20000,
        "ema_encoder_only": False,
        "max_update": 100000,
        "extractor_mode": "layer_norm",
        "shared_decoder": None,
        "min_target_var": 0.1,
        "min_pred_var": 0.01,
        "supported_modality": "AUDIO",
        "mae_init": False,
        "seed": 1,
        "skip_ema": False,
        "cls_loss": 1.0,
        "recon_loss": 0.0,
        "d2v_loss": 1.0,
        "decoder_group": False,
        "normalize": True,
        "modalities": {"audio": audio},
    }
    config: dict[str, Any] = {"model": "Emotion2vec", "model_conf": model_conf}
    if not headless:
        config["tokenizer"] = "CharTokenizer"
        config["tokenizer_conf"] = {"unk_symbol": "<unk>", "split_with_space": True}
    return config


def parse_feature_encoder_spec(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate ``feature_encoder_spec`` (a Python list expression such as ``[(512, 10, 5)] * 2``) safely."""
    allowed = set("0123456789()[], +*")
    if not spec or set(spec) - allowed:
        raise ValueError(f"feature_encoder_spec {spec!r}: only lists of (dim, kernel, stride) tuples allowed")
    value = eval(spec, {"__builtins__": {}}, {})
    layers = [tuple(int(v) for v in item) for item in value]
    if not layers or any(len(layer) != 3 for layer in layers):
        raise ValueError(f"feature_encoder_spec {spec!r}: expected (dim, kernel, stride) tuples")
    return [(a, b, c) for a, b, c in layers]


def expected_shapes(config: dict[str, Any], num_labels: int) -> dict[str, tuple[int, ...]]:
    """Every state-dict key FunASR's ``Emotion2vec`` has for ``config``, with its shape.

    ``num_labels`` 0 means no head (emotion2vec_base). Decoder keys (pretraining only) are included.
    """
    mc = config["model_conf"]
    audio = mc["modalities"]["audio"]
    d = int(mc["embed_dim"])
    hidden = int(d * float(mc["mlp_ratio"]))
    shapes: dict[str, tuple[int, ...]] = {}
    p = "modality_encoders.AUDIO."
    shapes[p + "extra_tokens"] = (1, int(audio["num_extra_tokens"]), d)
    per_layer = int(audio["prenet_depth"]) + int(audio["model_depth"])
    alibi_layers = per_layer if audio.get("learned_alibi_scale_per_layer") else 1
    alibi_heads = int(audio["num_alibi_heads"]) if audio.get("learned_alibi_scale_per_head") else 1
    shapes[p + "alibi_scale"] = (alibi_layers, 1, alibi_heads, 1, 1)
    in_d = 1
    for i, (dim, k, _stride) in enumerate(parse_feature_encoder_spec(audio["feature_encoder_spec"])):
        shapes[f"{p}local_encoder.conv_layers.{i}.0.weight"] = (dim, in_d, k)
        shapes[f"{p}local_encoder.conv_layers.{i}.2.1.weight"] = (dim,)
        shapes[f"{p}local_encoder.conv_layers.{i}.2.1.bias"] = (dim,)
        in_d = dim
    shapes[p + "project_features.1.weight"] = (in_d,)
    shapes[p + "project_features.1.bias"] = (in_d,)
    shapes[p + "project_features.2.weight"] = (d, in_d)
    shapes[p + "project_features.2.bias"] = (d,)
    depth = int(audio["conv_pos_depth"])
    k = max(3, int(audio["conv_pos_width"]) // depth)
    groups = int(audio["conv_pos_groups"])
    for i in range(1, depth + 1):
        shapes[f"{p}relative_positional_encoder.{i}.0.weight"] = (d, d // groups, k)
        shapes[f"{p}relative_positional_encoder.{i}.0.bias"] = (d,)
    shapes[p + "context_encoder.norm.weight"] = (d,)
    shapes[p + "context_encoder.norm.bias"] = (d,)

    def block(prefix: str) -> None:
        for norm in ("norm1", "norm2"):
            shapes[f"{prefix}.{norm}.weight"] = (d,)
            shapes[f"{prefix}.{norm}.bias"] = (d,)
        shapes[f"{prefix}.attn.qkv.weight"] = (3 * d, d)
        shapes[f"{prefix}.attn.qkv.bias"] = (3 * d,)
        shapes[f"{prefix}.attn.proj.weight"] = (d, d)
        shapes[f"{prefix}.attn.proj.bias"] = (d,)
        shapes[f"{prefix}.mlp.fc1.weight"] = (hidden, d)
        shapes[f"{prefix}.mlp.fc1.bias"] = (hidden,)
        shapes[f"{prefix}.mlp.fc2.weight"] = (d, hidden)
        shapes[f"{prefix}.mlp.fc2.bias"] = (d,)

    for i in range(int(audio["prenet_depth"])):
        block(f"{p}context_encoder.blocks.{i}")
    dec = audio.get("decoder")
    if dec:
        dd, dg, dk = int(dec["decoder_dim"]), int(dec["decoder_groups"]), int(dec["decoder_kernel"])
        for i in range(int(dec["decoder_layers"])):
            in_dim = d if i == 0 else dd
            shapes[f"{p}decoder.blocks.{i}.0.weight"] = (dd, in_dim // dg, dk)
            shapes[f"{p}decoder.blocks.{i}.0.bias"] = (dd,)
        shapes[p + "decoder.proj.weight"] = (d, dd)
        shapes[p + "decoder.proj.bias"] = (d,)
    for i in range(int(mc["depth"])):
        block(f"blocks.{i}")
    if num_labels > 0:
        shapes["proj.weight"] = (num_labels, d)
        shapes["proj.bias"] = (num_labels,)
    return shapes


def make_state_dict(config: dict[str, Any], num_labels: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random values for every key of ``expected_shapes``.

    Scales keep a post-LN transformer numerically tame: weights ~ N(0, 1/fan_in), norm gains ~ 1 ± 0.2,
    biases ~ N(0, 0.1), ALiBi scales in [0.5, 1.5] (positive: FunASR clamps them at 0), extra tokens N(0,1).
    """
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in expected_shapes(config, num_labels).items():
        if key.endswith("alibi_scale"):
            value = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith("extra_tokens"):
            value = torch.randn(shape, generator=gen)
        elif len(shape) == 1 and key.endswith(".weight"):  # layer-norm gains
            value = 1.0 + 0.2 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:  # biases
            value = 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = math.prod(shape[1:])
            value = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        state[key] = value.float().contiguous()
    return state


def _configuration_json(headless: bool, weights_file: str, model_name: str) -> dict[str, Any]:
    metas: dict[str, Any] = {"init_param": weights_file, "config": "config.yaml"}
    if not headless:
        metas["tokenizer_conf"] = {"token_list": "tokens.txt"}
    return {
        "framework": "pytorch",
        "task": "emotion-recognition",
        "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "model_name_in_hub": {"ms": f"iic/{model_name}", "hf": f"emotion2vec/{model_name}"},
        "file_path_metas": metas,
    }


def write_checkpoint(
    out_dir: str | Path, size: str = "tiny", seed: int = 0, headless: bool = False,
    tokens: Sequence[str] = TOKENS,
) -> Path:
    """Write a checkpoint directory with random weights; return its path.

    ``headless=True`` writes the ``emotion2vec_base`` layout (``emotion2vec_base.pt``, no tokens, no head).
    ``tokens``: the lines of ``tokens.txt`` (head rows), e.g. ``TOKENS_FIVE_LABELS``.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = make_config(SIZES[size], headless=headless)
    weights_file = "emotion2vec_base.pt" if headless else "model.pt"
    model_name = "emotion2vec_base" if headless else f"emotion2vec_plus_{size}"
    state = make_state_dict(config, 0 if headless else len(tokens), seed)
    # Write to a temporary name first so an interrupted run never leaves a plausible but truncated file.
    tmp = out / (weights_file + ".partial")
    torch.save(state, tmp)
    tmp.replace(out / weights_file)
    (out / "config.yaml").write_text(
        "# network architecture\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    conf = _configuration_json(headless, weights_file, model_name)
    (out / "configuration.json").write_text(json.dumps(conf, indent=4) + "\n", encoding="utf-8")
    if not headless:
        (out / "tokens.txt").write_text("\n".join(tokens), encoding="utf-8")
    # Real model directories carry a README too; ours says the weights are random, and the exporter
    # reads the marker line to flag the model as untrained in its manifest.
    (out / "README.md").write_text(
        f"{GENERATED_MARKER} size={size} seed={seed} headless={headless}\n\n"
        "Random weights in the emotion2vec checkpoint layout, for tests and measurements only.\n",
        encoding="utf-8",
    )
    return out
