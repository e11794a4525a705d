"""Run-folder integrity: one writer per folder, nothing written before every check has passed,
refusals of corpora and folds no recogniser can learn from, and workers that die with their
parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from stlser import runs
from stlser.cli import main
from tests import equivalence


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return equivalence.build(tmp_path_factory.mktemp("runs") / "corpus")


def _argv(corpus: Path, out: Path, *extra: str) -> list[str]:
    argv = ["baseline", "-o", str(out)]
    for o in ["data.corpus=csv", f"data.root={corpus}", f"cache_dir={out.parent / 'cache'}"]:
        argv += ["--set", o]
    for o in ["train.progress=false", *extra]:
        argv += ["--set", o]
    return argv


def test_a_second_writer_is_refused_before_touching_the_folder(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    held = runs.lock(run)  # another process's crossval, as far as the lock can tell
    try:
        assert main(_argv(corpus, run)) == 2
        assert "another stlser process is writing into" in capsys.readouterr().err
        assert sorted(p.name for p in run.iterdir()) == [".stlser.lock"]
    finally:
        held.close()
    assert main(_argv(corpus, run)) == 0  # free again


def test_a_late_refusal_leaves_a_finished_run_intact(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_argv(corpus, run)) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    # the folds only exist once the manifest is read: refused after the config loaded
    assert main(_argv(corpus, run, "split.folds=[99]", "seed=3")) == 2
    assert "split.folds=[99]" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before
    assert main([*_argv(corpus, run), "--resume"]) == 0  # the finished run still resumes


def test_a_corpus_with_one_class_is_refused(tmp_path, capsys):
    root = tmp_path / "c"
    csv = equivalence.build(root, per_class=1)
    df = pd.read_csv(csv)
    df[df.label == "sad"].to_csv(csv, index=False)
    assert main(_argv(csv, tmp_path / "run")) == 2
    assert "at least two" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_their_parent(sig):
    # each unit runs `sleep 120` in a grandchild: its presence says the worker is at work
    code = (
        "import subprocess\n"
        "from stlser import runs\n"
        "units = [['sleep', '120'], ['sleep', '121']]\n"
        "runs.run_units(units, subprocess.call, lambda u, r: None, {}, jobs=2, threads=1)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 60
        workers: list[int] = []
        while time.time() < deadline:
            kids = [k for k in _children(parent.pid) if _alive(k)]
            # the pool's two workers (plus, perhaps, the resource tracker)
            workers = [k for k in kids if "spawn_main" in Path(f"/proc/{k}/cmdline").read_text()]
            if len(workers) >= 2 and all(_children(w) for w in workers):
                break
            time.sleep(0.2)
        assert len(workers) >= 2, "the pool did not start"
        sleepers = [g for w in workers for g in _children(w)]
        os.kill(parent.pid, sig)
        parent.wait(timeout=30)
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers)
    finally:
        for g in locals().get("sleepers", []):
            try:
                os.kill(g, signal.SIGKILL)
            except OSError:
                pass
        if parent.poll() is None:
            parent.kill()
