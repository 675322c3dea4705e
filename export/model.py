"""A batch-exact re-implementation of FunASR's emotion2vec inference path, for ONNX export.

Module and parameter names mirror FunASR's ``Emotion2vec`` exactly, so a checkpoint's state dict loads with
``strict=True``. The forward pass takes a right-padded batch and its lengths and is *batch-exact*: each
item gives what FunASR gives for that item alone. FunASR's own padded path is not (emotion2vec issue #37);
the fix (see docs/DESIGN.md and ../shared/MODEL_NOTES.md):

1. the waveform is normalised per item over its valid samples only, not over the padded row;
2. features are multiplied by the frame-valid mask at the input of *each* positional conv layer, so padded
   frames look exactly like the conv's own zero padding of a lone utterance;
3. a key padding mask in every attention block;
4. the utterance embedding is the mean over valid frames only.

The ALiBi bias is computed from the frame count inside the graph (FunASR caches it in a dict, which would
freeze one length into an exported graph). Items shorter than the 400-sample receptive field are
zero-padded to 400 samples inside the graph, exactly as if the caller had sent those zeros.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emotion2vec_serving.export.checkpoint import parse_feature_encoder_spec
from emotion2vec_serving.modelrepo import HEADLESS_OUTPUT_NAMES, OUTPUT_NAMES

__all__ = ["Emotion2vecBatchExact", "alibi_slopes", "build_model"]

SAMPLE_RATE_HZ = 16000


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi head slopes, as FunASR's ``get_alibi`` computes them (also for non-powers of two)."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_2(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: heads - closest]


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """Layer norm computed in float32 whatever the compute dtype (no-op casts in fp32 graphs)."""
    if x.dtype == torch.float32:
        return norm(x)
    return norm(x.float()).to(x.dtype)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, alibi_heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.alibi_heads = alibi_heads  # FunASR adds the bias to the first alibi_heads heads only
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_pad: torch.Tensor | None, alibi: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.float()  # FunASR adds the float32 bias and takes the softmax in float32
        if self.alibi_heads == self.num_heads:
            attn = attn + alibi
        else:
            n = self.alibi_heads
            attn = torch.cat([attn[:, :n] + alibi, attn[:, n:]], dim=1)
        if key_pad is not None:
            attn = attn.masked_fill(key_pad[:, None, None, :], float("-inf"))
        attn = attn.softmax(dim=-1).to(v.dtype)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """FunASR's ``AltBlock`` with ``layer_norm_first: false`` (post-LN), inference only."""

    def __init__(self, dim: int, heads: int, alibi_heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, heads, alibi_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, key_pad: torch.Tensor | None, alibi: torch.Tensor) -> torch.Tensor:
        x = _layer_norm(self.norm1, x + self.attn(x, key_pad, alibi))
        return _layer_norm(self.norm2, x + self.mlp(x))


class _BlockEncoder(nn.Module):
    def __init__(self, blocks: list[_Block], dim: int, eps: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=eps)


class _ConvFeatureExtractor(nn.Module):
    def __init__(self, spec: list[tuple[int, int, int]]) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList()
        in_d = 1
        for dim, k, stride in spec:
            # Index layout mirrors FunASR: 0 conv, 1 dropout, 2 (transpose, LayerNorm, transpose), 3 GELU.
            self.conv_layers.append(
                nn.Sequential(
                    nn.Conv1d(in_d, dim, k, stride=stride, bias=False),
                    nn.Identity(),
                    nn.Sequential(_Transpose(), nn.LayerNorm(dim), _Transpose()),
                    nn.GELU(),
                )
            )
            in_d = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        for layer in self.conv_layers:
            conv, _, norm, act = layer[0], layer[1], layer[2], layer[3]
            x = conv(x)
            x = _layer_norm(norm[1], x.transpose(1, 2)).transpose(1, 2)
            x = act(x)
        return x


