"""The CNN-BiLSTM-STL network of Wang et al. (ICASSP 2021), in one readable file.

    log-mel X[B,T,F] ─► 6 × (Conv2d+BN+ELU → AvgPool2d → Dropout) ─► H5[B,C,T',F']
      ─► time-major reshape [B,T',C·F'] ─► BiLSTM(d_lstm) ─► H[B,T',2·d_lstm]
      ─► aggregation (paper: 1-D conv) ─► Z0[B,2·d_lstm]
      ─► L stacked transformer encoder layers, no positional encoding ─► Z_L ─► Linear ─► logits

Choices where the paper is silent (see docs/model.md):
* Channels 16-32-48-64-96-128, 3×3 kernels; average pooling 2×2 in the first three pairs,
  2×1 (time only) in the fourth and none after, so 40 mel bands end as 5 and time is
  divided by 16 (one BiLSTM step per 160 ms). This lands near the paper's 356 K parameters
  without STL and 466 K with five layers (d_lstm 24, model width 48, 4 heads, FF 128).
* "A 1-D convolution maps the sequence to one vector": for variable length we use a
  Conv1d(2d, 2d, k=3) over time followed by a masked mean — length-agnostic, so no
  fixed 10 s padding is needed (the `authors` preset still pads to 10 s).
* Variable length is exact: every layer re-masks padded frames to zero, the backward LSTM
  runs on each sequence reversed within its own length, and all pooling over time is masked,
  so a padded batch gives the same outputs as one-by-one.
* With ``features.deltas`` the input is [static | Δ | ΔΔ] on the feature axis and the first
  convolution reads the three planes as input channels (``in_channels=3``, derived from the
  artefact's feature config), so only that layer grows (+2·9·C₁ weights).
* Attention is written with `reshape(B, -1, H, Dh)` and `F.scaled_dot_product_attention` so the
  ONNX export keeps a dynamic time axis (the stock TransformerEncoderLayer freezes it).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stlser import __version__, windows
from stlser.config import ExperimentConfig, FeatureConfig, NetworkConfig, model_from_dict
from stlser.safety import check_artefact, plain, rebuild, safe_torch_load, weights_digest
from stlser.utils import atomic_path

AGGREGATIONS = ("conv1d", "last", "attention", "mean")
ARTEFACT_FORMAT = "stlser-model/1"


def time_mask(lengths: Tensor, t: int) -> Tensor:
    """[B, t] bool, True on valid frames."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over time of x[B,T,D] where mask[B,T] is True."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class ConvBlock(nn.Module):
    """One CNN-pooling pair: Conv2d + BatchNorm + ELU, then AvgPool2d and dropout."""

    def __init__(self, c_in: int, c_out: int, k: int, pool: tuple[int, int], dropout: float):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.pool_t, self.pool_f = pool
        self.pool = nn.AvgPool2d(pool) if pool != (1, 1) else nn.Identity()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = self.drop(self.pool(F.elu(self.bn(self.conv(x)))))
        lengths = torch.div(lengths, self.pool_t, rounding_mode="floor").clamp_min(1)
        return x * time_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype), lengths


class BiLSTM(nn.Module):
    """A bidirectional LSTM that is exact under right-padding without packed sequences
    (which ONNX cannot export): the backward direction runs on each sequence reversed
    within its own length."""

    def __init__(self, d_in: int, hidden: int):
        super().__init__()
        self.fwd = nn.LSTM(d_in, hidden, batch_first=True)
        self.bwd = nn.LSTM(d_in, hidden, batch_first=True)

    @staticmethod
    def reverse_index(lengths: Tensor, t: int) -> Tensor:
        ar = torch.arange(t, device=lengths.device)[None, :]
        rev = lengths[:, None] - 1 - ar
        return torch.where(rev >= 0, rev, ar)  # padded tail stays in place

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        idx = self.reverse_index(lengths, x.shape[1]).unsqueeze(-1)
        h_f, _ = self.fwd(x)
        x_r = torch.gather(x, 1, idx.expand(-1, -1, x.shape[2]))
        h_b, _ = self.bwd(x_r)
        h_b = torch.gather(h_b, 1, idx.expand(-1, -1, h_b.shape[2]))
        h = torch.cat([h_f, h_b], dim=-1)
        return h * time_mask(lengths, x.shape[1]).unsqueeze(-1).to(h.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a dynamic sequence axis (ONNX-friendly)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        if d % heads:
            raise ValueError(f"model width {d} is not divisible by stl_heads={heads}")
        self.h, self.dh, self.p = heads, d // heads, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        b = x.shape[0]
        q, k, v = self.qkv(x).reshape(b, -1, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.p if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, -1, self.h * self.dh))


