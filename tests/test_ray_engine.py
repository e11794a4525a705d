"""The ray engine on a real local Ray cluster (started once for the module, 2 CPUs): crossval
and baseline give the committed local predictions of tests/equivalence.py; a worker process
killed mid-run is retried and nothing is lost; a sweep gives the local engine's results; the
cluster listens on 127.0.0.1 only and asks for a token; and
``--engine ray`` without Ray installed exits 2 naming the extra."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests import equivalence

ROOT = Path(__file__).resolve().parents[1]
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (pip install 'stlser[cluster]'); CI installs it",
)


@pytest.fixture(scope="module")
def ray_cluster():
    """One embedded cluster for the module; workers can import this test package."""
    from stlser import engines

    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "src"), *([before] if before else [])]
    )
    assert engines.init_ray(None) is True
    import ray
    from ray._raylet import AuthenticationMode, get_authentication_mode

    # token authentication holds whether or not another module's tests imported Ray first
    # (engines.init_ray sets it before Ray's first import in this process)
    assert get_authentication_mode() == AuthenticationMode.TOKEN
    yield ray
    ray.shutdown()
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before


def _run(system: str, work: Path, out: Path) -> Path:
    from stlser.cli import main

    csv = work / "corpus" / "corpus.csv"
    if not csv.exists():
        equivalence.build(work / "corpus")
    argv = ["baseline" if system == "svm" else "crossval", "-o", str(out), "--engine", "ray"]
    for o in equivalence.overrides(system, csv, work / "cache"):
        argv += ["--set", o]
    assert main(argv) == 0
    return out


def _same_as_committed(system: str, out: Path) -> None:
    equivalence.assert_committed(system, out)


@needs_ray
def test_cluster_listens_on_loopback_only(ray_cluster):
    import psutil

    nodes = ray_cluster.nodes()
    assert nodes and all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes)
    assert ray_cluster.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    loopback = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
    listening = []
    for proc in psutil.Process().children(recursive=True):
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        listening += [(proc.name(), c.laddr.ip) for c in conns if c.status == psutil.CONN_LISTEN]
    assert listening, "no Ray process listens: the check would prove nothing"
    assert all(ip in loopback for _, ip in listening), listening


@needs_ray
def test_cluster_asks_for_a_token(ray_cluster):
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert os.environ.get("RAY_AUTH_MODE") == "token" and os.environ.get("RAY_AUTH_TOKEN")
    assert get_authentication_mode() == AuthenticationMode.TOKEN
    address = ray_cluster.get_runtime_context().gcs_address
    # a plain client of another user: Ray's defaults, no token. It retries for ~20 s before
    # giving up; the server's refusal is in its log within a second or two: stop it then.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    code = f"import ray; ray.init(address={address!r}); print('joined')"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    timer = threading.Timer(60, proc.kill)
    timer.start()
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if b"InvalidAuthToken" in line:
                break
    finally:
        timer.cancel()
        proc.kill()
        out = proc.communicate()[0]
    assert b"joined" not in out
    assert b"InvalidAuthToken" in seen[-1], b"".join(seen)[-2000:]


@needs_ray
@pytest.mark.parametrize(
    "system",
    ["svm", pytest.param("expert_select", marks=pytest.mark.slow)],  # make test < 10 min
)
def test_ray_gives_the_local_predictions(system, ray_cluster, tmp_path_factory, one_torch_thread):
    work = tmp_path_factory.getbasetemp() / "ray-equivalence"
    out = _run(system, work, work / f"{system}-ray")
    _same_as_committed(system, out)
    assert (out / "report.json").exists()


class KillFirstAttempt:
    """A unit function whose first call (over all workers, via an exclusive marker file) ends
    its own worker process, as a crashed or OOM-killed worker would; later calls fit."""

    def __init__(self, marker: Path, inner):
        self.marker = marker
        self.inner = inner

    def __call__(self, unit):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return self.inner(unit)
        os.write(fd, f"{unit.pos} {unit.member} {os.getpid()}\n".encode())
        os.close(fd)
        os._exit(1)


@needs_ray
@pytest.mark.slow  # make test < 10 min; CI runs it in slow-checks
def test_a_worker_killed_mid_run_is_retried(
    ray_cluster, tmp_path_factory, monkeypatch, one_torch_thread
):
    from stlser import driver

    work = tmp_path_factory.getbasetemp() / "ray-equivalence"
    marker = work / "killed.txt"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    monkeypatch.setattr(driver, "_fit_unit", KillFirstAttempt(marker, driver._fit_unit))
    out = _run("svm", work, work / "svm-killed")
    pos, member, pid = (int(x) for x in marker.read_text().split())
    assert pid != os.getpid()
    assert (driver.runs.member_dir(out / f"fold_{pos:02d}", member) / "fold.json").exists()
    _same_as_committed("svm", out)


def test_ray_engine_without_the_extra_exits_2(tmp_path):
    csv = equivalence.build(tmp_path / "corpus", per_class=1)
    out = tmp_path / "run"
    argv = ["crossval", "-o", str(out), "--engine", "ray"]
    for o in equivalence.overrides("svm", csv, tmp_path / "cache"):
        argv += ["--set", o]
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from stlser.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 2, r.stderr
    assert "pip install 'stlser[cluster]'" in r.stderr
    assert not out.exists()


@needs_ray
@pytest.mark.slow  # 75 s: the sweep runs twice, locally and on Ray
def test_sweep_on_ray_gives_the_local_results(ray_cluster, tmp_path, one_torch_thread):
    """Every value of a sweep cross-validated on the Ray cluster: the same predictions and
    sweep table as the local engine."""
    import pandas as pd

    from stlser.cli import main

    csv = equivalence.build(tmp_path / "corpus", per_class=2)
    sets = ["model.kind=svm", *equivalence.overrides("svm", csv, tmp_path / "cache")]
    values = "[0.01],[1.0]"
    for engine in ("local", "ray"):
        argv = [
            "sweep",
            "--param",
            "model.c_grid",
            "--values",
            values,
            "-o",
            str(tmp_path / engine),
        ]
        argv += ["--engine", engine] + [x for o in sets for x in ("--set", o)]
        assert main(argv) == 0
    cells = sorted(p.name for p in (tmp_path / "local").iterdir() if p.is_dir())
    assert len(cells) == 2
    for cell in cells:
        local, ray = (
            pd.read_csv(tmp_path / e / cell / "predictions.csv") for e in ("local", "ray")
        )
        pd.testing.assert_frame_equal(local, ray)
    keep = ["value", "ua_mean", "wa_mean", "ua_pooled", "n_folds"]
    local, ray = (pd.read_csv(tmp_path / e / "sweep.csv")[keep] for e in ("local", "ray"))
    pd.testing.assert_frame_equal(local, ray)
    assert ray_cluster.is_initialized()  # a cluster the sweep joined is left running


GPU_DRIVER = """
import os
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback, as the embedded cluster
import ray
from stlser import engines
from stlser.config import ExperimentConfig, NetworkConfig, TrainConfig
ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False)  # declared, not real
got = {}
def work(unit):
    return ray.get_gpu_ids()
for gpus in (0, 1, 2):
    engines.run_ray([1, 2], work, lambda u, r, g=gpus: got.setdefault(g, []).append(r), {},
                    gpus=gpus)
print(sorted(len(r) for r in got[0]), sorted(len(r) for r in got[1]), sorted(len(r) for r in got[2]))
net = ExperimentConfig(model=NetworkConfig(), train=TrainConfig(accelerator="cuda", devices=2))
cpu = ExperimentConfig(model=NetworkConfig(), train=TrainConfig())
print(engines.unit_gpus(net), engines.unit_gpus(cpu))
"""


@needs_ray
def test_units_ask_ray_for_gpus(tmp_path):
    """A unit's GPU request reaches Ray: on a cluster declaring 2 GPUs (none needed: Ray only
    counts them), tasks asking for 0, 1 and 2 GPUs are given that many GPU ids; a network on a
    GPU accelerator asks for its `train.devices`, anything on the CPU for none."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    r = subprocess.run(
        [sys.executable, "-c", GPU_DRIVER], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-2:] == ["[0, 0] [1, 1] [2, 2]", "2 0"], r.stdout
