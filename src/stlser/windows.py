"""Window averaging for crop-trained networks (``train.crop_seconds``): one utterance is scored
as the mean of the posteriors of crop-length windows at 50 % hop over its feature frames.

For a clip of L frames and a window of C frames (hop H = C // 2): one window [0, L) when
L ≤ C (the plain full pass); otherwise windows start at 0, H, 2H, ... and the last one is moved
to end exactly at L, so n = ⌈(L − C) / H⌉ + 1 windows cover every frame. The windows are cut
from the *normalised features of the whole clip* (as the training crops are), so a frame's
values — deltas and utterance normalisation included — do not depend on where a window starts.

:func:`window_probs` is written with gathers and shape arithmetic only (no data-dependent
shapes): every clip of a padded batch gets ⌈T / H⌉ window slots, the ones past its own n are
masked out of the mean, so the same code runs in `model.predict`, in validation, in
`inference.Pipeline` and inside the exported ONNX graph. Imports torch only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stlser.config import FeatureConfig


def crop_frames(crop_seconds: float, fc: FeatureConfig) -> int:
    """Window (crop) length in feature frames for `crop_seconds`; 0 = windowing off."""
    if not crop_seconds or crop_seconds <= 0:
        return 0
    c = fc
    return max(1, int(round(float(crop_seconds) * c.sample_rate / c.hop_length)))


def hop_frames(crop: int) -> int:
    """Window hop (50 %) for a window of `crop` frames."""
    return max(1, crop // 2)


def artefact_crop(art: dict[str, Any]) -> int:
    """Window length (frames) an artefact's model was trained for; 0 = whole utterances."""
    inference = art.get("inference") or {}
    if not isinstance(inference, dict):
        raise ValueError(f"artefact field 'inference' is a {type(inference).__name__}, not a dict")
    seconds = float(inference.get("crop_seconds", 0) or 0)
    return crop_frames(seconds, FeatureConfig(**art["feature_config"])) if seconds > 0 else 0


def n_windows(lengths: Tensor, crop: int) -> Tensor:
    """Windows per clip of `lengths` frames (module docstring)."""
    hop = hop_frames(crop)
    over = (lengths - crop).clamp_min(0)
    return torch.div(over + hop - 1, hop, rounding_mode="floor") + 1


def window_probs(model: nn.Module, feats: Tensor, lengths: Tensor, crop: int) -> dict[str, Tensor]:
    """Mean over each clip's windows of the softmax posteriors (and of the embeddings z0, zL)
    of `model` (an `STLSER`) on normalised feats[B, T, F] with lengths[B] → {"probs"[B, C],
    "z0", "zL"}."""
    b, t, f = feats.shape
    hop = hop_frames(crop)
    slots = (t + hop - 1) // hop  # ≥ every clip's window count
    length = lengths.to(torch.int64).clamp(min=1, max=t)
    n = n_windows(length, crop)  # [B]
    w = torch.arange(slots, device=feats.device)[None, :]  # [1, W]
    start = torch.minimum(w * hop, (length - crop).clamp_min(0)[:, None])  # [B, W]
    valid = (w < n[:, None]).to(feats.dtype)  # [B, W]
    win_len = (length[:, None] - start).clamp(min=1, max=crop)  # [B, W]
    idx = start[:, :, None] + torch.arange(crop, device=feats.device)[None, None, :]  # [B, W, C]
    x = F.pad(feats, (0, 0, 0, crop))  # every index in range, also when T < C
    win = x.gather(1, idx.reshape(b, -1, 1).expand(-1, -1, f)).reshape(-1, crop, f)
    e = model.embed(win, win_len.reshape(-1))
    probs = torch.softmax(model.classifier(e["zL"]), -1)
    out = {"probs": probs, "z0": e["z0"], "zL": e["zL"]}
    weight = (valid / n[:, None].to(feats.dtype)).unsqueeze(-1)  # [B, W, 1]
    return {k: (v.reshape(b, slots, -1) * weight).sum(1) for k, v in out.items()}
