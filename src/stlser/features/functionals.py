"""Functionals of low-level descriptors per clip, in torch: mask-aware, batched, ONNX-exportable.

``FunctionalFrontEnd(set_name)(wave[B, N] float32, lengths[B] int64) -> float32[B, D]`` with
``names`` (D feature names) and ``dims`` (D per set); ``SETS`` is the registry of named sets:

* ``compact`` (96 values, about eGeMAPS size; Eyben et al. 2016): F0 (semitones, voiced frames)
  and loudness with ten functionals each, the deviation of their deltas, jitter / shimmer / HNR
  / voicing probability, formants F1-F3, H1-H2 and H1-A3 (mean, std), alpha ratio, Hammarberg index, spectral slope and flux,
  MFCC 1-4 on voiced frames (mean, std) and unvoiced frames (mean), mean and std of the other
  spectral and energy descriptors, and the voiced-segment statistics.
* ``medium`` (1,752 values, about IS10 size; Schuller et al. 2010): loudness, MFCC 1-14, the
  26 log mel bands, F0, voicing probability, jitter, shimmer, HNR and their deltas × 19
  functionals (positions of the extremes, range, mean, regression, moments, percentiles and
  their ranges, up-level times 75 / 90 %), plus the voiced-segment statistics.
* ``large`` (4,282 values, about ComParE size; Schuller et al. 2013): every descriptor and its
  delta (:mod:`stlser.features.descriptors`, 138) × every functional of :data:`FUNCTIONALS`
  (31), plus the voiced-segment statistics.

A name joined with ``+`` (``"compact+large"``) concatenates sets computed from one pass of the
descriptors; the suffix ``featuresets.RELATIVE`` (``"compact+large/relative"``) computes them relative
to each clip's level (``Descriptors(relative_level=True)``: only the level functionals depend on
the gain; ``model.level: drop``). Functionals are taken over a clip's valid frames, or over its voiced frames for
F0, jitter, shimmer, HNR, formants, H1-H2, H1-A3 and their deltas (:data:`descriptors.VOICED_ONLY`); a clip without any
frame in its mask gets 0 for every functional over it. Definitions (:func:`masked_functionals`):

* moments: mean, standard deviation, skewness, kurtosis (population, not excess);
* percentiles 1/20/50/80/99 (linear interpolation between order statistics: the masked values
  are sorted with +inf padding and gathered at per-row positions ``q (n − 1)``), the ranges
  p80 − p20 and p99 − p1, min, max, max − min, and the relative positions of min and max
  (frame index / (frames − 1));
* linear regression on time in seconds (slope, offset at t = 0, mean squared error) and
  quadratic regression on time centred on the mask's mean time and measured in clip durations
  (a, b, c, error), solved in closed form (Cramer's rule; 0 when fewer than three distinct
  times);
* rise / fall time: share of consecutive masked frame pairs in which the value rises / falls
  by more than ``DEAD_BAND`` (1e-4) of the range;
  up-level times: share of masked frames above min + q (max − min), q = 25/50/75/90 %;
* peaks (frames above the previous and not below the next by more than the same dead band,
  all three masked): peaks per second
  of clip and the mean distance between the first and last peak per interval (s).

Segment statistics (eGeMAPS): voiced share of frames, voiced segments per second, mean voiced
and mean unvoiced segment length (s).

Numerics: float32, no NaN or inf for any input (guards on every division and on empty masks);
device follows the input. The module computes on the waveform as given: clips whose peaks
exceed 1.0 are scaled down at the decode boundary (``stlser.audio``, with a warning), not here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stlser import featuresets
from stlser.features.descriptors import (
    ENERGY_NAMES,
    HOP,
    SAMPLE_RATE,
    SPECTRAL_NAMES,
    VOICED_ONLY,
    Descriptors,
)

#: Bump when the numbers of any set change (the feature cache keys on it).
VERSION = 4
#: The feature cache zero-pads each clip to a multiple of this many samples (0.25 s) and
#: batches clips of one padded length (:func:`clips_functionals`), up to MAX_BATCH at a time.
PAD_QUANTUM = 4000
MAX_BATCH = 8
HOP_S = HOP / SAMPLE_RATE
PERCENTILES = (1, 20, 50, 80, 99)
UP_LEVELS = (25, 50, 75, 90)
FUNCTIONALS = [
    "mean",
    "std",
    "skewness",
    "kurtosis",
    *[f"p{q}" for q in PERCENTILES],
    "range_p20_p80",
    "range_p1_p99",
    "min",
    "max",
    "range",
    "relpos_min",
    "relpos_max",
    "lin_slope",
    "lin_offset",
    "lin_error",
    "quad_a",
    "quad_b",
    "quad_c",
    "quad_error",
    "rise_time",
    "fall_time",
    *[f"uplevel{q}" for q in UP_LEVELS],
    "peak_rate",
    "peak_distance",
]
SEGMENT_NAMES = ["voiced_share", "voiced_segments_per_s", "voiced_mean_len", "unvoiced_mean_len"]
EPS = 1e-12
DEAD_BAND = 1e-4  # of a series' range: smaller steps are flat for rise / fall and peaks
_BIG = 1e7  # larger than any frame index


def _gather_t(x: Tensor, idx: Tensor) -> Tensor:
    """x[b, idx[b, f], f] for x[B, T, F], idx[B, F] → [B, F]."""
    return x.gather(1, idx.unsqueeze(1))[:, 0]


def masked_functionals(x: Tensor, mask: Tensor, frames: Tensor, hop_s: float = HOP_S) -> Tensor:
    """The :data:`FUNCTIONALS` of x[B, T, F] over mask[B, T, F] (bool) → [B, F, G].

    `frames[B]` (valid frames per clip) sets the clip duration for rates and relative
    positions. Definitions in the module docstring."""
    b, t_len, f = x.shape
    dt = x.dtype
    m = mask.to(dt)
    n = m.sum(1)  # [B, F]
    ns = n.clamp_min(1.0)
    has = n > 0
    zero = torch.zeros_like(n)
    x = torch.where(mask, x, torch.zeros_like(x))
    mean = x.sum(1) / ns
    c = torch.where(mask, x - mean.unsqueeze(1), torch.zeros_like(x))
    var = (c * c).sum(1) / ns
    std = torch.sqrt(var)
    # Skewness and kurtosis of the standardised values (scale-free, so descriptors as small as
    # spectral flux keep theirs); a series constant to float precision has none (0).
    varies = std > 1e-5 * x.abs().amax(1)
    u = c * torch.where(varies, 1.0 / std.clamp_min(1e-30), zero).unsqueeze(1)
    u2 = u * u
    skew = (u2 * u).sum(1) / ns
    kurt = (u2 * u2).sum(1) / ns
    # Order statistics: sort with +inf padding, gather per-row positions.
    inf = torch.full_like(x, float("inf"))
    xs = torch.sort(torch.where(mask, x, inf), dim=1).values
    last = (n - 1).clamp_min(0.0)
    top = last.to(torch.int64)

    def order_stat(pos: Tensor) -> Tensor:
        lo = pos.floor()
        w = pos - lo
        lo_i = lo.to(torch.int64)
        hi_i = torch.minimum(lo_i + 1, top)
        v_lo = torch.where(has, _gather_t(xs, lo_i), zero)
        v_hi = torch.where(has, _gather_t(xs, hi_i), zero)
        return v_lo + w * (v_hi - v_lo)

    pct = [order_stat(last * (q / 100.0)) for q in PERCENTILES]
    vmin = torch.where(has, xs[:, 0], zero)
    vmax = torch.where(has, _gather_t(xs, top), zero)
    span = (frames.to(dt) - 1).clamp_min(1.0).unsqueeze(1)
    # Positions: first occurrence of the min / max (argmin / argmax break ties to the first).
    i_min = torch.argmin(torch.where(mask, x, inf), dim=1)
    i_max = torch.argmax(torch.where(mask, x, -inf), dim=1)
    pos_min = torch.where(has, i_min.to(dt) / span, zero)
    pos_max = torch.where(has, i_max.to(dt) / span, zero)
    # Linear regression on time (s).
    tt = (torch.arange(t_len, device=x.device, dtype=dt) * hop_s).view(1, t_len, 1)
    tm = (m * tt).sum(1) / ns
    ct = (tt - tm.unsqueeze(1)) * m
    ct2 = ct * ct
    s2 = ct2.sum(1)
    ok_lin = s2 > EPS
    slope = torch.where(ok_lin, (ct * c).sum(1) / s2.clamp_min(EPS), zero)
    offset = mean - slope * tm
    resid = c - slope.unsqueeze(1) * ct
    lin_err = (resid * resid).sum(1) / ns
    # Quadratic regression on centred time u in clip durations (|u| ≤ 1, well conditioned):
    # [S4 S3 S2; S3 S2 0; S2 0 n] [a b c]ᵀ = [R2 R1 0]ᵀ.
    u = ct / (frames.to(dt) * hop_s).clamp_min(hop_s).view(-1, 1, 1)
    u2 = u * u
    q2 = (u2).sum(1)
    s3 = (u2 * u).sum(1)
    s4 = (u2 * u2).sum(1)
    r1 = (u * c).sum(1)
    r2 = (u2 * c).sum(1)
    det = n * q2 * s4 - n * s3 * s3 - q2 * q2 * q2
    ok_q = det > 1e-4 * n * q2 * s4 + EPS
    det_s = torch.where(ok_q, det, torch.ones_like(det))
    qa = torch.where(ok_q, n * (r2 * q2 - s3 * r1) / det_s, zero)
    qb = torch.where(ok_q, (n * s4 * r1 - n * s3 * r2 - q2 * q2 * r1) / det_s, zero)
    qc = torch.where(ok_q, (s3 * q2 * r1 - q2 * q2 * r2) / det_s, zero)
    qres = (c - qa.unsqueeze(1) * u2 - qb.unsqueeze(1) * u - qc.unsqueeze(1) * m) * m
    q_err = (qres * qres).sum(1) / ns
    qc = qc + mean * has.to(dt)
    # Rise / fall times over consecutive masked pairs; a change below DEAD_BAND of the range
    # counts as flat (float rounding must not flip a comparison of equal values).
    rng = vmax - vmin
    tol = (DEAD_BAND * rng).unsqueeze(1)
    mp = m[:, 1:] * m[:, :-1]
    dx = x[:, 1:] - x[:, :-1]
    n_pair = mp.sum(1).clamp_min(1.0)
    rise = ((dx > tol).to(dt) * mp).sum(1) / n_pair
    fall = ((dx < -tol).to(dt) * mp).sum(1) / n_pair
    # Up-level times.
    ups = [((x > (vmin + q / 100.0 * rng).unsqueeze(1)).to(dt) * m).sum(1) / ns for q in UP_LEVELS]
    # Peaks (above the previous value and not below the next, beyond the same dead band).
    mid = x[:, 1:-1]
    pk = (mid - x[:, :-2] > tol) & (mid - x[:, 2:] >= -tol)
    pk = pk.to(dt) * m[:, 1:-1] * m[:, :-2] * m[:, 2:]
    n_pk = pk.sum(1)
    dur = (frames.to(dt) * hop_s).clamp_min(hop_s).unsqueeze(1)
    peak_rate = n_pk / dur
    ti = torch.arange(1, t_len - 1, device=x.device, dtype=dt).view(1, -1, 1)
    first = _BIG - ((_BIG - ti) * pk).amax(1)  # needs T ≥ 3
    lastp = (ti * pk).amax(1)
    peak_dist = torch.where(n_pk >= 2, (lastp - first) / (n_pk - 1).clamp_min(1.0) * hop_s, zero)
    out = [
        mean,
        std,
        skew,
        kurt,
        *pct,
        pct[3] - pct[1],
        pct[4] - pct[0],
        vmin,
        vmax,
        rng,
        pos_min,
        pos_max,
        slope,
        offset,
        lin_err,
        qa,
        qb,
        qc,
        q_err,
        rise,
        fall,
        *ups,
        peak_rate,
        peak_dist,
    ]
    return torch.stack(out, dim=-1)


def segment_stats(voiced: Tensor, frames: Tensor, hop_s: float = HOP_S) -> Tensor:
    """Voiced share, voiced segments per second, mean voiced and unvoiced segment length (s)
    of voiced[B, T] (already false beyond each clip's frames) → [B, 4]."""
    dt = torch.float32
    t = torch.arange(voiced.shape[1], device=voiced.device)
    valid = t[None, :] < frames[:, None]
    v = voiced & valid
    u = valid & ~voiced
    pad = torch.zeros_like(v[:, :1])
    v_on = v & ~torch.cat([pad, v[:, :-1]], dim=1)
    u_on = u & ~torch.cat([pad, u[:, :-1]], dim=1)
    nf = frames.to(dt).clamp_min(1.0)
    nv, nu = v.to(dt).sum(1), u.to(dt).sum(1)
    sv, su = v_on.to(dt).sum(1), u_on.to(dt).sum(1)
    return torch.stack(
        [
            nv / nf,
            sv / (nf * hop_s),
            nv / sv.clamp_min(1.0) * hop_s,
            nu / su.clamp_min(1.0) * hop_s,
        ],
        dim=-1,
    )


# ------------------------------------------------------------------------------ named sets
#: compact: (descriptors, mask, functionals); mask "default" = voiced for VOICED_ONLY, else all.
_PROSODY = [
    "mean",
    "std",
    "p20",
    "p50",
    "p80",
    "range_p20_p80",
    "lin_slope",
    "rise_time",
    "fall_time",
    "peak_rate",
]
_VU = ["alpha_ratio", "hammarberg_index", "spectral_slope", "spectral_flux"]
# the energy and spectral descriptors not summarised by voicing above, in descriptor order
_OTHER = [n for n in [*ENERGY_NAMES, *SPECTRAL_NAMES] if n not in (*_VU, "loudness")]
COMPACT_GROUPS: list[tuple[list[str], str, list[str]]] = [
    (["f0_semitone", "loudness"], "default", _PROSODY),
    (["d_f0_semitone", "d_loudness"], "default", ["std"]),
    (["jitter", "shimmer", "hnr", "voicing_prob"], "default", ["mean", "std"]),
    (["formant1", "formant2", "formant3", "h1_h2", "h1_a3"], "default", ["mean", "std"]),
    ([*_VU, "mfcc1", "mfcc2", "mfcc3", "mfcc4"], "voiced", ["mean", "std"]),
    ([*_VU, "mfcc1", "mfcc2", "mfcc3", "mfcc4"], "unvoiced", ["mean"]),
    (_OTHER, "default", ["mean", "std"]),
]


_KINDS = ("default", "voiced", "unvoiced")


_MEDIUM_LLDS = [
    "loudness",
    *[f"mfcc{i}" for i in range(1, 15)],
    *[f"mel{i:02d}" for i in range(1, 27)],
    "f0_semitone",
    "voicing_prob",
    "jitter",
    "shimmer",
    "hnr",
]
_MEDIUM_FUNCS = [
    "relpos_max",
    "relpos_min",
    "range",
    "mean",
    "lin_slope",
    "lin_offset",
    "lin_error",
    "std",
    "skewness",
    "kurtosis",
    "p1",
    "p20",
    "p50",
    "p80",
    "p99",
    "range_p20_p80",
    "range_p1_p99",
    "uplevel75",
    "uplevel90",
]
MEDIUM_GROUPS = [([*_MEDIUM_LLDS, *["d_" + x for x in _MEDIUM_LLDS]], "default", _MEDIUM_FUNCS)]


def _is_voiced_only(name: str) -> bool:
    return name.removeprefix("d_") in VOICED_ONLY


class _Set(nn.Module):
    """One named functional set over the descriptors' output (``names``: its D names)."""

    def __init__(self, lld_names: list[str], groups: list[tuple[list[str], str, list[str]]] | None):
        super().__init__()
        self.lld_names = list(lld_names)
        if groups is None:  # large: every descriptor × every functional
            groups = [(self.lld_names, "default", list(FUNCTIONALS))]
        # One pass of masked_functionals over every (descriptor, mask) column the set needs,
        # then one gather of the (column, functional) pairs it keeps.
        self.columns: list[tuple[int, str]] = []
        picks: list[int] = []
        self.names: list[str] = []
        n_g = len(FUNCTIONALS)
        for llds, kind, funcs in groups:
            tag = {"default": "", "voiced": "_V", "unvoiced": "_UV"}[kind]
            for x in llds:
                col = (self.lld_names.index(x), kind)
                if col not in self.columns:
                    self.columns.append(col)
                j = self.columns.index(col)
                picks += [j * n_g + FUNCTIONALS.index(g) for g in funcs]
                self.names += [f"{x}{tag}_{g}" for g in funcs]
        self.names += list(SEGMENT_NAMES)
        cols = torch.tensor([c for c, _ in self.columns], dtype=torch.int64)
        self.register_buffer("cols", cols, persistent=False)
        voiced_only = [_is_voiced_only(self.lld_names[c]) for c, _ in self.columns]
        kind_of = {k: torch.tensor([kk == k for _, kk in self.columns]) for k in _KINDS}
        kind_of["default"] = kind_of["default"] & ~torch.tensor(voiced_only, dtype=torch.bool)
        kind_of["voiced"] = kind_of["voiced"] | (
            torch.tensor([kk == "default" for _, kk in self.columns]) & torch.tensor(voiced_only)
        )
        for k in ("default", "voiced", "unvoiced"):
            self.register_buffer(f"is_{k}", kind_of[k], persistent=False)
        self.all_picked = picks == list(range(len(self.columns) * n_g))
        self.register_buffer("picks", torch.tensor(picks, dtype=torch.int64), persistent=False)

    def forward(self, lld: Tensor, frames: Tensor, voiced: Tensor) -> Tensor:
        t = torch.arange(lld.shape[1], device=lld.device)
        valid = (t[None, :] < frames[:, None]).unsqueeze(-1)  # [B, T, 1]
        v = voiced.unsqueeze(-1) & valid
        mask = (
            (valid & self.is_default) | (v & self.is_voiced) | (valid & ~v & self.is_unvoiced)
        )  # [B, T, C]
        vals = masked_functionals(lld.index_select(-1, self.cols), mask, frames)  # [B, C, G]
        vals = vals.reshape(vals.shape[0], -1)
        if not self.all_picked:
            vals = vals.index_select(-1, self.picks)
        return torch.cat([vals, segment_stats(voiced, frames)], dim=-1)


#: Named functional sets: name → descriptor groups (None: every descriptor × every functional).
SETS: dict[str, list[tuple[list[str], str, list[str]]] | None] = {
    "compact": COMPACT_GROUPS,
    "medium": MEDIUM_GROUPS,
    "large": None,
}


def set_names(set_name: str | Sequence[str]) -> list[str]:
    """The set names of ``"a+b"`` (with or without ``featuresets.RELATIVE``) or a sequence,
    checked against :data:`SETS`."""
    if isinstance(set_name, str):
        set_name = set_name.removesuffix(featuresets.RELATIVE)
    names = set_name.split("+") if isinstance(set_name, str) else list(set_name)
    bad = [s for s in names if s not in SETS]
    if bad or not names:
        raise ValueError(f"unknown functional set(s) {bad}; known: {sorted(SETS)}")
    return names


class FunctionalFrontEnd(nn.Module):
    """Waveform → functionals of one or more named sets (module docstring).

    ``forward(wave[B, N] float32, lengths[B] int64) -> float32[B, D]``; ``names`` (D names,
    prefixed by the set's name), ``dims`` (D of each set, in order), ``set_names``. Exportable
    to ONNX (``torch.onnx.export(..., dynamo=True)``) with a dynamic batch and length.
    """

    def __init__(self, set_name: str | Sequence[str] = "compact", rasta: bool = False) -> None:
        super().__init__()
        self.set_names = set_names(set_name)
        relative = isinstance(set_name, str) and set_name.endswith(featuresets.RELATIVE)
        self.descriptors = Descriptors(rasta=rasta, relative_level=relative)
        self.sets = nn.ModuleList([_Set(self.descriptors.names, SETS[s]) for s in self.set_names])
        self.names = [
            f"{s}:{n}" for s, m in zip(self.set_names, self.sets, strict=True) for n in m.names
        ]
        self.dims = [len(m.names) for m in self.sets]

    def forward(self, wave: Tensor, lengths: Tensor) -> Tensor:
        # Two extra zero frames keep T ≥ 3 for any input; frames[b] does not change.
        lengths = torch.clamp(lengths.to(torch.int64), min=0, max=wave.shape[1])
        wave = F.pad(wave.to(torch.float32), (0, 2 * HOP))
        lld, frames, voiced = self.descriptors(wave, lengths)
        return torch.cat([s(lld, frames, voiced) for s in self.sets], dim=-1)


@functools.lru_cache(maxsize=4)
def front_end(set_name: str) -> FunctionalFrontEnd:
    """The process-wide front end of a set name (``"compact+large"``, ``"compact+large/relative"``),
    built once."""
    return FunctionalFrontEnd(set_name).eval()


def padded_length(n: int) -> int:
    """The length (samples) a clip of `n` samples is zero-padded to for the feature cache."""
    return max(1, -(-int(n) // PAD_QUANTUM)) * PAD_QUANTUM


def clips_functionals(waves: Sequence[np.ndarray], set_name: str) -> list[np.ndarray]:
    """The functionals of 16 kHz mono clips, each → float32[D] (the feature cache's entry
    point). Each clip is zero-padded to :func:`padded_length`, and clips of one padded length
    are computed together, up to :data:`MAX_BATCH` at a time: a clip's values are the same
    whatever it is computed with (bit-identical to the clip alone), at a fraction of the
    per-clip cost of one-by-one."""
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(waves):
        groups.setdefault(padded_length(len(w)), []).append(i)
    out: list[np.ndarray] = [np.empty(0, np.float32)] * len(waves)
    for n, idx in sorted(groups.items()):
        for j in range(0, len(idx), MAX_BATCH):
            part = idx[j : j + MAX_BATCH]
            x = np.zeros((len(part), n), np.float32)
            for k, i in enumerate(part):
                x[k, : len(waves[i])] = waves[i]
            lengths = np.asarray([len(waves[i]) for i in part], np.int64)
            for k, row in zip(part, batch_functionals(x, lengths, set_name), strict=True):
                out[k] = row
    return out


def batch_functionals(wave: np.ndarray, lengths: np.ndarray, set_name: str) -> np.ndarray:
    """The functionals of a right-padded batch of 16 kHz mono clips → float32[B, D]."""
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    with torch.inference_mode():
        out = front_end(set_name)(x, torch.as_tensor(np.asarray(lengths, np.int64)))
    return out.numpy().astype(np.float32)


def clip_functionals(wave: np.ndarray, set_name: str) -> np.ndarray:
    """The functionals of one 16 kHz mono clip → float32[D], as the feature cache stores them."""
    return clips_functionals([np.asarray(wave, dtype=np.float32).reshape(-1)], set_name)[0]
