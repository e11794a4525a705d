"""One network trained on several processes at once: data-parallel training with Lightning DDP.

``train.devices`` processes per machine (GPUs, one process each, or CPU processes) times
``train.num_nodes`` machines train one model together. Every process holds a copy of the model,
takes its share of every batch, and the gradients are averaged before each optimiser step
(gloo on CPU, nccl on GPU, as Lightning picks for the device).

How the processes start:

* **One machine** (``num_nodes: 1``, strategy ``auto``, ``ddp`` or ``ddp_spawn``): stlser
  starts them itself (:func:`spawn`, the ``spawn`` start method) for every model it trains,
  rendezvous on 127.0.0.1 at a free port, and takes rank 0's result. The rest of the command
  (manifest, features, report) runs once, in the ``stlser`` process.
* **Several machines** (strategy ``auto`` or ``ddp``): ``torchrun`` starts ``devices``
  processes on each machine, every one running the same ``stlser`` command with ``RANK``,
  ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set (docs/scaling.md). Each
  rank reads the manifest and computes the same folds and units in the same order; only rank 0
  writes the run folder.

Batches (`stlser.batching.EpochBatches`): ``train.batch_size`` stays the global batch. Every
process draws the same batches (seeded by seed and epoch, bucketed by length as on one process)
and keeps every ``world``-th example of each (:func:`shard`), so a step sees the same examples
as on one process; Lightning's DistributedSampler is not used. The loss of each process is
weighted by its share of the step's examples, so the averaged gradient is the global batch's
mean even when a batch does not split evenly. What differs from one process: BatchNorm
statistics are those of each process's part of the batch (CPU has no synchronised BatchNorm;
on GPU ``sync_batchnorm`` is on), dropout and augmentation draw per process, and a global batch
smaller than the number of processes has its last example repeated on the processes left short.

Outputs: only rank 0 writes (checkpoints, logs, ``model.pt``, ``fold.json``, the report); the
other ranks train and return. Validation runs whole on every process with rank 0's BatchNorm
statistics averaged over the processes, so early stopping decides the same everywhere.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "ddp", "ddp_spawn")
#: Set for each process by torchrun, and by :func:`spawn` for the processes it starts.
LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def world_size(tc: Any) -> int:
    """Processes that train one model: ``train.devices × train.num_nodes``."""
    return int(tc.devices) * int(tc.num_nodes)


def launched() -> bool:
    """True in a process started as one rank of a data-parallel group (torchrun or :func:`spawn`)."""
    return all(k in os.environ for k in LAUNCH_ENV)


def global_rank() -> int:
    """This process's rank in its data-parallel group (0 when not in one)."""
    return int(os.environ["RANK"]) if launched() else 0


def config_problem(tc: Any) -> str | None:
    """What is wrong with the train section's parallel keys taken together (None: nothing)."""
    if tc.strategy == "ddp_spawn" and tc.num_nodes > 1:
        return (
            "config train.strategy=ddp_spawn starts its processes on this machine: "
            f"train.num_nodes={tc.num_nodes} needs strategy ddp under torchrun"
        )
    if world_size(tc) > 1 and tc.jobs > 1:
        return (
            f"config train.jobs={tc.jobs}: with train.devices × train.num_nodes > 1 each model "
            "already trains on several processes; set train.jobs=1"
        )
    return None


def launch_problem(tc: Any) -> str | None:
    """What stops the configured processes from starting here (None: nothing)."""
    n = world_size(tc)
    if launched():
        if tc.strategy == "ddp_spawn":
            return (
                "config train.strategy=ddp_spawn starts its own processes, but this one was "
                "started by a launcher (torchrun): use strategy ddp"
            )
        if int(os.environ["WORLD_SIZE"]) != n:
            return (
                f"config train.devices × train.num_nodes = {n}, but the launcher started "
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} processes"
            )
    elif tc.num_nodes > 1:
        return (
            f"config train.num_nodes={tc.num_nodes}: several machines are started by torchrun "
            "(one command per machine, docs/scaling.md); this process was not"
        )
    return None


