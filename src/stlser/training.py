"""Training one fold with Lightning: data batching, the LightningModule, callbacks, artefacts.

Importing this module imports Lightning (~5 s): callers import it lazily.

Determinism: every epoch reseeds torch/numpy from (seed, epoch) and the batch order is a
function of (seed, epoch) only (`stlser.batching`), so a run resumed from `last.ckpt` continues
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import sys
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

from stlser import augment, ddp, finetune, levers, logs, windows
from stlser.augment import freq_warp, spec_augment  # noqa: F401 (re-exported)
from stlser.batching import (  # noqa: F401 (re-exported)
    EpochBatches,
    ListDataset,
    loader,
    make_batches,
    stage_loader,
)
from stlser.checkpoint_io import AtomicCheckpointIO, load_checkpoint
from stlser.config import ExperimentConfig, TrainConfig, known_fields, model_from_dict
from stlser.metrics import METRICS
from stlser.model import (  # noqa: F401 (collate, predict, load_artefact: re-exported)
    STLSER,
    collate,
    count_parameters,
    load_artefact,
    predict,
    save_artefact,
)
from stlser.utils import write_csv, write_json

log = logging.getLogger(__name__)
logs.quiet_loggers()  # Lightning sets its loggers to INFO when imported: tips, "GPU available"
#: Lightning warnings that say nothing about this setup (in-memory data, no loader workers).
_QUIET = (".*does not have many workers.*", ".*LeafSpec.*", ".*smaller than the logging interval.*")


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
        in_channels: int = 1,
        n_speakers: int = 0,
        crop: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.labels = labels
        self.tc = TrainConfig(**known_fields(TrainConfig, train_cfg))
        mc = model_from_dict({**model_cfg, "kind": "network"})
        self.model = STLSER(mc, n_features, len(labels), in_channels)
        self.crop = crop  # frames; > 0: validation averages crop-length windows (stlser.windows)
        self.adversarial = float(mc.speaker_adversarial)
        self.speaker_head = levers.speaker_head(self.model, n_speakers) if n_speakers else None
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
            logits,
            target,
            weight=self.class_weight if self.use_weights else None,
            label_smoothing=self.tc.label_smoothing,
        )

    def on_train_epoch_start(self) -> None:
        self._train_correct = self._train_seen = 0
        # train.freeze_epochs: the CNN front end gets no gradient (so no Adam step, no weight
        # decay) in the first n epochs. The optimiser was built over every parameter, so the
        # front end is trained again from epoch n + 1; set per epoch, so --resume agrees.
        n = self.tc.freeze_epochs
        if n > 0:
            frozen = self.current_epoch < n
            finetune.set_front_end_trainable(self.model, not frozen)
            if self.current_epoch in (0, n):
                state = "frozen" if frozen else "unfrozen"
                log.info(f"epoch {self.current_epoch + 1}: CNN front end {state}")

    def on_train_end(self) -> None:
        if self.tc.freeze_epochs > 0:  # stopped while frozen: leave it trainable
            finetune.set_front_end_trainable(self.model, True)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # All randomness of a step (dropout, augmentation) is a function of (seed, epoch, batch):
        # a run resumed from a checkpoint replays exactly what the uninterrupted run did.
        s = (self.seed * 1_000_003 + self.current_epoch * 10_007 + batch_idx) % 2**63
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        self._gen = torch.Generator().manual_seed(s)

    def training_step(self, batch, _):
        feats, lengths, y, *speakers = batch
        channels = self.model.in_channels
        feats, lengths = augment.apply(
            feats, lengths, self._gen, self.tc, self.gain_scale, channels
        )
        lam, perm = 1.0, None
        if self.tc.mixup > 0:
            lam, perm = augment.mixup_draw(feats.shape[0], self.tc.mixup, self._gen)
            feats = lam * feats + (1 - lam) * feats[perm]
            lengths = torch.maximum(lengths, lengths[perm])
        z = self.model.embed(feats, lengths)["zL"]
        logits = self.model.classifier(z)
        loss = self._mixed(self._loss, logits, y, lam, perm)
        self._train_correct += int((logits.argmax(-1) == y).sum())
        self._train_seen += len(y)
        many = self.trainer.world_size > 1
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y),
            sync_dist=many,
        )  # fmt: skip
        share = self._share(len(y)) if many else 1.0
        if self.speaker_head is None or not speakers:
            return loss * share
        # speaker-adversarial head behind a gradient reversal (stlser.levers): the head
        # minimises speaker CE, the encoder receives −λ × its gradient
        s_logits = self.speaker_head(levers.grad_reverse(z, self.adversarial))
        s_loss = self._mixed(F.cross_entropy, s_logits, speakers[0], lam, perm)
        self.log(
            "train_speaker_loss", s_loss, on_step=False, on_epoch=True, batch_size=len(y),
            sync_dist=many,
        )  # fmt: skip
        return (loss + s_loss) * share

    def _share(self, n: int) -> float:
        """Data-parallel training: the weight of this process's mean loss, its share of the
        step's examples × the number of processes. DDP averages the gradients over the
        processes, so the step's gradient is that of the global batch's mean loss."""
        total = self.trainer.strategy.reduce(torch.tensor(float(n)), reduce_op="sum")
        return n * self.trainer.world_size / float(total)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # data-parallel: every process validates (and is checkpointed) with rank 0's BatchNorm
        # running statistics, as DDP hands them out before each training step
        if self.trainer.world_size > 1 and batch_idx == self.trainer.num_training_batches - 1:
            for buf in self.model.buffers():
                torch.distributed.broadcast(buf, 0)

    @staticmethod
    def _mixed(loss_fn, logits: Tensor, y: Tensor, lam: float, perm: Tensor | None) -> Tensor:
        """`loss_fn(logits, y)`, or its mixup mixture λ·loss(y) + (1 − λ)·loss(y[perm])."""
        if perm is None:
            return loss_fn(logits, y)
        return lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y[perm])

    def on_train_epoch_end(self) -> None:
        counts = torch.tensor([self._train_correct, self._train_seen], dtype=torch.float64)
        if self.trainer.world_size > 1:  # every process's examples
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        if counts[1] > 0:
            self.log("train_acc", float(counts[0] / counts[1]), prog_bar=False)

    def validation_step(self, batch, _):
        feats, lengths, y = batch
        if self.crop:  # whole utterances scored by window averaging; log-probs as the logits
            probs = windows.window_probs(self.model, feats, lengths, self.crop)["probs"]
            logits = torch.log(probs.clamp_min(1e-12))
        else:
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
        return torch.optim.Adam(self.parameters(), lr=self.tc.lr, weight_decay=self.tc.weight_decay)


#: ``callbacks(stage) -> [Callback, ...]``: extra Lightning callbacks for a training stage,
#: ``"early_stopping"`` (stage 1) or ``"refit"`` (train + val). Must pickle for `train.jobs` > 1.
StageCallbacks = Callable[[str], list[Callback]]


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
    #: speaker of every train / val example (the speaker-adversarial head's targets)
    train_speakers: list[str] = field(default_factory=list)
    val_speakers: list[str] = field(default_factory=list)


def _class_weights(y: list[int], n: int) -> list[float]:
    counts = np.bincount(np.asarray(y), minlength=n).astype(float)
    return (len(y) / (n * np.maximum(counts, 1))).tolist()


class EpochLine(Callback):
    """One log line per epoch (for log files, where a progress bar writes thousands of
    carriage-return updates)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        shown = " ".join(
            f"{k} {m[k]:.4f}" for k in ("train_loss", "val_loss", "val_acc", "val_ua") if k in m
        )
        log.info(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown}")


