"""Where the driver's units of work run: the ``local`` engine (this process or a spawned local
pool, `stlser.runs.run_units`) or the ``ray`` engine (one Ray task per unit, on an embedded
local cluster or one joined with ``--address`` / ``STLSER_RAY_ADDRESS``).

Both engines give the same results: a unit's result depends only on the unit, the shared state
and its torch thread count, never on where it ran. With Ray, the shared state goes into the
object store once; each task sets `runs.WORKER` from it, runs `work(unit)` and returns the
result, and the driver calls `on_done` as results arrive, so finished units are on disk at once
(``--resume`` keeps working). A task whose worker process dies is retried (`MAX_RETRIES`).

Ray is an optional extra (``pip install 'stlser[cluster]'``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from stlser import runs

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
ADDRESS_ENV = "STLSER_RAY_ADDRESS"
MAX_RETRIES = 3  # attempts after a lost worker (node or process death), per task
NEEDS_EXTRA = "--engine ray needs the optional extra: pip install 'stlser[cluster]'"


class EngineError(ValueError):
    """An engine that cannot run here (unknown name, Ray missing, cluster unreachable)."""


def require(engine: str) -> None:
    """Refuse an unknown engine, or ``ray`` without Ray importable (EngineError)."""
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "ray":
        # found, not imported: Ray reads its authentication settings once, when imported
        try:
            found = importlib.util.find_spec("ray") is not None
        except (ImportError, ValueError):  # ValueError: sys.modules["ray"] is None
            found = False
        if not found:
            raise EngineError(NEEDS_EXTRA)


def _verbose() -> bool:
    return os.environ.get("STLSER_VERBOSE", "") not in ("", "0")


def init_ray(address: str | None = None) -> bool:
    """Connect to Ray; True if this call started the cluster (the caller shuts it down).

    `address` (else ``STLSER_RAY_ADDRESS``) joins an existing cluster. Without one, Ray starts
    its own embedded cluster (``address="local"``: never whatever cluster a stale
    ``ray_current_cluster`` file names) sized to the usable cores, bound to 127.0.0.1, no
    dashboard, with Ray's token authentication on (``RAY_AUTH_MODE=token`` and a random
    ``RAY_AUTH_TOKEN`` for this process and its children, unless ``RAY_AUTH_MODE`` is set or
    Ray was imported before this call, when Ray's own setting holds).
    A joined cluster's authentication is the cluster's own (set ``RAY_AUTH_TOKEN`` or
    ``RAY_AUTH_TOKEN_PATH`` when it asks for a token). Already connected: the connection is
    used as it is (False)."""
    require("ray")
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address and address.split(":")[0] in ("127.0.0.1", "localhost"):
        # a cluster started with --node-ip-address 127.0.0.1: this driver must take that address
        # too, or it waits for ever for a local node of the machine's outward address
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if not address:
        # read by Ray when imported and inherited by the processes it starts: the node takes the
        # loopback address instead of the machine's outward one
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        if "RAY_AUTH_MODE" not in os.environ and "ray" not in sys.modules:
            # token authentication with a token of this run only (nothing written to ~/.ray):
            # other users of the machine cannot submit work to the loopback cluster
            import secrets

            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    try:
        import ray
    except ImportError as e:
        raise EngineError(f"{NEEDS_EXTRA} ({e})") from None

    if ray.is_initialized():
        return False
    verbose = _verbose()
    opts: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    if address:
        from ray._private import ray_constants

        if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
            ray_constants.ENABLE_RAY_CLUSTER = False
        log.info(f"joining the Ray cluster at {address}")
        try:
            ray.init(address=address, **opts)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise EngineError(f"cannot join the Ray cluster at {address}: {e}") from None
        return True
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case Ray was imported before the env was set
    from stlser.utils import usable_cores

    ray.init(address="local", num_cpus=usable_cores(), include_dashboard=False, **opts)
    log.info(f"started a local Ray cluster ({usable_cores()} CPUs, 127.0.0.1, token auth)")
    return True


@contextlib.contextmanager
def session(engine: str, address: str | None = None) -> Iterator[None]:
    """Several runs on one engine (a sweep's cells, leave-one-corpus-out's models): with
    ``ray``, one connection for all of them (an embedded cluster starts once, not per run, and
    is shut down at the end); with ``local``, nothing to set up."""
    require(engine)
    started = init_ray(address) if engine == "ray" else False
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def _ray_unit(
    work: Callable[[Any], Any], unit: Any, state: dict[str, Any], threads: int, cwd: str
) -> Any:
    """The body of one Ray task: `work(unit)` with `runs.WORKER` holding `state`, in the driver's
    working folder when this node has it (relative run and cache paths then mean the same)."""
    import torch

    from stlser import logs

    if os.path.isdir(cwd):
        os.chdir(cwd)

    logs.quiet_third_party()
    torch.set_num_threads(threads)
    runs.WORKER.clear()
    runs.WORKER.update(state)
    try:
        return work(unit)
    finally:
        runs.WORKER.clear()


def run_ray(
    units: Iterable[Any],
    work: Callable[[Any], Any],
    on_done: Callable[[Any, Any], None],
    state: dict[str, Any],
    threads: int | None = None,
    address: str | None = None,
    gpus: float = 0,
) -> None:
    """Every unit as a Ray task asking for `threads` CPUs (default 1) and `gpus` GPUs, running
    with that many torch threads (a GPU task sees only the GPUs Ray gave it, through
    ``CUDA_VISIBLE_DEVICES``); `on_done(unit, result)` here as each finishes. A cluster started
    here is shut down at the end; on failure or interrupt the tasks still running are
    cancelled."""
    units = list(units)
    if not units:
        return
    started = init_ray(address)
    import ray

    try:
        n = max(1, threads or 1)
        task = ray.remote(
            num_cpus=n, num_gpus=gpus, max_retries=MAX_RETRIES, retry_exceptions=False
        )(_ray_unit)
        shared = ray.put(state)  # once: every task reads the same object
        fn = ray.put(work)
        each = f"{n} CPU(s)" + (f" and {gpus:g} GPU(s)" if gpus else "")
        log.info(f"fitting {len(units)} models as Ray tasks, {each} each")
        cwd = os.getcwd()
        pending = {task.remote(fn, u, shared, n, cwd): u for u in units}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    u = pending.pop(ref)
                    on_done(u, ray.get(ref))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()


def unit_gpus(cfg: Any) -> int:
    """GPUs one unit of `cfg` asks Ray for: a network trained on a GPU accelerator asks for its
    `train.devices`; everything else (CPU training, models over functionals) for none."""
    if cfg.model.kind == "network" and cfg.train.accelerator in ("gpu", "cuda"):
        return max(1, int(cfg.train.devices))
    return 0


def run(
    units: Iterable[Any],
    work: Callable[[Any], Any],
    on_done: Callable[[Any, Any], None],
    state: dict[str, Any],
    jobs: int = 1,
    threads: int | None = None,
    engine: str = "local",
    address: str | None = None,
    gpus: float = 0,
) -> None:
    """`work(unit)` for every unit and `on_done(unit, result)` in this process, on the chosen
    engine: ``local`` is `runs.run_units` (`jobs` processes); ``ray`` is :func:`run_ray` (Ray
    schedules the tasks by their CPU and `gpus` requests, so `jobs` does not apply)."""
    require(engine)
    if engine == "local":
        runs.run_units(units, work, on_done, state, jobs=jobs, threads=threads)
    else:
        run_ray(units, work, on_done, state, threads=threads, address=address, gpus=gpus)
