"""Training-time levers of the network (`model.kind: network`), used by `stlser.training`:

* crop training (``train.crop_seconds``, ``train.crops_per_utterance``): :class:`TrainSet`
  serves each training utterance `copies` times per epoch, each time (when longer than the
  crop) a random crop of its normalised feature frames whose start is a function of
  (seed, epoch, index) only, so runs and resumed runs see the same crops. Scoring whole
  utterances by window averaging is `stlser.windows`.
* the speaker-adversarial head (``model.speaker_adversarial`` = λ): :func:`grad_reverse` is the
  identity forward and multiplies the gradient by −λ backward (Ganin & Lempitsky 2015); the
  head (:func:`speaker_head`, one linear layer on zL, over the stage's training speakers) sits
  behind it, so the head learns to tell speakers apart while the encoder gets −λ × that
  gradient: it is pushed towards embeddings that confuse the speakers. The head lives in the
  LightningModule, never in `STLSER`, so `model.pt` and the ONNX export do not hold it.

Imports torch and numpy only (never Lightning).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stlser.model import STLSER
from stlser.model import collate as collate_items


class GradReverse(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by −scale."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: Tensor, scale: float) -> Tensor:
    """The gradient reversal layer: x forward, −scale × gradient backward."""
    return GradReverse.apply(x, float(scale))


def speaker_head(model: STLSER, n_speakers: int) -> nn.Linear:
    """A linear speaker classifier on the network's utterance embedding zL."""
    return nn.Linear(model.classifier.in_features, n_speakers)


def speaker_index(speakers: list[str]) -> tuple[list[int], list[str]]:
    """Per-example speaker names → (class index per example, the sorted names)."""
    names = sorted(set(speakers))
    at = {s: i for i, s in enumerate(names)}
    return [at[s] for s in speakers], names


class TrainSet(torch.utils.data.Dataset):
    """One epoch of training examples: each utterance `copies` times (index i is utterance
    i mod N); with `crop` > 0 frames, an utterance longer than that is cut to a random crop
    drawn from (seed, epoch, i), shorter ones are used whole. Items are (x, y) or, with
    `speakers`, (x, y, speaker). Index it with (i, epoch) (`EpochBatches(keyed=True)`)."""

    def __init__(
        self,
        feats: list[np.ndarray],
        labels: list[int],
        crop: int = 0,
        copies: int = 1,
        seed: int = 0,
        speakers: list[int] | None = None,
    ) -> None:
        self.feats, self.labels, self.speakers = feats, labels, speakers
        self.crop, self.copies, self.seed = int(crop), max(1, int(copies)), int(seed)

    def __len__(self) -> int:
        return len(self.feats) * self.copies

    def lengths(self) -> list[int]:
        """Frames of every example (for length bucketing)."""
        one = [min(len(x), self.crop) if self.crop else len(x) for x in self.feats]
        return one * self.copies

    def start(self, i: int, epoch: int) -> int:
        """First frame of example i's crop in `epoch` (0 when it is used whole)."""
        n = len(self.feats[i % len(self.feats)])
        if not self.crop or n <= self.crop:
            return 0
        rng = np.random.default_rng([self.seed % 2**32, int(epoch), int(i)])
        return int(rng.integers(0, n - self.crop + 1))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, ...]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        u = i % len(self.feats)
        x = self.feats[u]
        if self.crop and len(x) > self.crop:
            s = self.start(i, epoch)
            x = x[s : s + self.crop]
        if self.speakers is None:
            return x, self.labels[u]
        return x, self.labels[u], self.speakers[u]


def collate(items: list[tuple[Any, ...]]) -> tuple[Tensor, ...]:
    """`stlser.model.collate` of (x, y[, speaker]) items → (feats, lengths, labels[, speakers])."""
    batch = collate_items([(it[0], it[1]) for it in items])
    if len(items[0]) < 3:
        return batch
    return (*batch, torch.tensor([it[2] for it in items], dtype=torch.long))
