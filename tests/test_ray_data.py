"""The data path on Ray (`stlser.raydata`) on a real local Ray cluster (one embedded 2-CPU cluster
for the module, 127.0.0.1, token auth): features and predictions equal the local engine's on
the miniature corpus of tests/equivalence.py; an unreadable file is listed, not fatal; a worker
process killed mid-run is retried with nothing lost; a run resumes after its driver is killed
(finished shards are not computed again); a 2-node cluster on one machine runs the features
path. Fast checks without Ray: the cache reads shards, and ``--engine ray`` without the extra
exits 2 naming it."""

from __future__ import annotations

import csv
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stlser.config import FeatureConfig
from tests import equivalence

ROOT = Path(__file__).resolve().parents[1]
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (pip install 'stlser[cluster]'); CI installs it",
)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}


@pytest.fixture(scope="module")
def ray_cluster():
    """One embedded cluster for the module; workers import this checkout and the tests."""
    from stlser import engines

    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = ENV["PYTHONPATH"] + (os.pathsep + before if before else "")
    assert engines.init_ray(None) is True
    import ray
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN
    assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())
    yield ray
    ray.shutdown()
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The miniature corpus (45 clips) plus one file that is not audio, as a manifest."""
    root = tmp_path_factory.mktemp("raydata")
    csv_path = equivalence.build(root / "corpus")
    (root / "corpus" / "broken.wav").write_bytes(b"RIFF but not a wave file")
    with open(csv_path, "a") as f:
        f.write(f"broken,{root / 'corpus' / 'broken.wav'},sad,s5\n")
    return csv_path


def _manifest(path: Path):
    from stlser import corpora

    return corpora.read_manifest(path)


def _local_frames(df) -> dict[str, np.ndarray]:
    from stlser import features
    from stlser.config import FeatureConfig

    good = df[df["utt_id"] != "broken"]
    return features.load_features(good, FeatureConfig(), None, workers=1, progress=False)


def _cached_frames(df, cache: Path) -> tuple[dict[str, np.ndarray], int]:
    """The features the ordinary cache finds (local engine) and how many it had to compute."""
    from stlser import features
    from stlser.config import FeatureConfig

    good = df[df["utt_id"] != "broken"]
    stats = features.fill_cache(good, FeatureConfig(), cache, workers=1, progress=False)
    got = features.load_features(good, FeatureConfig(), cache, workers=1, progress=False)
    return got, stats["misses"]


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


# ------------------------------------------------------------------------------- no Ray
@needs_ray  # pyarrow comes with the extra
def test_the_cache_reads_shards(tmp_path, synth_corpus):
    from stlser import corpora, features
    from stlser.config import FeatureConfig
    from stlser.features import FeatureCache

    df = corpora.read_manifest(synth_corpus / "manifest.csv").head(6)
    cfg = FeatureConfig()
    cache = FeatureCache(tmp_path, cfg)
    want = {p: cache.compute(p) for p in df["path"]}
    paths = list(want)
    cache.write_shard("a", [(cache.key(p), p, want[p]) for p in paths[:4]])
    stats = features.fill_cache(df, cfg, tmp_path, workers=1, progress=False)
    assert (stats["hits"], stats["misses"]) == (4, 2)
    got = features.load_features(df, cfg, tmp_path, workers=1, progress=False)
    for utt, p in zip(df["utt_id"], df["path"], strict=True):
        assert np.array_equal(got[utt], want[p])
    assert np.array_equal(FeatureCache(tmp_path, cfg).get(paths[0]), want[paths[0]])
    (cache.shards / "a.parquet").write_bytes(b"truncated")  # a broken shard: its keys miss
    stats = features.fill_cache(df, cfg, tmp_path, workers=1, progress=False)
    assert (stats["hits"], stats["misses"]) == (2, 4)


@pytest.mark.parametrize("command", [pytest.param("features", marks=pytest.mark.slow), "predict"])
def test_engine_ray_without_the_extra_exits_2(tmp_path, command):
    csv_path = equivalence.build(tmp_path / "corpus", per_class=1)
    out = tmp_path / "out.csv"
    if command == "features":
        argv = ["features", "--manifest", str(csv_path), "--cache-dir", str(tmp_path / "c")]
    else:
        argv = ["predict", str(tmp_path / "corpus"), "-o", str(out)]
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from stlser.cli import main\n"
        f"sys.exit(main({[*argv, '--engine', 'ray']!r}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert r.returncode == 2, r.stderr
    assert "pip install 'stlser[cluster]'" in r.stderr
    assert not out.exists() and not (tmp_path / "c").exists()


@needs_ray  # pyarrow comes with the extra
def test_local_predict_writes_parquet(tmp_path):
    import pandas as pd

    from stlser.cli import main

    equivalence.build(tmp_path / "corpus", per_class=1)
    (tmp_path / "corpus" / "corpus.csv").unlink()
    (tmp_path / "corpus" / "broken.wav").write_bytes(b"not audio")
    assert main(["predict", str(tmp_path / "corpus"), "-o", str(tmp_path / "p.csv")]) == 0
    assert main(["predict", str(tmp_path / "corpus"), "-o", str(tmp_path / "p.parquet")]) == 0
    want = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    got = pd.read_parquet(tmp_path / "p.parquet")
    assert list(got.columns) == list(want.columns) and len(got) == len(want) == 16
    assert list(got["label"]) == list(want["label"]) and list(got["path"]) == list(want["path"])
    assert np.allclose(got["prob_angry"].fillna(-1), pd.to_numeric(want["prob_angry"]).fillna(-1))
    assert got["error"].str.len().gt(0).sum() == 1


@needs_ray  # else --engine ray exits 2 for the missing extra first
def test_ray_predict_refuses_segments_and_adaptation_before_any_work(tmp_path, capsys):
    from stlser.cli import main

    out = tmp_path / "out.csv"
    for extra in (["--segments"], ["--adapt", "folder"]):
        argv = ["predict", str(tmp_path), "-o", str(out), "--engine", "ray", *extra]
        assert main(argv) == 2
        assert "--engine ray classifies whole clips" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- a real Ray
@needs_ray
def test_features_equal_the_local_engine_and_list_the_unreadable(ray_cluster, corpus, tmp_path):
    from stlser import raydata

    df = _manifest(corpus)
    cache = tmp_path / "cache"
    stats = raydata.fill_cache(df, FeatureConfig(), cache, shard_files=8, progress=False)
    assert stats["shards"] == 6 and stats["misses"] == 45 and stats["hits"] == 0
    assert [Path(p).name for p, _ in stats["skipped"]] == ["broken.wav"]
    with open(stats["skipped_csv"]) as f:
        listed = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in listed] == ["broken.wav"] and listed[0]["reason"]
    got, computed = _cached_frames(df, cache)
    assert computed == 0  # the ordinary cache found every clip in the shards
    _same(got, _local_frames(df))
    again = raydata.fill_cache(df, FeatureConfig(), cache, shard_files=8, progress=False)
    # finished shards are not computed again; the unreadable file is tried again (one shard)
    assert again["hits"] == 45 and again["misses"] == 0 and again["shards"] == 1
    assert len(again["skipped"]) == 1


@needs_ray
def test_features_command_on_ray(ray_cluster, corpus, tmp_path, capsys):
    from stlser.cli import main

    argv = ["features", "--manifest", str(corpus), "--cache-dir", str(tmp_path / "c")]
    assert main([*argv, "--engine", "ray", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "46 files" in out and "(0 cached, 45 computed)" in out
    assert "1 file(s) skipped, reasons in" in out and "skipped.csv" in out


@needs_ray
def test_features_command_fills_what_the_recipe_reads(ray_cluster, corpus, tmp_path, capsys):
    """For a model over functionals, `stlser features` fills the functional sets at each speed
    (not the frames), on either engine, with the same numbers; crossval then finds them all."""
    from stlser import features
    from stlser.cli import main
    from stlser.kinds.functionals import load_matrix

    df = _manifest(corpus)
    good = df[df["utt_id"] != "broken"].head(12)
    manifest = tmp_path / "m.csv"
    good.to_csv(manifest, index=False)
    conf = tmp_path / "c.yaml"
    conf.write_text("name: t\nmodel: {kind: expert, functionals: [compact], speeds: [1.1]}\n")
    got = {}
    for engine in ("local", "ray"):
        cache = tmp_path / engine
        argv = ["features", "-c", str(conf), "--manifest", str(manifest), "--cache-dir", str(cache)]
        assert main([*argv, "--engine", engine, "--workers", "1"]) == 0
        out = capsys.readouterr().out
        assert "compact: 12 files" in out and "compact @1.1: 12 files" in out, out
        for speed in (1.0, 1.1):
            cfg, what = features.functional_target("compact")
            st = features.fill_cache(
                good, cfg, cache, workers=1, progress=False, what=what, speed=speed
            )
            assert (st["hits"], st["misses"]) == (12, 0), (engine, speed)
        got[engine] = [
            load_matrix(good, ["compact"], str(cache), False, speed=a) for a in (1.0, 1.1)
        ]
    for a, b in zip(got["local"], got["ray"], strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(got["local"][0], got["local"][1])  # the speed copy differs


def _rows(path: Path) -> dict[str, dict[str, str]]:
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path).astype(object).where(lambda d: d.notna(), "")
        return {str(r["path"]): {k: str(v) for k, v in r.items()} for _, r in frame.iterrows()}
    with open(path) as f:
        return {r["path"]: r for r in csv.DictReader(f)}


@needs_ray
def test_predictions_equal_the_local_engine(ray_cluster, corpus, tmp_path):
    from stlser.cli import main

    folder = str(corpus.parent)
    assert main(["predict", folder, "-o", str(tmp_path / "local.csv")]) == 0
    for name in ("ray.csv", "ray.parquet"):
        out = tmp_path / name
        assert main(["predict", folder, "-o", str(out), "--engine", "ray"]) == 0
        assert not (tmp_path / f".{name}.parts").exists()
        local, ray_rows = _rows(tmp_path / "local.csv"), _rows(out)
        assert list(local) == list(ray_rows) and len(local) == 46
        moved = []
        for path, want in local.items():
            got = ray_rows[path]
            assert got["label"] == want["label"] and got["error"] == want["error"], path
            diff = [
                abs(float(got[k]) - float(v))
                for k, v in want.items()
                if k.startswith("prob_") and v
            ]
            # float32 graph: clips batched with other neighbours (shards of 4 here, one stream
            # locally) move the probabilities by rounding (a few 1e-5), except where a step
            # functional over a few voiced frames flips (docs/scaling.md): a few 1e-3
            assert max(diff, default=0.0) < 1e-2, path
            moved += [path] if max(diff, default=0.0) > 1e-4 else []
        assert len(moved) <= 2, moved
        assert ray_rows[str(corpus.parent / "broken.wav")]["error"]


@needs_ray
def test_predict_resumes_from_finished_shards(ray_cluster, corpus, tmp_path, caplog):
    from stlser import raydata
    from stlser.cli.predict import expand_inputs
    from stlser.recognizer import resolve_model_path

    model = resolve_model_path("base", shipped=".onnx")
    files, _ = expand_inputs([corpus.parent])
    parts = tmp_path / "parts"
    first = list(raydata.predict_files(model, files[:8], None, parts, shard_files=4))
    done = {p.name: p.stat().st_mtime_ns for p in parts.iterdir()}
    assert len(done) == 2  # the first two shards of the full run below
    caplog.set_level("INFO", logger="stlser")
    full = list(raydata.predict_files(model, files, None, parts, shard_files=4))
    assert "12 shard(s) of up to 4, 2 already done" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in parts.iterdir() if p.name in done} == done
    assert len(full) == len(files)
    assert [(p, lab, e) for p, lab, _, _, e in full[:8]] == [
        (p, lab, e) for p, lab, _, _, e in first
    ]


class KillFirstAttempt:
    """A shard function whose first call (over all workers, via an exclusive marker file) ends
    its own worker process, as a crashed or OOM-killed worker would; later calls work."""

    def __init__(self, marker: Path, inner):
        self.marker = marker
        self.inner = inner

    def __call__(self, shard, **kwargs):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return self.inner(shard, **kwargs)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        os._exit(1)


@needs_ray
@pytest.mark.slow  # make test < 10 min; CI runs it in slow-checks
def test_a_worker_killed_mid_run_is_retried(ray_cluster, corpus, tmp_path, monkeypatch):
    from stlser import raydata

    marker = tmp_path / "killed.txt"
    monkeypatch.setattr(raydata, "_feature_shard", KillFirstAttempt(marker, raydata._feature_shard))
    df = _manifest(corpus)
    stats = raydata.fill_cache(df, FeatureConfig(), tmp_path / "c", shard_files=8)
    assert int(marker.read_text()) != os.getpid()  # a worker process died
    assert stats["misses"] == 45 and len(stats["skipped"]) == 1
    got, computed = _cached_frames(df, tmp_path / "c")
    assert computed == 0
    _same(got, _local_frames(df))


DRIVER = """
import sys
from stlser import corpora, raydata
from stlser.config import FeatureConfig
df = corpora.read_manifest(sys.argv[1])
raydata.fill_cache(df, FeatureConfig(), sys.argv[2], shard_files=1, workers=1)
"""


@needs_ray
@pytest.mark.slow
def test_features_resume_after_the_driver_is_killed(ray_cluster, corpus, tmp_path, caplog):
    from stlser import raydata

    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(corpus), str(cache)],
        env={**ENV, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while not list(cache.glob("*/shards/*.parquet")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard written in 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the cluster it started
        proc.wait()
    # a task already running in a worker may still finish its shard as the cluster goes down:
    # the finished shards are those present once nothing has changed for 3 s
    before: dict[Path, int] = {}
    while True:
        now = {p: p.stat().st_mtime_ns for p in cache.glob("*/shards/*.parquet")}
        if now == before:
            break
        before = now
        time.sleep(3.0)
    # one file per shard: 45 tasks, so that even a fast host is interrupted part of the way
    assert 0 < len(before) < 45, len(before)  # interrupted: some shards, not all
    caplog.set_level("INFO", logger="stlser")
    df = _manifest(corpus)
    stats = raydata.fill_cache(df, FeatureConfig(), cache, shard_files=1)
    import pyarrow.parquet as pq

    finished = sum(pq.read_metadata(p).num_rows for p in before)
    assert stats["hits"] == finished and stats["misses"] == 45 - finished
    assert {p: p.stat().st_mtime_ns for p in before} == before  # not rewritten
    got, computed = _cached_frames(df, cache)
    assert computed == 0
    _same(got, _local_frames(df))


TWO_NODES = """
import json, os, secrets, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
from stlser import corpora, raydata
from stlser.config import FeatureConfig
try:
    df = corpora.read_manifest(sys.argv[1])
    stats = raydata.fill_cache(df, FeatureConfig(), sys.argv[2], shard_files=4,
                               address=cluster.address)
    addresses = sorted(n.node_ip_address for n in cluster.list_all_nodes())
    print(json.dumps({"nodes": stats["nodes"], "misses": stats["misses"], "addr": addresses}))
finally:
    cluster.shutdown()
"""


@needs_ray
@pytest.mark.slow
def test_a_two_node_cluster_runs_the_features_path(corpus, tmp_path):
    import json
    import shutil
    import tempfile

    cache = tmp_path / "cache"
    # Ray's temp folder of this cluster only: the cluster utility writes its address into
    # ray_current_cluster there, which must not redirect other programs on the machine
    private = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths
    try:
        r = subprocess.run(
            [sys.executable, "-c", TWO_NODES, str(corpus), str(cache)],
            env={**ENV, "OMP_NUM_THREADS": "1", "RAY_TMPDIR": private},
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        shutil.rmtree(private, ignore_errors=True)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["misses"] == 45 and got["nodes"] == 2, got
    assert got["addr"] == ["127.0.0.1", "127.0.0.1"]
    frames, computed = _cached_frames(_manifest(corpus), cache)
    assert computed == 0
    _same(frames, _local_frames(_manifest(corpus)))