class _AudioEncoder(nn.Module):
    def __init__(self, cfg: dict[str, Any], audio: dict[str, Any]) -> None:
        super().__init__()
        d = int(cfg["embed_dim"])
        eps = float(cfg.get("norm_eps", 1e-5))
        self.spec = parse_feature_encoder_spec(str(audio["feature_encoder_spec"]))
        self.local_encoder = _ConvFeatureExtractor(self.spec)
        c = self.spec[-1][0]
        self.project_features = nn.Sequential(_Transpose(), nn.LayerNorm(c), nn.Linear(c, d))
        depth = int(audio["conv_pos_depth"])
        k = max(3, int(audio["conv_pos_width"]) // depth)
        self.pos_kernel = k
        layers: list[nn.Module] = [_Transpose()]
        for _ in range(depth):
            layers.append(
                nn.Sequential(
                    nn.Conv1d(d, d, kernel_size=k, padding=k // 2, groups=int(audio["conv_pos_groups"])),
                    nn.Identity(),  # SamePad: removes nothing for odd kernels
                    _Transpose(),
                    nn.LayerNorm(d, elementwise_affine=False),
                    _Transpose(),
                    nn.GELU(),
                )
            )
        layers.append(_Transpose())
        self.relative_positional_encoder = nn.Sequential(*layers)
        self.num_extra_tokens = int(audio["num_extra_tokens"])
        self.extra_tokens = nn.Parameter(torch.zeros(1, self.num_extra_tokens, d))
        self.num_alibi_heads = int(audio["num_alibi_heads"])
        per_head = self.num_alibi_heads if audio.get("learned_alibi_scale_per_head", True) else 1
        self.alibi_scale = nn.Parameter(torch.ones(1, 1, per_head, 1, 1))
        self.register_buffer("alibi_slopes", self.computed_buffers()["alibi_slopes"], persistent=False)
        blocks = [
            _Block(d, int(cfg["num_heads"]), int(audio["num_alibi_heads"]), float(cfg["mlp_ratio"]), eps)
            for _ in range(int(audio["prenet_depth"]))
        ]
        self.context_encoder = _BlockEncoder(blocks, d, eps)

    def computed_buffers(self) -> dict[str, torch.Tensor]:
        """Buffers computed from the config, not stored in checkpoints (on the CPU)."""
        slopes = torch.tensor(alibi_slopes(self.num_alibi_heads), dtype=torch.float32, device="cpu")
        return {"alibi_slopes": slopes}


class Emotion2vecBatchExact(nn.Module):
    """emotion2vec encoder + head: ``(waveform[B,S] f32, lengths[B] i64)`` -> the DESIGN.md outputs.

    ``padding_fix=False`` reproduces FunASR's naive padded batching (normalisation over the padded row,
    unmasked positional convs, plain mean); it exists only to prove the parity check catches it.
    """

    def __init__(
        self, config: dict[str, Any], labels: tuple[str, ...] = (), padding_fix: bool = True
    ) -> None:
        super().__init__()
        cfg = config["model_conf"]
        audio = cfg["modalities"]["audio"]
        d = int(cfg["embed_dim"])
        eps = float(cfg.get("norm_eps", 1e-5))
        self.normalize = bool(cfg.get("normalize", True))
        self.padding_fix = padding_fix
        self.embed_dim = d
        self.modality_encoders = nn.ModuleDict({"AUDIO": _AudioEncoder(cfg, audio)})
        self.blocks = nn.ModuleList(
            _Block(d, int(cfg["num_heads"]), int(audio["num_alibi_heads"]), float(cfg["mlp_ratio"]), eps)
            for _ in range(int(cfg["depth"]))
        )
        self.labels = tuple(labels)
        self.proj: nn.Linear | None = nn.Linear(d, len(labels)) if labels else None
        self.register_buffer("label_mask", self.computed_buffers()["label_mask"], persistent=False)
        self.compute_dtype = torch.float32
        enc = self.modality_encoders["AUDIO"]
        self.receptive_field = 1
        for _dim, k, s in reversed(enc.spec):
            self.receptive_field = (self.receptive_field - 1) * s + k

    def computed_buffers(self) -> dict[str, torch.Tensor]:
        """Buffers computed from the labels, not stored in checkpoints (on the CPU)."""
        # Additive mask: 0 for enabled labels, -inf for those named unuse*; exactly FunASR's assignment.
        mask = [float("-inf") if t.startswith("unuse") else 0.0 for t in self.labels]
        return {"label_mask": torch.tensor(mask, dtype=torch.float32, device="cpu")}

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.proj is None:
            return HEADLESS_OUTPUT_NAMES
        return OUTPUT_NAMES

    def to_compute_dtype(self, dtype: torch.dtype) -> Emotion2vecBatchExact:
        """Run the network in ``dtype`` (fp16 for GPUs); layer norms, softmax and I/O stay float32."""
        self.compute_dtype = dtype
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                module.to(dtype)
        enc = self.modality_encoders["AUDIO"]
        enc.extra_tokens.data = enc.extra_tokens.data.to(dtype)
        return self

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames per item: the conv length formula applied layer by layer (integer arithmetic)."""
        n = lengths
        for _dim, k, s in self.modality_encoders["AUDIO"].spec:
            n = torch.div(n - k, s, rounding_mode="floor") + 1
        return n

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        enc = self.modality_encoders["AUDIO"]
        rf = self.receptive_field
        # Right-pad to at least the receptive field: ``index_select`` over ``arange(max(S, rf))`` of a row
        # extended by rf zeros keeps the time axis dynamic (a Python ``max`` would freeze it in the trace).
        n_samples = torch.clamp(torch._shape_as_tensor(waveform)[1], min=rf)
        waveform = F.pad(waveform.float(), (0, rf)).index_select(1, torch.arange(n_samples))
        lengths = torch.clamp(lengths.to(torch.int64), min=rf)
        lengths = torch.minimum(lengths, n_samples)
        sample_mask = (torch.arange(n_samples)[None, :] < lengths[:, None]).to(torch.float32)
        x = waveform * sample_mask
        if self.normalize:
            if self.padding_fix:
                count = lengths.to(torch.float32)[:, None]
                mean = x.sum(dim=1, keepdim=True) / count
                var = (((x - mean) * sample_mask) ** 2).sum(dim=1, keepdim=True) / count
                x = (x - mean) / torch.sqrt(var + 1e-5) * sample_mask
            else:  # FunASR's layer norm over the whole (padded) row
                mean = x.mean(dim=1, keepdim=True)
                var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
                x = (x - mean) / torch.sqrt(var + 1e-5)
        x = x.to(self.compute_dtype)

        feats = enc.local_encoder(x)  # [B, C, T]
        feats = enc.project_features[0](feats)
        feats = _layer_norm(enc.project_features[1], feats)
        x = enc.project_features[2](feats)  # [B, T, D]

        n_frames = torch._shape_as_tensor(x)[1]
        frame_lengths = self.frame_lengths(lengths)
        frame_valid = torch.arange(n_frames)[None, :] < frame_lengths[:, None]  # [B, T]
        frame_mask = frame_valid.to(x.dtype)[:, :, None]

        pos = x
        for layer in list(enc.relative_positional_encoder)[1:-1]:
            if self.padding_fix:
                pos = pos * frame_mask
            h = layer[0](pos.transpose(1, 2)).transpose(1, 2)
            h = _layer_norm(layer[3], h)
            pos = layer[5](h)
        x = x + pos

        # ALiBi: -|i - j| * slope_h * clamp(scale_h, 0), zero for the extra tokens (FunASR pads the bias with
        # 0). The distances are padded, not the bias: the same values in FunASR's order of products, and one
        # [1, heads, T, T] tensor at a time instead of two during the pad (146 MB each at 30 s, large).
        n_extra = enc.num_extra_tokens
        steps = torch.arange(n_frames).to(torch.float32)
        distance = F.pad(-(steps[None, :] - steps[:, None]).abs(), (n_extra, 0, n_extra, 0))
        alibi = enc.alibi_slopes[:, None, None] * distance[None, :, :]
        alibi = alibi[None] * enc.alibi_scale.clamp_min(0).squeeze(0).float()

        b = x.shape[0]
        x = torch.cat([enc.extra_tokens.expand(b, -1, -1).to(x.dtype), x], dim=1)
        key_pad = F.pad(~frame_valid, (n_extra, 0), value=False)

        x = _layer_norm(enc.context_encoder.norm, x)
        for blk in enc.context_encoder.blocks:
            x = blk(x, key_pad, alibi)
        for blk in self.blocks:
            x = blk(x, key_pad, alibi)

        frames = x[:, n_extra:].float()  # [B, T, D]
        valid = frame_valid.to(torch.float32)[:, :, None]
        if self.padding_fix:
            frames = frames * valid
            embedding = frames.sum(dim=1) / frame_lengths.to(torch.float32)[:, None]
        else:
            embedding = frames.mean(dim=1)
        if self.proj is None:
            return embedding, frames, frame_lengths
        logits = self.proj(embedding.to(self.compute_dtype)).float() + self.label_mask
        probs = logits.softmax(dim=-1)
        frame_logits = self.proj(frames.to(self.compute_dtype)).float() + self.label_mask
        frame_probs = frame_logits.softmax(dim=-1) * valid
        return logits, probs, frame_probs, embedding, frames, frame_lengths


def build_model(
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    labels: tuple[str, ...] = (),
    padding_fix: bool = True,
    assign: bool = False,
) -> Emotion2vecBatchExact:
    """Instantiate and load strictly (every key, every shape); eval mode, fresh (no cached state).

    ``assign``: the module is built on the meta device and takes the state dict's tensors as its parameters
    (no randomly initialised copy, no copy of the weights): one copy of the model in memory, shared with
    ``state_dict``. Without it the parameters are copies, independent of ``state_dict``.
    """
    if not assign:
        model = Emotion2vecBatchExact(config, labels, padding_fix=padding_fix)
        model.load_state_dict(state_dict, strict=True)
        return model.eval()
    with torch.device("meta"):
        model = Emotion2vecBatchExact(config, labels, padding_fix=padding_fix)
    model.load_state_dict(state_dict, strict=True, assign=True)
    for module in model.modules():  # buffers the state dict does not hold were built on the meta device
        if isinstance(module, (Emotion2vecBatchExact, _AudioEncoder)):
            for name, value in module.computed_buffers().items():
                setattr(module, name, value)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"tensors left on the meta device: {leftover}")
    return model.eval()
