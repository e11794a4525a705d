"""Data-parallel training (`stlser.ddp`) in real processes: one network trained on 2 CPU
processes (gloo) against 1 process, same global batch and seed; the per-step training loss
curves agree within :data:`TOLERANCE`, each process saw its half of every batch, only rank 0
wrote, and the model loads with ``stlser predict``. Two torchrun "machines" on loopback give
the predictions of the 2 processes stlser started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lightning.pytorch.callbacks import Callback

from stlser import batching, config, ddp

#: Largest relative difference of a step's training loss, 2 processes vs 1. Not 0: on CPU each
#: process normalises its BatchNorm over its half of the batch (torch's SyncBatchNorm runs on
#: GPUs only) and pads it to its own longest utterance. Measured: at most 2.9 % over the 6
#: steps (1.3 % at the first step, before any update).
TOLERANCE = 0.05

TINY = [
    "data.corpus=synth",
    "model.channels=[4, 8]",
    "model.pool_time=[2, 2]",
    "model.pool_freq=[2, 2]",
    "model.d_lstm=8",
    "model.stl_layers=1",
    "model.stl_ff=16",
    "model.stl_heads=2",
    "model.cnn_dropout=0",  # dropout draws per process: off, to compare the curves
    "model.stl_dropout=0",
    "train.max_epochs=2",
    "train.patience=10",
    "train.batch_size=8",
    "train.progress=false",
    "train.num_threads=1",
    "split.protocol=group-kfold",
    "split.k=2",
    "split.folds=[0]",
]


class StepRecord(Callback):
    """Every step's loss over all processes (the global batch's mean: each process returns its
    loss weighted by its share) and the most examples one process held; rank 0 writes them."""

    def __init__(self, path: Path):
        self.path, self.losses, self.sizes = path, [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        import torch

        loss = outputs["loss"].detach().clone()
        n = torch.tensor(float(len(batch[2])))
        if trainer.world_size > 1:
            loss = trainer.strategy.reduce(loss, reduce_op="mean")
            n = trainer.strategy.reduce(n, reduce_op="max")
        self.losses.append(float(loss))
        self.sizes.append(int(n))

    def on_train_end(self, trainer, module) -> None:
        if trainer.is_global_zero:
            self.path.write_text(json.dumps({"loss": self.losses, "size": self.sizes}))


class Steps:
    """Stage callbacks (`stlser.training.StageCallbacks`): a StepRecord per stage."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, stage: str) -> list[Callback]:
        return [StepRecord(self.folder / f"{stage}.json")]


def test_shard_splits_every_batch_between_the_processes():
    batch = list(range(7))
    parts = [ddp.shard(batch, r, 2) for r in range(2)]
    assert parts == [[0, 2, 4, 6], [1, 3, 5]]
    assert [ddp.shard([9], r, 3) for r in range(3)] == [[9], [9], [9]]
    sampler = batching.EpochBatches([5, 9, 7, 3, 8, 6, 4], 4, seed=0, shuffle=True, bucket=True)
    whole = list(sampler)
    sampler.world = 2
    halves = []
    for r in range(2):
        sampler.rank = r
        halves.append(list(sampler))
    assert [sorted(a + b) for a, b in zip(*halves, strict=True)] == [sorted(b) for b in whole]
    assert len(sampler) == len(whole)  # steps per epoch: the global batches


def test_parallel_keys_are_checked_with_the_launch(monkeypatch):
    for key in ddp.LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    tc = config.load(None, ["train.devices=2"]).train
    assert ddp.needs_spawn(tc) and ddp.launch_problem(tc) is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert "WORLD_SIZE=4" in ddp.launch_problem(tc)
    assert not ddp.needs_spawn(tc) and ddp.global_rank() == 1


@pytest.mark.slow  # 1-2 min on a busy 2-core machine: new processes import torch and Lightning
def test_two_processes_follow_the_one_process_loss_curve(synth_corpus, tmp_path):
    from stlser import driver
    from stlser.cli import main

    runs, curves = {}, {}
    for n in (1, 2):
        steps = tmp_path / f"steps{n}"
        steps.mkdir()
        cfg = config.load(
            None,
            [f"data.root={synth_corpus}", f"cache_dir={tmp_path / 'cache'}", *TINY]
            + [f"train.devices={n}"],
        )
        runs[n] = driver.crossval(cfg, tmp_path / f"run{n}", callbacks=Steps(steps))
        curves[n] = json.loads((steps / "early_stopping.json").read_text())
    one, two = (np.asarray(curves[n]["loss"]) for n in (1, 2))
    assert len(one) == len(two) >= 4
    rel = np.abs(two - one) / one
    assert rel.max() < TOLERANCE, (one, two)
    # each process held at most half of every global batch (8): the batch was split, not copied
    assert max(curves[1]["size"]) == 8 and max(curves[2]["size"]) == 4
    # rank 0 alone wrote: one model, one checkpoint pair, one metrics log
    fold = runs[2] / "fold_00"
    assert sorted(p.name for p in (fold / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(list(runs[2].rglob("model.pt"))) == 1 and (fold / "logs" / "metrics.csv").exists()
    wav = sorted(Path(synth_corpus).rglob("*.wav"))[0]
    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(runs[2]), str(wav), "-o", str(out)]) == 0
    assert out.read_text().count("\n") == 2  # header + the clip
    torchrun = _torchrun_two_machines(synth_corpus, tmp_path)
    got, want = (pd.read_csv(r / "predictions.csv") for r in (torchrun, runs[2]))
    # same answers; probabilities within float rounding (gloo's reduction order may differ
    # between the two launches: measured up to 1e-6 under load)
    pd.testing.assert_frame_equal(got, want, check_exact=False, atol=1e-5, rtol=0)  # pred exact


def _torchrun_two_machines(corpus: Path, tmp_path: Path) -> Path:
    """`stlser crossval` under torchrun as two machines of one process each, on 127.0.0.1."""
    out = tmp_path / "torchrun"
    sets = [f"data.root={corpus}", f"cache_dir={tmp_path / 'cache'}", *TINY]
    sets += ["train.devices=1", "train.num_nodes=2", "train.strategy=ddp"]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    port = str(ddp._free_port())
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
                "-m",
                "stlser.cli",
                "crossval",
                "-o",
                str(out),
                *[x for o in sets for x in ("--set", o)],
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    return out