def module_for(
    cfg: ExperimentConfig,
    data: FoldData,
    y: list[int],
    init: finetune.Init | None = None,
    n_speakers: int = 0,
) -> SERModule:
    """A freshly seeded module for training on labels `y` (with a speaker head over
    `n_speakers` if > 0); with `init` (`model.init`) its weights start from that artefact's
    (`stlser.finetune.apply_init`)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    weights = _class_weights(y, len(data.labels)) if cfg.train.class_weights else None
    module = SERModule(
        asdict(cfg.model),
        data.n_features,
        data.labels,
        asdict(cfg.train),
        weights,
        data.gain_scale,
        cfg.seed,
        cfg.features.input_channels,
        n_speakers,
        windows.crop_frames(cfg.train.crop_seconds, cfg.features),
    )
    if init is not None:
        finetune.apply_init(module.model, init, data.labels)
    return module


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
    bar = tc.progress and sys.stderr.isatty()
    if bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, len(train_dl) // 4)))
    elif tc.progress:
        callbacks.append(EpochLine())
    trainer = L.Trainer(
        max_epochs=max_epochs,
        min_epochs=min(tc.min_epochs, max_epochs),
        accelerator=tc.accelerator,
        **ddp.trainer_options(tc),
        precision=tc.precision,
        deterministic=tc.deterministic,
        callbacks=callbacks,
        logger=[
            CSVLogger(out, name="logs", version=""),
            TensorBoardLogger(out, name="tb", version=""),
        ],
        enable_progress_bar=bar,
        enable_model_summary=False,
        log_every_n_steps=tc.log_every_n_steps,
        num_sanity_val_steps=0,
        limit_val_batches=None if val_dl is not None else 0,
        plugins=[AtomicCheckpointIO()],
    )
    sampler = train_dl.batch_sampler
    sampler.epoch_source = lambda: trainer.fit_loop.epoch_progress.current.processed
    sampler.rank, sampler.world = ddp.global_rank(), ddp.world_size(tc)
    last = out / "checkpoints" / "last.ckpt"
    resuming = resume and last.exists()
    history = out / "logs" / "metrics.csv"
    before = pd.read_csv(history) if resuming and history.exists() else None
    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", pattern)
        trainer.fit(
            module, train_dl, val_dl, ckpt_path=str(last) if resuming else None, weights_only=True
        )
    if before is not None and trainer.is_global_zero:  # resumed: the CSV logger starts a fresh
        # file, keep the earlier epochs
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
    callbacks: StageCallbacks | None = None,
) -> dict[str, Any]:
    """Train on data.train with early stopping on data.val, reload the best checkpoint, score
    data.test. Writes checkpoints, CSV/TensorBoard logs, `model.pt`, `fold.json` in out_dir.

    With `train.refit`, a second model (same seed) is then trained from scratch on train + val
    for as many epochs as the first one's best epoch, in `out_dir/refit/`, and that model is the
    one tested and saved — as the baseline refits its SVM on train + val.

    With `model.init`, both stages start from that artefact's weights (`stlser.finetune`);
    an incompatible artefact is a ValueError before anything is trained.

    With ``train.devices × train.num_nodes`` > 1 the model trains on that many processes
    (`stlser.ddp`): started here on one machine, or by torchrun. Only rank 0 writes; the other
    ranks return ``probs`` with no rows."""
    tc = cfg.train
    ddp.check_launch(tc)
    if ddp.needs_spawn(tc):
        return ddp.spawn(train_fold, (cfg, data, out_dir, resume, callbacks), tc)
    zero = ddp.global_rank() == 0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    t0 = time.time()
    labels = data.labels
    init = finetune.load_init(cfg, data.n_features) if cfg.model.init else None

    # Stage 1: early stopping on the validation speakers. A finished stage 1 is recorded in
    # stage1.json, so --resume never re-enters it once the refit stage has begun.
    stage1 = out / "stage1.json"
    train_dl, n_spk = stage_loader(cfg, *data.train, data.train_speakers)
    module = module_for(cfg, data, data.train[1], init, n_spk)
    n_params = count_parameters(module.model)
    if resume and stage1.exists():
        s1 = json.loads(stage1.read_text())
    else:
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
        if callbacks is not None:
            cbs += callbacks("early_stopping")
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
        if zero:
            write_json(stage1, s1)
    best_epoch, best_score = s1["best_epoch"], s1["best_score"]
    epochs_run = s1["epochs_run"]
    if tc.refit:
        both = (data.train[0] + data.val[0], data.train[1] + data.val[1])
        dl, n_spk = stage_loader(cfg, *both, data.train_speakers + data.val_speakers)
        module = module_for(cfg, data, both[1], init, n_spk)
        cbs = list(callbacks("refit")) if callbacks is not None else []
        _, last = _fit(cfg, module, dl, None, out / "refit", max(1, best_epoch), resume, cbs)
        state = load_checkpoint(last)
        epochs_run += max(1, best_epoch)
    else:
        state = load_checkpoint(s1["best_path"])
    if not zero:
        return {"probs": np.zeros((0, len(labels)), np.float32), "rank": ddp.global_rank()}
    module.load_state_dict(state["state_dict"])
    model = module.model.eval()
    res = predict(model, data.test[0], embeddings=True, crop=module.crop)
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
    seen = len(data.train[0]) * s1["epochs_run"] * tc.crops_per_utterance
    if tc.refit:
        seen += (
            (len(data.train[0]) + len(data.val[0])) * max(1, best_epoch) * tc.crops_per_utterance
        )
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
