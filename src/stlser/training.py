"""Training one fold with Lightning: data batching, the LightningModule, callbacks, artefacts.

Importing this module imports Lightning (~5 s): callers import it lazily.

Determinism: every epoch reseeds torch/numpy from (seed, epoch) and the batch order is a
function of (seed, epoch) only, so a run resumed from `last.ckpt` continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import Tensor

from stlser.checkpoint_io import AtomicCheckpointIO, load_checkpoint
from stlser.config import ExperimentConfig, ModelConfig
from stlser.evaluation import METRICS
from stlser.model import STLSER, count_parameters, load_artefact, save_artefact  # noqa: F401 (re-export)
from stlser.utils import write_csv, write_json

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


# ----------------------------------------------------------------------------------- data
def collate(items: list[tuple[np.ndarray, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad [T,F] arrays into [B,Tmax,F] with lengths and labels."""
    lengths = torch.tensor([x.shape[0] for x, _ in items], dtype=torch.long)
    feats = torch.zeros(len(items), int(lengths.max()), items[0][0].shape[1])
    for i, (x, _) in enumerate(items):
        feats[i, : x.shape[0]] = torch.from_numpy(x)
    labels = torch.tensor([y for _, y in items], dtype=torch.long)
    return feats, lengths, labels


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

    def __init__(self, lengths: list[int], batch_size: int, seed: int, shuffle: bool, bucket: bool):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.shuffle, self.bucket, self.epoch = shuffle, bucket, 0
        #: Reads the epoch when an iterator is made. Lightning creates (and prefetches from) the
        #: first iterator before it calls set_epoch, so on resume set_epoch alone comes too late.
        self.epoch_source: Callable[[], int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.epoch_source is not None:
            self.epoch = int(self.epoch_source())
        return iter(
            make_batches(
                self.lengths,
                self.batch_size,
                self.seed * 1000 + self.epoch,
                self.shuffle,
                self.bucket,
            )
        )

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
):
    sampler = EpochBatches([len(x) for x in feats], batch_size, seed, shuffle, bucket)
    return torch.utils.data.DataLoader(
        ListDataset(feats, labels), batch_sampler=sampler, collate_fn=collate
    )


# --------------------------------------------------------------------------- augmentation
def spec_augment(
    x: Tensor,
    lengths: Tensor,
    gen: torch.Generator,
    n_freq: int = 2,
    f_max: int = 6,
    n_time: int = 2,
    t_frac: float = 0.1,
) -> Tensor:
    """SpecAugment (Park et al. 2019) frequency and time masks, set to 0 (the normalised mean)."""
    x = x.clone()
    b, t, f = x.shape
    for i in range(b):
        for _ in range(n_freq):
            w = int(torch.randint(0, f_max + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, max(1, f - w), (1,), generator=gen))
            x[i, :, f0 : f0 + w] = 0
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


