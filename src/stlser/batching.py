"""Batching for training (Lightning-free; `stlser.training` re-exports these names).

Determinism: the batch order is a function of (seed, epoch) only (:class:`EpochBatches`), and so
are the crops of `levers.TrainSet`, so a run resumed from `last.ckpt` sees the same batches as
the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from stlser import ddp, levers, windows
from stlser.config import ExperimentConfig
from stlser.model import collate

log = logging.getLogger(__name__)


def make_batches(
    lengths: list[int], batch_size: int, seed: int, shuffle: bool, bucket: bool
) -> list[list[int]]:
    """Batch indices. With `bucket`, utterances of similar length share a batch (less padding):
    shuffle, cut into pools of 20 batches, sort each pool by length, then shuffle the batches."""
    idx = np.arange(len(lengths))
    rng = np.random.default_rng(seed)
    if shuffle:
        rng.shuffle(idx)
    if bucket:
        pool = batch_size * 20
        ln = np.asarray(lengths)
        idx = np.concatenate(
            [
                c[np.argsort(ln[c], kind="stable")]
                for c in np.array_split(idx, max(1, math.ceil(len(idx) / pool)))
            ]
        )
    batches = [idx[i : i + batch_size].tolist() for i in range(0, len(idx), batch_size)]
    if shuffle and bucket:
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
    return batches


class EpochBatches(torch.utils.data.Sampler):
    """A batch sampler whose order depends only on (seed, epoch): resumable and reproducible."""

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        seed: int,
        shuffle: bool,
        bucket: bool,
        keyed: bool = False,
    ):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.shuffle, self.bucket, self.epoch = shuffle, bucket, 0
        self.keyed = keyed  # yield (index, epoch) pairs (for `levers.TrainSet`'s crops)
        #: Reads the epoch when an iterator is made. Lightning creates (and prefetches from) the
        #: first iterator before it calls set_epoch, so on resume set_epoch alone comes too late.
        self.epoch_source: Callable[[], int] | None = None
        #: data-parallel training (`stlser.ddp`): this process keeps its share of every batch
        self.rank, self.world = 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.epoch_source is not None:
            self.epoch = int(self.epoch_source())
        batches = make_batches(
            self.lengths, self.batch_size, self.seed * 1000 + self.epoch, self.shuffle, self.bucket
        )
        if self.world > 1:
            batches = [ddp.shard(b, self.rank, self.world) for b in batches]
        if self.keyed:
            batches = [[(i, self.epoch) for i in b] for b in batches]
        return iter(batches)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, feats: list[np.ndarray], labels: list[int]):
        self.feats, self.labels = feats, labels

    def __len__(self) -> int:
        return len(self.feats)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.feats[i], self.labels[i]


def loader(
    feats: list[np.ndarray],
    labels: list[int],
    batch_size: int,
    seed: int,
    shuffle: bool,
    bucket: bool,
    crop: int = 0,
    copies: int = 1,
    speakers: list[int] | None = None,
):
    """Batches of (feats, lengths, labels); with crops, copies or speakers, of
    `levers.TrainSet` examples (+ speakers) instead of whole utterances."""
    if crop or copies > 1 or speakers is not None:
        ds = levers.TrainSet(feats, labels, crop, copies, seed, speakers)
        keyed = EpochBatches(ds.lengths(), batch_size, seed, shuffle, bucket, keyed=True)
        return torch.utils.data.DataLoader(ds, batch_sampler=keyed, collate_fn=levers.collate)
    sampler = EpochBatches([len(x) for x in feats], batch_size, seed, shuffle, bucket)
    return torch.utils.data.DataLoader(
        ListDataset(feats, labels), batch_sampler=sampler, collate_fn=collate
    )


def stage_loader(cfg: ExperimentConfig, feats, labels, speakers: list[str]) -> tuple[Any, int]:
    """The training loader of a stage (crops, copies, speaker targets as configured) and the
    number of speakers its adversarial head tells apart (0: no head)."""
    tc, ids = cfg.train, None
    if cfg.model.speaker_adversarial > 0:
        ids, names = levers.speaker_index(speakers) if speakers else (None, [])
        if len(names) < 2:
            log.warning("model.speaker_adversarial: fewer than 2 training speakers, head off")
            ids = None
    crop = windows.crop_frames(tc.crop_seconds, cfg.features)
    copies = tc.crops_per_utterance
    dl = loader(feats, labels, tc.batch_size, cfg.seed, True, tc.bucket, crop, copies, ids)
    return dl, (max(ids) + 1 if ids else 0)