class TransformerLayer(nn.Module):
    """Post-norm encoder layer as in Vaswani et al.: x + MHSA, LayerNorm, x + FF, LayerNorm."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.attn = SelfAttention(d, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.drop(self.attn(x, key_mask)))
        return self.norm2(x + self.drop(self.ff(x)))


class Aggregator(nn.Module):
    """Sequence H[B,T,D] → one vector per utterance."""

    def __init__(self, kind: str, d: int, k: int):
        super().__init__()
        if kind not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {kind!r}; choose one of {AGGREGATIONS}")
        self.kind = kind
        if kind == "conv1d":
            self.conv = nn.Conv1d(d, d, k, padding=k // 2)
        elif kind == "attention":
            self.proj = nn.Linear(d, d)
            self.score = nn.Linear(d, 1, bias=False)

    def forward(self, h: Tensor, lengths: Tensor) -> Tensor:
        mask = time_mask(lengths, h.shape[1])
        if self.kind == "conv1d":
            z = self.conv(h.transpose(1, 2)).transpose(1, 2)
            return masked_mean(z, mask)
        if self.kind == "mean":
            return masked_mean(h, mask)
        if self.kind == "last":  # forward state at the last valid step, backward state at step 0
            d = h.shape[-1] // 2
            last = torch.gather(
                h[..., :d], 1, (lengths - 1).clamp_min(0)[:, None, None].expand(-1, 1, d)
            )
            return torch.cat([last[:, 0], h[:, 0, d:]], dim=-1)
        s = self.score(torch.tanh(self.proj(h))).squeeze(-1)
        s = s.masked_fill(~mask, torch.finfo(s.dtype).min)
        return (torch.softmax(s, dim=1).unsqueeze(-1) * h).sum(1)


class STLSER(nn.Module):
    """CNN-BiLSTM with stacked transformer layers; `forward(feats, lengths) -> logits`."""

    def __init__(self, cfg: NetworkConfig, n_features: int, n_classes: int, in_channels: int = 1):
        super().__init__()
        n = len(cfg.channels)
        if not (len(cfg.pool_time) == len(cfg.pool_freq) == n):
            raise ValueError("model.channels, pool_time and pool_freq must have the same length")
        if cfg.stl_over not in ("vector", "sequence"):
            raise ValueError(f"model.stl_over must be 'vector' or 'sequence', got {cfg.stl_over!r}")
        if in_channels < 1 or n_features % in_channels:
            raise ValueError(f"{n_features} features do not split into {in_channels} channels")
        self.cfg = cfg
        #: input planes stacked on the feature axis (3 with features.deltas: static, Δ, ΔΔ)
        self.in_channels = in_channels
        blocks, c_in, f = [], in_channels, n_features // in_channels
        for c, pt, pf in zip(cfg.channels, cfg.pool_time, cfg.pool_freq, strict=True):
            blocks.append(ConvBlock(c_in, c, cfg.kernel, (pt, pf), cfg.cnn_dropout))
            c_in, f = c, f // pf
        if f < 1:
            raise ValueError(f"frequency pooling reduces {n_features} features below 1")
        self.blocks = nn.ModuleList(blocks)
        self.time_stride = 1
        for pt in cfg.pool_time:
            self.time_stride *= pt
        d = 2 * cfg.d_lstm
        self.lstm = BiLSTM(c_in * f, cfg.d_lstm)
        self.aggregate = Aggregator(cfg.aggregation, d, cfg.agg_kernel)
        self.stl = nn.ModuleList(
            TransformerLayer(d, cfg.stl_heads, cfg.stl_ff, cfg.stl_dropout)
            for _ in range(cfg.stl_layers)
        )
        self.classifier = nn.Linear(d, n_classes)

    def encode(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """CNN-BiLSTM: feats[B,T,F] → H[B,T',2d] and its lengths."""
        lengths = lengths.clamp(min=1, max=feats.shape[1])
        x = feats * time_mask(lengths, feats.shape[1]).unsqueeze(-1).to(feats.dtype)
        if self.in_channels == 1:
            x = x.unsqueeze(1)
        else:  # [B, T, C·F] → [B, C, T, F]
            b, t, _ = x.shape
            x = x.reshape(b, t, self.in_channels, -1).permute(0, 2, 1, 3)
        for block in self.blocks:
            x, lengths = block(x, lengths)
        b, c, t, f = x.shape
        x = x.permute(0, 2, 1, 3).reshape(b, t, c * f)
        return self.lstm(x, lengths), lengths

    def embed(self, feats: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        """Utterance embeddings before (z0) and after (zL) the stacked transformer layers."""
        h, lengths = self.encode(feats, lengths)
        if self.cfg.stl_over == "vector":
            z0 = self.aggregate(h, lengths)
            z = z0.unsqueeze(1)
            for layer in self.stl:
                z = layer(z)
            return {"z0": z0, "zL": z[:, 0]}
        z0 = self.aggregate(h, lengths)
        mask = time_mask(lengths, h.shape[1])
        for layer in self.stl:
            h = layer(h, mask) * mask.unsqueeze(-1).to(h.dtype)
        return {"z0": z0, "zL": self.aggregate(h, lengths)}

    def forward(self, feats: Tensor, lengths: Tensor) -> Tensor:
        return self.classifier(self.embed(feats, lengths)["zL"])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_table(model: STLSER) -> dict[str, int]:
    """Parameters per part, for the docs and `stlser train` start-up print."""
    parts = {
        "cnn": model.blocks,
        "bilstm": model.lstm,
        "aggregation": model.aggregate,
        "stl": model.stl,
        "classifier": model.classifier,
    }
    table = {k: count_parameters(v) for k, v in parts.items()}
    table["total"] = count_parameters(model)
    return table


# ------------------------------------------------------------------ batching and prediction
def collate(items: list[tuple[np.ndarray, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad [T,F] arrays into [B,Tmax,F] with lengths and labels."""
    lengths = torch.tensor([x.shape[0] for x, _ in items], dtype=torch.long)
    feats = torch.zeros(len(items), int(lengths.max()), items[0][0].shape[1])
    for i, (x, _) in enumerate(items):
        feats[i, : x.shape[0]] = torch.from_numpy(x)
    labels = torch.tensor([y for _, y in items], dtype=torch.long)
    return feats, lengths, labels


@torch.no_grad()
def predict(
    model: STLSER,
    feats: list[np.ndarray],
    batch_size: int = 32,
    embeddings: bool = False,
    crop: int = 0,
) -> dict[str, np.ndarray]:
    """Probabilities (and optionally z0/zL) for a list of [T,F] arrays, in input order.

    `crop` > 0 (frames; a crop-trained model, `stlser.windows`): each utterance's probabilities
    and embeddings are the means over its crop-length windows at 50 % hop."""
    model.eval()
    order = np.argsort([len(x) for x in feats], kind="stable")
    probs = np.zeros((len(feats), model.classifier.out_features), np.float32)
    d = model.classifier.in_features
    z0, zl = np.zeros((len(feats), d), np.float32), np.zeros((len(feats), d), np.float32)
    for i in range(0, len(order), batch_size):
        ids = order[i : i + batch_size]
        x, lengths, _ = collate([(feats[j], 0) for j in ids])
        if crop > 0:
            e = windows.window_probs(model, x, lengths, crop)
            probs[ids] = e["probs"].numpy()
        else:
            e = model.embed(x, lengths)
            probs[ids] = torch.softmax(model.classifier(e["zL"]), -1).numpy()
        z0[ids], zl[ids] = e["z0"].numpy(), e["zL"].numpy()
    out = {"probs": probs}
    if embeddings:
        out.update(z0=z0, zL=zl)
    return out


# ------------------------------------------------------------------ artefact (model.pt)
def save_artefact(
    path: str | Path,
    model: STLSER,
    cfg: ExperimentConfig,
    n_features: int,
    labels: list[str],
    normalizer: dict,
    meta: dict,
) -> Path:
    """Write `model.pt`: everything needed to rebuild waveform → probabilities (docs/design.md).

    A crop-trained model (``train.crop_seconds`` > 0) also records ``"inference":
    {"crop_seconds": s}``, so every runtime scores clips by window averaging (`stlser.windows`).
    """
    art = {
        "format": ARTEFACT_FORMAT,
        "labels": list(labels),
        "model_config": asdict(cfg.model),
        "feature_config": asdict(cfg.features),
        "n_features": n_features,
        "normalizer": {
            k: (np.asarray(v, np.float32).tolist() if k != "mode" and v is not None else v)
            for k, v in normalizer.items()
        },
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": plain({**meta, "stlser_version": __version__}),
    }
    if cfg.train.crop_seconds > 0:
        art["inference"] = {"crop_seconds": float(cfg.train.crop_seconds)}
    art["weights_sha256"] = weights_digest(art["state_dict"])
    with atomic_path(path) as tmp:
        torch.save(art, tmp)
    return Path(path)


def load_artefact(path: str | Path, art: dict | None = None) -> tuple[STLSER, dict]:
    """Rebuild the network from `model.pt` (or from its already loaded dict `art`); returns
    (model in eval mode, the artefact dict)."""
    if art is None:
        art = safe_torch_load(path, "model artefact")
    art = check_artefact(path, art, ARTEFACT_FORMAT)

    def build() -> STLSER:
        cfg, n = model_from_dict({**art["model_config"], "kind": "network"}), art["n_features"]
        channels = FeatureConfig(**art["feature_config"]).input_channels
        return STLSER(cfg, n, len(art["labels"]), channels)

    return rebuild(path, build, art["state_dict"]), art