# ------------------------------------------------------------------------------- module
class SERModule(L.LightningModule):
    """The network plus its loss, optimiser and validation metrics."""

    def __init__(
        self,
        model_cfg: dict,
        n_features: int,
        labels: list[str],
        train_cfg: dict,
        class_weights: list[float] | None = None,
        gain_scale: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.labels = labels
        self.tc = train_cfg
        self.model = STLSER(ModelConfig(**model_cfg), n_features, len(labels))
        w = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer(
            "class_weight", w if w is not None else torch.ones(len(labels)), persistent=False
        )
        self.use_weights = w is not None
        self.gain_scale = gain_scale
        self.seed = seed
        self._val: list[tuple[Tensor, Tensor, Tensor]] = []
        self._train_correct = self._train_seen = 0

    def forward(self, feats: Tensor, lengths: Tensor) -> Tensor:
        return self.model(feats, lengths)

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(
            logits, target, weight=self.class_weight if self.use_weights else None
        )

    def on_train_epoch_start(self) -> None:
        self._train_correct = self._train_seen = 0

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # All randomness of a step (dropout, augmentation) is a function of (seed, epoch, batch):
        # a run resumed from a checkpoint replays exactly what the uninterrupted run did.
        s = (self.seed * 1_000_003 + self.current_epoch * 10_007 + batch_idx) % 2**63
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        self._gen = torch.Generator().manual_seed(s)

    def training_step(self, batch, _):
        feats, lengths, y = batch
        if self.tc["gain_db"]:
            g = (torch.rand(feats.shape[0], 1, 1, generator=self._gen) * 2 - 1) * self.tc["gain_db"]
            feats = feats + g * self.gain_scale * (feats != 0)
        if self.tc.get("time_stretch"):
            r = 1.0 + (float(torch.rand(1, generator=self._gen)) * 2 - 1) * self.tc["time_stretch"]
            t_old = feats.shape[1]
            t_new = max(1, round(t_old * r))
            feats = F.interpolate(
                feats.transpose(1, 2), size=t_new, mode="linear", align_corners=False
            )
            feats = feats.transpose(1, 2)
            lengths = (lengths.float() * t_new / t_old).round().long().clamp(1, t_new)
        if self.tc.get("freq_warp"):
            a = (
                1.0
                + (torch.rand(feats.shape[0], generator=self._gen) * 2 - 1) * self.tc["freq_warp"]
            )
            feats = freq_warp(feats, a)
        if self.tc["specaugment"]:
            feats = spec_augment(feats, lengths, self._gen)
        if self.tc["mixup"] > 0:
            lam = float(
                np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=self._gen))).beta(
                    self.tc["mixup"], self.tc["mixup"]
                )
            )
            perm = torch.randperm(feats.shape[0], generator=self._gen)
            logits = self(
                lam * feats + (1 - lam) * feats[perm], torch.maximum(lengths, lengths[perm])
            )
            loss = lam * self._loss(logits, y) + (1 - lam) * self._loss(logits, y[perm])
        else:
            logits = self(feats, lengths)
            loss = self._loss(logits, y)
        self._train_correct += int((logits.argmax(-1) == y).sum())
        self._train_seen += len(y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def on_train_epoch_end(self) -> None:
        if self._train_seen:
            self.log("train_acc", self._train_correct / self._train_seen, prog_bar=False)

    def validation_step(self, batch, _):
        feats, lengths, y = batch
        logits = self(feats, lengths)
        self._val.append((logits.detach(), y, F.cross_entropy(logits, y, reduction="sum").detach()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        logits = torch.cat([v[0] for v in self._val])
        y = torch.cat([v[1] for v in self._val]).numpy()
        loss = float(sum(v[2] for v in self._val)) / len(y)
        pred = logits.argmax(-1).numpy()
        idx = list(range(len(self.labels)))
        self.log("val_loss", loss, prog_bar=False)
        self.log("val_acc", float(METRICS["wa"](y, pred, idx)), prog_bar=True)
        self.log("val_ua", float(METRICS["ua"](y, pred, idx)), prog_bar=True)
        self._val.clear()

    def configure_optimizers(self):
        return torch.optim.Adam(
            self.parameters(), lr=self.tc["lr"], weight_decay=self.tc["weight_decay"]
        )


class SimulatedCrash(RuntimeError):
    """Raised by the test hook that kills a run mid-way."""


class _FailAt(Callback):
    """Test hook: raise after epoch `n` (simulates a killed run)."""

    def __init__(self, n: int):
        self.n = n

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.n:
            raise SimulatedCrash(f"simulated crash after epoch {self.n}")


# ----------------------------------------------------------------------------- predict
@torch.no_grad()
def predict(
    model: STLSER, feats: list[np.ndarray], batch_size: int = 32, embeddings: bool = False
) -> dict[str, np.ndarray]:
    """Probabilities (and optionally z0/zL) for a list of [T,F] arrays, in input order."""
    model.eval()
    order = np.argsort([len(x) for x in feats], kind="stable")
    probs = np.zeros((len(feats), model.classifier.out_features), np.float32)
    d = model.classifier.in_features
    z0, zl = np.zeros((len(feats), d), np.float32), np.zeros((len(feats), d), np.float32)
    for i in range(0, len(order), batch_size):
        ids = order[i : i + batch_size]
        x, lengths, _ = collate([(feats[j], 0) for j in ids])
        e = model.embed(x, lengths)
        probs[ids] = torch.softmax(model.classifier(e["zL"]), -1).numpy()
        z0[ids], zl[ids] = e["z0"].numpy(), e["zL"].numpy()
    out = {"probs": probs}
    if embeddings:
        out.update(z0=z0, zL=zl)
    return out


# --------------------------------------------------------------------------------- fold
@dataclass
class FoldData:
    """Normalised features of one fold, by part, with integer labels."""

    train: tuple[list[np.ndarray], list[int]]
    val: tuple[list[np.ndarray], list[int]]
    test: tuple[list[np.ndarray], list[int]]
    test_ids: list[str]
    labels: list[str]
    n_features: int
    normalizer: dict
    gain_scale: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _class_weights(y: list[int], n: int) -> list[float]:
    counts = np.bincount(np.asarray(y), minlength=n).astype(float)
    return (len(y) / (n * np.maximum(counts, 1))).tolist()


def _fit(
    cfg: ExperimentConfig,
    module: SERModule,
    train_dl,
    val_dl,
    out: Path,
    max_epochs: int,
    resume: bool,
    extra_callbacks: list[Callback],
) -> tuple[L.Trainer, Path]:
    """One Lightning fit with per-epoch `last.ckpt` (for --resume) and CSV/TensorBoard logs in
    `out`; without `val_dl` there is no validation loop (the refit stage)."""
    tc = cfg.train
    # Lightning's save_last only writes when the best improves; resuming needs every epoch.
    latest = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False
    )
    callbacks: list[Callback] = [*extra_callbacks, latest]
    if tc.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, len(train_dl) // 4)))
    trainer = L.Trainer(
        max_epochs=max_epochs,
        min_epochs=min(tc.min_epochs, max_epochs),
        accelerator=tc.accelerator,
        devices=tc.devices,
        precision=tc.precision,
        deterministic=tc.deterministic,
        callbacks=callbacks,
        logger=[
            CSVLogger(out, name="logs", version=""),
            TensorBoardLogger(out, name="tb", version=""),
        ],
        enable_progress_bar=tc.progress,
        enable_model_summary=False,
        log_every_n_steps=tc.log_every_n_steps,
        num_sanity_val_steps=0,
        limit_val_batches=None if val_dl is not None else 0,
        plugins=[AtomicCheckpointIO()],
    )
    train_dl.batch_sampler.epoch_source = lambda: trainer.fit_loop.epoch_progress.current.processed
    last = out / "checkpoints" / "last.ckpt"
    resuming = resume and last.exists()
    history = out / "logs" / "metrics.csv"
    before = pd.read_csv(history) if resuming and history.exists() else None
    trainer.fit(
        module, train_dl, val_dl, ckpt_path=str(last) if resuming else None, weights_only=True
    )
    if before is not None:  # the CSV logger starts a fresh file on resume: keep the earlier epochs
        after = pd.read_csv(history) if history.exists() else before.iloc[:0]
        first = after["epoch"].min() if len(after) else np.inf
        merged = pd.concat([before[before["epoch"] < first], after], ignore_index=True)
        write_csv(history, merged)
    if trainer.interrupted:
        raise KeyboardInterrupt("training interrupted; run again with --resume to continue")
    return trainer, last


def train_fold(
    cfg: ExperimentConfig,
    data: FoldData,
    out_dir: str | Path,
    resume: bool = False,
    fail_at_epoch: int | None = None,
) -> dict[str, Any]:
    """Train on data.train with early stopping on data.val, reload the best checkpoint, score
    data.test. Writes checkpoints, CSV/TensorBoard logs, `model.pt`, `fold.json` in out_dir.

    With `train.refit`, a second model (same seed) is then trained from scratch on train + val
    for as many epochs as the first one's best epoch, in `out_dir/refit/`, and that model is the
    one tested and saved — as the baseline refits its SVM on train + val."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    t0 = time.time()
    labels = data.labels
    n_lab = len(labels)

    def module_for(y: list[int]) -> SERModule:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        weights = _class_weights(y, n_lab) if tc.class_weights else None
        return SERModule(
            asdict(cfg.model),
            data.n_features,
            labels,
            asdict(tc),
            weights,
            data.gain_scale,
            cfg.seed,
        )

    # Stage 1: early stopping on the validation speakers. A finished stage 1 is recorded in
    # stage1.json, so --resume never re-enters it once the refit stage has begun.
    stage1 = out / "stage1.json"
    module = module_for(data.train[1])
    n_params = count_parameters(module.model)
    if resume and stage1.exists():
        s1 = json.loads(stage1.read_text())
    else:
        train_dl = loader(*data.train, tc.batch_size, cfg.seed, shuffle=True, bucket=tc.bucket)
        val_dl = loader(*data.val, tc.batch_size, cfg.seed, shuffle=False, bucket=False)
        mode = "min" if tc.monitor == "val_loss" else "max"
        ckpt = ModelCheckpoint(
            dirpath=out / "checkpoints",
            filename="best",
            monitor=tc.monitor,
            mode=mode,
            save_top_k=1,
            enable_version_counter=False,
        )
        cbs: list[Callback] = [
            ckpt,
            EarlyStopping(monitor=tc.monitor, mode=mode, patience=tc.patience),
        ]
        if fail_at_epoch and not tc.refit:
            cbs.append(_FailAt(fail_at_epoch))
        trainer, last = _fit(cfg, module, train_dl, val_dl, out, tc.max_epochs, resume, cbs)
        best_path = ckpt.best_model_path or str(last)
        state = load_checkpoint(best_path)
        s1 = {
            "best_path": str(best_path),
            "best_epoch": int(state.get("epoch", -1)) + 1,  # 1-based epoch whose weights were kept
            "best_score": float(ckpt.best_model_score)
            if ckpt.best_model_score is not None
            else float("nan"),
            "epochs_run": int(trainer.current_epoch),
        }
        write_json(stage1, s1)
    best_epoch, best_score = s1["best_epoch"], s1["best_score"]
    epochs_run = s1["epochs_run"]
    if tc.refit:
        both = (data.train[0] + data.val[0], data.train[1] + data.val[1])
        module = module_for(both[1])
        dl = loader(*both, tc.batch_size, cfg.seed, shuffle=True, bucket=tc.bucket)
        cbs = [_FailAt(fail_at_epoch)] if fail_at_epoch else []
        _, last = _fit(cfg, module, dl, None, out / "refit", max(1, best_epoch), resume, cbs)
        state = load_checkpoint(last)
        epochs_run += max(1, best_epoch)
    else:
        state = load_checkpoint(s1["best_path"])
    module.load_state_dict(state["state_dict"])
    model = module.model.eval()
    res = predict(model, data.test[0], embeddings=True)
    np.savez(
        out / "embeddings.npz",
        utt_id=np.asarray(data.test_ids),
        label=np.asarray(data.test[1]),
        z0=res["z0"],
        zL=res["zL"],
    )
    meta = {"seed": cfg.seed, "best_epoch": best_epoch, tc.monitor: best_score, **data.extra}
    if tc.refit:
        meta["refit_on"] = "train+val"
    save_artefact(out / "model.pt", model, cfg, data.n_features, labels, data.normalizer, meta)
    seen = len(data.train[0]) * s1["epochs_run"]
    if tc.refit:
        seen += (len(data.train[0]) + len(data.val[0])) * max(1, best_epoch)
    result = {
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "best_" + tc.monitor: best_score,
        "refit": bool(tc.refit),
        "n_params": n_params,
        "seconds": round(time.time() - t0, 2),
        "train_utterances": len(data.train[0]) + (len(data.val[0]) if tc.refit else 0),
        **data.extra,
    }
    result["utt_per_second"] = round(seen / max(result["seconds"], 1e-9), 1)
    write_json(out / "fold.json", result)
    result["probs"] = res["probs"]
    return result
