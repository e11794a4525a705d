"""Training-time augmentations of normalised feature batches ``x[B, T, F]`` with ``lengths[B]``.

Each draws from the step's `torch.Generator` only, so a step's augmentation is a function of
(seed, epoch, batch) and a resumed run replays it exactly. :func:`apply` runs the configured
ones in a fixed order (gain, tempo, frequency warp, SpecAugment); mixup changes the loss, so
the training step draws its parameters with :func:`mixup_draw`.

With ``features.deltas`` the feature axis holds ``channels`` = 3 planes ``[static | Δ | ΔΔ]``:
gain shifts the static plane only (a level change has no time derivative), the frequency warp
and SpecAugment's band masks act on the same bands of every plane. With one plane every
function does exactly what it did before planes existed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from stlser.config import TrainConfig


def random_gain(
    x: Tensor, gen: torch.Generator, gain_db: float, gain_scale: float, width: int | None = None
) -> Tensor:
    """± `gain_db` of level per utterance; `gain_scale` converts dB to normalised log-mel units.
    Padding (exact zeros) stays 0; with `width`, only the first `width` features move."""
    g = (torch.rand(x.shape[0], 1, 1, generator=gen) * 2 - 1) * gain_db
    shift = g * gain_scale * (x != 0)
    if width is not None and width < x.shape[-1]:
        shift[..., width:] = 0
    return x + shift


def time_stretch(
    x: Tensor, lengths: Tensor, gen: torch.Generator, amount: float
) -> tuple[Tensor, Tensor]:
    """Stretch the batch's time axis by one factor 1 ± `amount` (linear interpolation)."""
    r = 1.0 + (float(torch.rand(1, generator=gen)) * 2 - 1) * amount
    t_old = x.shape[1]
    t_new = max(1, round(t_old * r))
    x = F.interpolate(x.transpose(1, 2), size=t_new, mode="linear", align_corners=False)
    lengths = (lengths.float() * t_new / t_old).round().long().clamp(1, t_new)
    return x.transpose(1, 2), lengths


def random_freq_warp(x: Tensor, gen: torch.Generator, amount: float, channels: int = 1) -> Tensor:
    """:func:`freq_warp` with a factor 1 ± `amount` drawn per utterance (the same for each of
    the `channels` planes on the feature axis)."""
    a = 1.0 + (torch.rand(x.shape[0], generator=gen) * 2 - 1) * amount
    if channels == 1:
        return freq_warp(x, a)
    b, t, f = x.shape
    return freq_warp(x.reshape(b, t * channels, f // channels), a).reshape(b, t, f)


def spec_augment(
    x: Tensor,
    lengths: Tensor,
    gen: torch.Generator,
    n_freq: int = 2,
    f_max: int = 6,
    n_time: int = 2,
    t_frac: float = 0.1,
    channels: int = 1,
) -> Tensor:
    """SpecAugment (Park et al. 2019) frequency and time masks, set to 0 (the normalised mean);
    a band mask covers the same bands in each of the `channels` planes."""
    x = x.clone()
    b, t, width = x.shape
    f = width // channels
    for i in range(b):
        for _ in range(n_freq):
            w = int(torch.randint(0, f_max + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, max(1, f - w), (1,), generator=gen))
            for c in range(channels):
                x[i, :, c * f + f0 : c * f + f0 + w] = 0
        li = int(lengths[i])
        for _ in range(n_time):
            w = int(torch.randint(0, max(1, int(li * t_frac)) + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, max(1, li - w), (1,), generator=gen))
            x[i, t0 : t0 + w] = 0
    return x


def freq_warp(x: Tensor, alpha: Tensor) -> Tensor:
    """Vocal-tract-length-style warp of the frequency axis of x[B,T,F] (Jaitly & Hinton 2013):
    band f of utterance i takes the value at f / alpha[i] (linear interpolation, top band
    repeated). alpha > 1 moves energy up, as a shorter vocal tract would; padding stays 0."""
    b, t, f = x.shape
    pos = (torch.arange(f, dtype=x.dtype)[None, :] / alpha[:, None]).clamp(0, f - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=f - 1)
    w = (pos - lo.to(x.dtype))[:, None, :]
    lo, hi = lo[:, None, :].expand(b, t, f), hi[:, None, :].expand(b, t, f)
    return x.gather(2, lo) * (1 - w) + x.gather(2, hi) * w


def mixup_draw(batch: int, alpha: float, gen: torch.Generator) -> tuple[float, Tensor]:
    """Mixup (Zhang et al. 2018) weight λ ~ Beta(alpha, alpha) and the partner permutation."""
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    return lam, torch.randperm(batch, generator=gen)


def apply(
    x: Tensor,
    lengths: Tensor,
    gen: torch.Generator,
    tc: TrainConfig,
    gain_scale: float,
    channels: int = 1,
) -> tuple[Tensor, Tensor]:
    """The augmentations switched on in the train config `tc`; the
    feature axis holds `channels` planes (module docstring). The tempo change stretches Δ and
    ΔΔ with the rest (not rescaled by the factor: a deliberate approximation, ≤ the stretch)."""
    if tc.gain_db:
        width = x.shape[-1] // channels if channels > 1 else None
        x = random_gain(x, gen, tc.gain_db, gain_scale, width)
    if tc.time_stretch:
        x, lengths = time_stretch(x, lengths, gen, tc.time_stretch)
    if tc.freq_warp:
        x = random_freq_warp(x, gen, tc.freq_warp, channels)
    if tc.specaugment:
        x = spec_augment(x, lengths, gen, channels=channels)
    return x, lengths