def check_launch(tc: Any) -> None:
    """ValueError naming the key when the data-parallel setting cannot run here."""
    problem = launch_problem(tc)
    if problem:
        raise ValueError(problem)


def needs_spawn(tc: Any) -> bool:
    """True when stlser must start the processes of one model itself (one machine)."""
    return world_size(tc) > 1 and not launched()


def trainer_options(tc: Any) -> dict[str, Any]:
    """The Lightning Trainer's arguments for the configured parallelism."""
    if world_size(tc) == 1:
        return {"devices": 1, "num_nodes": 1, "strategy": "auto"}
    from lightning.pytorch.strategies import DDPStrategy

    gpu = tc.accelerator in ("gpu", "cuda")
    return {
        "devices": tc.devices,
        "num_nodes": tc.num_nodes,
        "strategy": DDPStrategy(),  # processes exist already (LOCAL_RANK set): none launched
        "use_distributed_sampler": False,  # EpochBatches shards the global batches itself
        "sync_batchnorm": gpu,  # torch's SyncBatchNorm runs on GPUs only
    }


def shard(batch: list, rank: int, world: int) -> list:
    """This rank's part of one global batch: every `world`-th example from `rank` (a batch
    smaller than `world` repeats its last example on the ranks left short)."""
    if world <= 1:
        return batch
    part = batch[rank::world]
    return part if part else batch[-1:]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(
    rank: int,
    fn: Callable[..., Any],
    args: tuple,
    world: int,
    port: int,
    threads: int,
    result: str,
    show_log: bool,
    parent: int,
) -> None:
    """The body of one process started by :func:`spawn`."""
    import torch

    from stlser import logs
    from stlser.utils import die_with_parent

    die_with_parent(parent)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world)}
    env |= {"RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world)}
    os.environ.update(env | {"NODE_RANK": "0", "GROUP_RANK": "0"})
    if show_log and rank == 0:
        logs.setup(logs.verbose())
    else:
        logs.quiet_third_party()
        logging.getLogger("stlser").setLevel(logging.WARNING)
    torch.set_num_threads(threads)
    out = fn(*args)
    if rank == 0:
        tmp = Path(result + ".tmp")
        tmp.write_bytes(pickle.dumps(out))
        tmp.replace(result)


def spawn(fn: Callable[..., Any], args: tuple, tc: Any) -> Any:
    """`fn(*args)` in ``train.devices`` new processes on this machine, ranks 0… of one process
    group on 127.0.0.1; returns rank 0's result. Each process gets ``train.num_threads`` torch
    threads, else an equal share of the cores. A process that fails stops the others
    (RuntimeError naming its rank); an interrupt ends them all."""
    import torch.multiprocessing as mp

    from stlser.utils import usable_cores

    world = world_size(tc)
    threads = tc.num_threads or max(1, usable_cores() // world)
    folder = tempfile.mkdtemp(prefix="stlser-ddp-")  # private (0700): rank 0's result
    result = os.path.join(folder, "result.pkl")
    show = any(getattr(h, "_stlser_cli", False) for h in logging.getLogger("stlser").handlers)
    log.info(f"training one model on {world} processes ({threads} torch thread(s) each)")
    args_all = (fn, args, world, _free_port(), threads, result, show, os.getpid())
    ctx = mp.start_processes(_rank_main, args_all, nprocs=world, join=False, start_method="spawn")
    try:
        while not ctx.join():
            pass
        return pickle.loads(Path(result).read_bytes())
    except mp.ProcessRaisedException as e:
        raise RuntimeError(f"data-parallel training failed in process {e.error_index}: {e}") from e
    except mp.ProcessExitedException as e:
        raise RuntimeError(
            f"data-parallel training: process {e.error_index} died (exit code {e.exit_code})"
        ) from e
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
            p.join()
        shutil.rmtree(folder, ignore_errors=True)
