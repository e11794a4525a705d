"""Smoke tests of the benchmark scripts (benchmarks/): each runs its quick mode with tiny sizes
and must produce its markdown tables with the expected columns. Times are never asserted."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from benchmarks import (
    bench_accuracy,
    bench_default,
    bench_features,
    bench_inference,
    bench_scaling,
    bench_selection,
    bench_service,
    bench_training,
    benchlib,
    run_all,
)

SEP = re.compile(r"^\|(---\|)+$")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Run torch on one thread here and in child processes: on a busy 2-core machine, two
    OpenMP threads make these tiny steps many times slower (benchmarks/README.md)."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tables(md: str) -> dict[tuple[str, ...], list[list[str]]]:
    """Every markdown table in `md`: header tuple → data rows (cells stripped)."""
    lines = md.splitlines()
    out: dict[tuple[str, ...], list[list[str]]] = {}
    for i in range(len(lines) - 1):
        if lines[i].startswith("|") and SEP.match(lines[i + 1]):
            head = tuple(c.strip() for c in lines[i].strip("|").split("|"))
            rows = []
            for ln in lines[i + 2 :]:
                if not ln.startswith("|"):
                    break
                rows.append([c.strip() for c in ln.strip("|").split("|")])
            assert all(len(r) == len(head) for r in rows), f"ragged table under {head}"
            out[head] = rows
    return out


def rows_of(md: str, first_columns: tuple[str, ...]) -> list[list[str]]:
    found = [h for h in tables(md) if h[: len(first_columns)] == first_columns]
    assert found, f"no table starting with {first_columns} in:\n{md}"
    return tables(md)[found[0]]


def test_helpers():
    assert benchlib.fmt(1234.4) == "1,234"  # no decimals from 100 up
    assert benchlib.fmt(0.0012345) == "0.00123"
    assert benchlib.fmt(None) == "-"
    md = benchlib.md_table(["a", "b|c"], [[1, "x|y"]])
    assert md.splitlines() == ["| a | b\\|c |", "|---|---|", "| 1 | x\\|y |"]
    assert benchlib.sizes({"quick": {"n": 1}, "full": {"n": 9}}, True, {}) == {"n": 1}
    with pytest.raises(TypeError, match="unknown size"):
        benchlib.sizes({"quick": {"n": 1}, "full": {"n": 9}}, False, {"m": 2})
    s = benchlib.emodb_like_seconds(2000)
    assert s.min() >= 1.2 and s.max() <= 9.0 and 2.5 < s.mean() < 3.1


def test_features_quick(monkeypatch, tmp_path):
    monkeypatch.setenv("STLSER_CORPORA", str(tmp_path))  # no EmoDB there → synthetic fallback
    md = bench_features.main(quick=True, reps=1, synth_speakers=1, synth_per_class=1)
    assert md.startswith("## Feature extraction")
    assert "synthetic corpus" in md
    rows = rows_of(md, ("method", "workers", "feature cache", "min s", "median s"))
    assert [(r[1], r[2]) for r in rows] == [
        ("1", "cold"),
        ("2", "cold"),
        ("1", "cached"),
        ("2", "cached"),
        ("1", "cold"),
        ("1", "none"),
    ]
    assert rows[-1][0].startswith("authors' recipe")


def test_training_quick():
    md = bench_training.main(
        quick=True,
        batch=2,
        steps=1,
        warmup=0,
        epoch_utts=4,
        matmul_n=64,
        matmul_reps=1,
        profile_steps=1,
    )
    rows = rows_of(md, ("variant", "min s/step", "median s/step", "utt/s (median)"))
    names = [r[0] for r in rows]
    assert names[:3] == ["baseline (fp32, contiguous)", "channels_last", "bf16 autocast"]
    assert names[3].startswith("torch.compile") and "skipped" in rows[3][-1]
    assert [r[0] for r in rows_of(md, ("bucketing", "batches", "padding share"))] == ["off", "on"]
    assert rows_of(md, ("operation kind", "share of self CPU time"))
    assert "Self CPU time total" in md  # the torch.profiler table


def test_inference_quick():
    md = bench_inference.main(
        quick=True, requests=2, batches=1, streams=2, warmup=1, cli_files=2, onnx=False
    )
    rows = rows_of(md, ("runtime", "streams", "min ms", "p50 ms", "p99 ms", "RTF (p50)"))
    assert [r[:2] for r in rows[:2]] == [
        ["torch eager (`Recognizer`)", "1 (sequential)"],
        ["torch eager (`Recognizer`)", "2 (one batch)"],
    ]
    assert any(r[0].startswith("ONNX") and r[-1] == "skipped" for r in rows)
    cli = rows_of(md, ("model", "workers", "start-up s (1 file)"))
    assert cli[0][0] == "model.pt" and cli[0][3] != "-"  # the CLI ran and was timed


def test_scaling_quick():
    md = bench_scaling.main(
        quick=True,
        base_files=2,
        copies=[1, 2],
        feature_reps=1,
        train_reps=1,
        minutes=[0.05, 0.1],
        segment_reps=1,
        batch=2,
        isolate=False,
    )
    feat = rows_of(md, ("data", "files", "audio min"))
    assert [r[:2] for r in feat] == [["1×", "2"], ["2×", "4"]]
    train = rows_of(md, ("data", "utterances"))
    assert [r[:2] for r in train] == [["1×", "2"], ["2×", "4"]]
    seg = rows_of(md, ("model", "audio min", "segments"))
    assert len(seg) == 4 and all(int(r[2]) >= 1 for r in seg)  # the bursts were found
    assert {r[0] for r in seg} == {"network (random weights)", "default `base`"}


@pytest.mark.slow  # 14 s; make test < 10 min; CI runs it in slow-checks
def test_service_quick():
    md = bench_service.main(quick=True, requests=4, concurrency=[2])
    assert "| model | client threads | requests | errors | requests/s | p50 ms | p99 ms |" in md
    for model in ("| network, torch", "| default `base`, torch"):
        row = next(line for line in md.splitlines() if line.startswith(model))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:4] == ["2", "4", "0"]  # 4 requests from 2 threads, none failed
    upload = next(
        line for line in md.splitlines() if line.startswith("| default `base`, torch | 200")
    )
    assert "MB" in upload  # the long upload was answered and its memory measured


@pytest.mark.slow  # 21 s; make test < 10 min; CI runs it in slow-checks
def test_default_quick(monkeypatch):
    """The default recognizer's section on a synthetic folder (no corpus), no network export."""
    monkeypatch.setattr(bench_default.bl, "corpus_root", lambda name: None)
    md = bench_default.main(
        quick=True, synthetic_files=4, smile_every=2, requests=2, batches=1, streams=4,
        warmup=0, network=False,
    )  # fmt: skip
    assert "FAILED" not in md, md
    assert "speech-like WAVs" in md and "stlser compact + large" in md
    assert "default `base`, ONNX" in md and "default `base`, torch" in md
    assert "skipped (--quick)" in md


def test_update_replaces_sections_only():
    old = "# r\nGenerated by a\n\n## A\n\na1\n\n## B\n\nb1\n"
    new = "# r\nGenerated by b\n\n## B\n\nb2\n\n## C\n\nc2\n"
    got = run_all.merge_sections(old, new, "Re-run: B, C.")
    assert got == "# r\nGenerated by a\n\nRe-run: B, C.\n\n## A\n\na1\n\n## B\n\nb2\n\n## C\n\nc2\n"


def test_run_isolated(tmp_path):
    wav = benchlib.write_speech_folder(tmp_path / "w", [1.0], seed=0)
    df = benchlib.folder_manifest(wav, [1.0])
    df.to_csv(tmp_path / "m.csv", index=False)
    res = benchlib.run_isolated(
        "bench_scaling",
        "features_child",
        {"manifest": str(tmp_path / "m.csv"), "reps": 1, "cache_root": str(tmp_path / "c")},
        timeout=120,
    )
    assert len(res["times"]) == 1 and res["rss_before_mb"] > 50  # torch is imported
    assert res["peak_rss_mb"] > 50  # the child's own peak comes back with its result
    with pytest.raises(RuntimeError, match="no_such_function"):
        benchlib.run_isolated("bench_scaling", "no_such_function", {}, timeout=60)


def test_run_all_writes_report(tmp_path, monkeypatch, capsys):
    (tmp_path / "fake_ok.py").write_text(
        "def main(quick):\n    return '## Fake\\n\\n| a | b |\\n|---|---|\\n| 1 | 2 |\\n'\n"
    )
    (tmp_path / "fake_bad.py").write_text("def main(quick):\n    raise ValueError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(run_all, "SCRIPTS", {"ok": "fake_ok", "bad": "fake_bad"})
    out = tmp_path / "report.md"
    code = run_all.main(["--quick", "--only", "ok,bad", "--out", str(out)])
    text = out.read_text()
    assert code == 1  # one section failed
    assert text.startswith("# stlser benchmarks") and "--only ok,bad" in text
    assert rows_of(text, ("fact", "value"))[0][0] == "CPU"
    assert rows_of(text, ("a", "b")) == [["1", "2"]]
    assert "## bad: FAILED" in text and "ValueError: boom" in text
    assert capsys.readouterr().out.strip() == text.strip()
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.main(["--only", "nope"])


def _mini_corpora(root: Path) -> None:
    """Miniature EmoDB (4 speakers, every emotion twice) and CASIA (2 speakers, 4 emotions)
    trees of speech-like noise, in their release layouts."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    wav = root / "emodb" / "wav"
    wav.mkdir(parents=True)
    for spk in ("03", "08", "09", "10"):
        for code in "WLEAFTN":
            for text in ("a01", "b02"):
                x = benchlib.speechlike(float(rng.uniform(0.6, 1.0)), rng)
                sf.write(str(wav / f"{spk}{text}{code}a.wav"), x, benchlib.SR, subtype="PCM_16")
    for spk in ("liuchanhg", "wangzhe"):
        for emo in ("angry", "happy", "neutral", "sad"):
            (root / "casia" / spk / emo).mkdir(parents=True)
            for n in (201, 202, 203):
                x = benchlib.speechlike(float(rng.uniform(0.6, 1.0)), rng)
                sf.write(str(root / "casia" / spk / emo / f"{n}.wav"), x, benchlib.SR)


@pytest.mark.slow  # minutes of pretraining: make slow-checks (CI)
def test_bench_accuracy_fine_tunes_from_the_other_corpora_only(tmp_path):
    """System `finetuned` pretrains on the corpora other than the tested one (here CASIA for
    EmoDB), keeps that model, and pairs the fine-tuned run with the from-scratch one."""
    import json

    _mini_corpora(tmp_path / "corpora")
    args = [
        "--root",
        str(tmp_path / "corpora"),
        "--corpora",
        "emodb",
        "--systems",
        "default,finetuned",
        "--seeds",
        "0",
        "--runs",
        str(tmp_path / "runs"),
        "--set",
        "split.val_speakers=1",
        "--set",
        "model.functionals=[egemaps]",
        "--set",
        "model.level=keep",
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    md = bench_accuracy.main(args)
    base = tmp_path / "runs" / "emodb" / "pretrained-without"
    info = json.loads((base / "pretrain.json").read_text())
    assert info["corpora"] == ["casia"]
    cfg = (tmp_path / "runs" / "emodb" / "finetuned" / "seed0" / "config.yaml").read_text()
    assert str(base / "model.pt") in cfg
    rows = tables(md)[("corpus", "UA fine-tuned − from scratch [95 % CI]", "goal (≥ +3)")]
    assert rows[0][0] == "emodb" and re.fullmatch(r"[+-]\d+\.\d \[.*\] \(n=1\)", rows[0][1])


@pytest.mark.slow  # trains every system of the table on miniature corpora: make slow-checks
def test_bench_accuracy_pairs_systems_with_the_svm_and_reprints_finished_runs(
    tmp_path, monkeypatch
):
    """The accuracy benchmark on a miniature EmoDB tree (4 speakers, every emotion twice),
    systems default and svm over seeds 0 and 1: one row per system, the paired UA difference
    to the SVM filled in for `default`; a second call with --only-finished trains nothing and
    prints the same numbers (a seed that was never run is left out, not invented)."""
    _mini_corpora(tmp_path / "corpora")
    common = [
        "--root",
        str(tmp_path / "corpora"),
        "--corpora",
        "emodb",
        "--systems",
        "default,svm",
        "--runs",
        str(tmp_path / "runs"),
        "--set",
        "split.val_speakers=1",
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    md = bench_accuracy.main([*common, "--seeds", "0,1", "--out", str(tmp_path / "acc.md")])
    assert (tmp_path / "acc.md").read_text().strip() == md.strip()
    key = next(k for k in tables(md) if k[:2] == ("corpus", "system"))
    rows = tables(md)[key]
    col = {h: i for i, h in enumerate(key)}
    gap = next(h for h in key if h.startswith("UA − SVM"))
    assert [r[col["system"]] for r in rows] == [
        bench_accuracy.NAMES["default"],
        bench_accuracy.NAMES["svm"],
    ]
    for r in rows:
        assert r[col["corpus"]] == "emodb"
        assert r[col["folds"]].startswith("4 ")  # LOSO over the 4 speakers
        assert r[col["seeds"]] == "0,1"
        assert re.fullmatch(r"\d+\.\d ± \d+\.\d", r[col["UA mean ± sd"]])
    pm = r"[+-]\d+\.\d"
    assert re.fullmatch(rf"{pm} \[{pm}, {pm}\] \(n=2\)", rows[0][col[gap]])
    lo, hi = map(float, re.findall(pm, rows[0][col[gap]])[1:])
    assert lo <= float(rows[0][col[gap]].split()[0]) <= hi
    assert rows[0][col["goal (≥ +5)"]] in ("met", "**missed**")
    assert rows[1][col[gap]] == "–"  # the SVM is not compared with itself
    for system in ("default", "svm"):
        for seed in (0, 1):
            assert (tmp_path / "runs" / "emodb" / system / f"seed{seed}" / "report.json").exists()

    def no_training(*a, **k):
        raise AssertionError("--only-finished must not train")

    monkeypatch.setattr(bench_accuracy.driver, "crossval", no_training)
    monkeypatch.setattr(bench_accuracy.driver, "baseline", no_training)
    again = bench_accuracy.main([*common, "--seeds", "0,1", "--only-finished"])
    assert tables(again)[key] == rows
    partial = bench_accuracy.main([*common, "--seeds", "0,1,2", "--only-finished"])
    assert [r[col["seeds"]] for r in tables(partial)[key]] == ["0,1", "0,1"]
    assert tables(partial)[key][0][col[gap]] == rows[0][col[gap]]

    # the archive keeps what the table needs; without the runs it gives the same table
    kept = ["--archive", str(tmp_path / "kept")]
    bench_accuracy.main([*common, "--seeds", "0,1", "--only-finished", *kept])
    assert (tmp_path / "kept" / "emodb" / "svm" / "seed1" / "predictions.csv.gz").exists()
    shutil.rmtree(tmp_path / "runs")
    assert tables(bench_accuracy.main([*common, "--seeds", "0,1", "--only-finished"]))[key] != rows
    restored = bench_accuracy.main([*common, "--seeds", "0,1", *kept])  # trains nothing
    assert tables(restored)[key] == rows

    # --rows-from: another report's rows for systems not run here, marked with their source
    old = tmp_path / "old.md"
    row = ["emodb", bench_accuracy.NAMES["paper5"], *rows[0][2:]]
    old.write_text(benchlib.md_table(list(key), [row, ["casia", *row[1:]], rows[1]]))
    only = [a for a in common if a != "default,svm"] + ["--seeds", "0,1", "--only-finished"]
    idx = only.index("--systems") + 1
    only.insert(idx, "default,svm,paper5")
    md = bench_accuracy.main([*only, *kept, "--rows-from", str(old)])
    later = next(v for k, v in tables(md).items() if k[0] == "source")
    assert later == [["`old.md`", *row]]  # not the SVM (run here) nor CASIA (not asked)


@pytest.mark.slow  # 12 s; make test < 10 min; CI runs it in slow-checks
def test_bench_pretrain_never_reads_the_held_out_corpus(tmp_path):
    """Each held-out corpus's recipes are fitted and scored on the other two corpora only, both
    ways; the variants' differences are paired on the same pairs."""
    import json

    from benchmarks import bench_pretrain

    _mini_corpora(tmp_path / "corpora")
    (tmp_path / "corpora" / "casia2").symlink_to(tmp_path / "corpora" / "casia")
    md = bench_pretrain.main(
        [
            "--root",
            str(tmp_path / "corpora"),
            "--corpora",
            "emodb,casia,casia=casia2",
            "--runs",
            str(tmp_path / "runs"),
            "--variant",
            "none=model.speeds=[]",
            "--variant",
            "strong=model.l2_grid=[10.0]",
            "--set",
            "model.functionals=[egemaps]",
            "--set",
            "model.level=keep",
            "--set",
            f"cache_dir={tmp_path / 'cache'}",
        ]
    )
    rows = tables(md)[
        ("held out (never read)", "validation pair", "UA none", "UA strong", "strong − none")
    ]
    assert len(rows) == 6
    for held, pair, a, b, d in rows:
        trained, scored = pair.split(" → ")
        assert held not in (trained, scored) and trained != scored
        assert abs(float(b) - float(a) - float(d)) < 0.11
    for info in (tmp_path / "runs").glob("without-*/*/without-*/pretrain.json"):
        held = info.parts[-4].removeprefix("without-")
        assert held not in json.loads(info.read_text())["corpora"]
    assert len(list((tmp_path / "runs").glob("without-*/*/without-*/pretrain.json"))) == 12


@pytest.mark.slow  # every candidate recipe on three corpora: make slow-checks (CI)
def test_bench_selection_never_shows_a_recipe_the_test_speaker(tmp_path, monkeypatch):
    """Recipe candidates see only the fold's training speakers and are scored on its
    validation speakers; speed-perturbed copies come from the feature cache; the pool is the
    other corpora."""
    import json

    _mini_corpora(tmp_path / "corpora")
    seen: list[tuple[set, set]] = []
    real = bench_selection.candidates

    def spying(args):
        recipes = real(args)

        def spy(d, rows, target, rng):
            seen.append((set(d.spk[rows]), set(d.spk[target])))
            return recipes["base"](d, rows, target, rng)

        return {**recipes, "spy": spy}

    monkeypatch.setattr(bench_selection, "candidates", spying)
    common = [
        "--root",
        str(tmp_path / "corpora"),
        "--corpora",
        "emodb",
        "--seeds",
        "0",
        "--aug-dir",
        str(tmp_path / "aug"),
        "--set",
        "split.val_speakers=1",
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    md = bench_selection.main(
        [
            *common,
            *("--candidates", "base,spy,aug,bal,boaw,avg-aug-pool"),
            *("--boaw-words", "8", "--boaw-assign", "2"),
            *("--out", str(tmp_path / "s.md")),
        ]
    )
    head = ("corpus", "candidate", "val UA (mean ± sd over seeds)", "− base (per seed)", "s/seed")
    rows = tables(md)[head]
    assert [r[1] for r in rows] == ["base", "spy", "aug", "bal", "boaw", "avg-aug-pool"]
    assert rows[1][3] == "+0.0 (+0.0)"  # the spy is the base recipe
    for r in rows:
        assert 0 <= float(r[2]) <= 100
    assert len(seen) == 4  # one call per LOSO fold
    tested = set()
    for train, val in seen:
        assert len(train) == 2 and len(val) == 1 and not train & val
        tested |= {"03", "08", "09", "10"} - train - val
    assert tested == {"03", "08", "09", "10"}  # every test speaker held out of both
    # the copies are the feature cache's: one entry per clip and (set, speed), under its own key
    by_speed: dict[float, int] = {}
    for conf in (tmp_path / "cache").glob("*/config.json"):
        speed = json.loads(conf.read_text()).get("speed", 1.0)
        by_speed[speed] = by_speed.get(speed, 0) + len(list(conf.parent.glob("*/*.npy")))
    # eGeMAPS and ComParE; at speed 1 also the pool's rows: CASIA's 24 clips, never perturbed
    assert by_speed == {1.0: 2 * (56 + 24), 0.9: 2 * 56, 1.1: 2 * 56}
    assert len(list((tmp_path / "aug").glob("lld-*.npy"))) == 1
    with pytest.raises(SystemExit):
        bench_selection.main([*common, "--candidates", "nope"])
    with pytest.raises(SystemExit):
        bench_selection.main([*common, "--candidates", "base", "--sets", "egemaps,nope"])
    # several functional-set combinations: one row each, against the first combination's base
    md = bench_selection.main(
        [*common, "--candidates", "base", "--sets", "egemaps", "--sets", "egemaps,is09"]
    )
    head = ("corpus", "candidate", "val UA (mean ± sd over seeds)", "− base [egemaps] (per seed)")
    rows = tables(md)[(*head, "s/seed")]
    assert [r[1] for r in rows] == ["base [egemaps]", "base [egemaps+is09]"]
    assert rows[0][3] == "" and rows[1][3].count("(") == 1


def test_bench_selection_bag_of_words_draws_its_codebook_from_the_given_rows_only():
    """The codebook of the bag-of-audio-words candidate comes from the training rows' frames,
    and with one assignment per frame each histogram's shares sum to one."""
    import numpy as np

    rng = np.random.default_rng(0)
    owner = np.repeat(np.arange(6), 20)
    frames = rng.normal(size=(120, 3)).astype(np.float32)
    frames[owner >= 3] += 100.0  # rows 3–5 (not given) live far away
    y = np.arange(6) % 2
    d = bench_selection.Data(
        frames[:6], y, np.array(list("aabbcc")), ["x", "y"], np.ones((6, 2), bool)
    )
    d.frames, d.owner = frames, owner
    H = bench_selection.histograms(d, np.arange(3), 5, 1, np.random.default_rng(1))
    shares = np.expm1(H) / 100
    assert H.shape == (6, 5)
    np.testing.assert_allclose(shares.sum(1), 1.0, rtol=1e-6)
    # every word is a frame of rows 0–2: the far rows' frames all fall on the same nearest word
    assert (shares[3:] > 0).sum(1).max() == 1


@pytest.mark.slow
def test_ray_data_throughput_small(shared_corpora):
    """`bench_scaling --ray-data` on 8 EmoDB clips, in its own process (Ray reads its
    settings when imported): every table row is filled."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'stlser[cluster]'); CI installs it")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "src")])}
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scaling", "--ray-data", "8"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = rows_of(r.stdout, ("task", "engine", "1 worker s"))
    assert [(row[0], row[1]) for row in rows] == [
        (task, engine)
        for task in ("features (frames)", "features (compact)", "predict")
        for engine in ("local", "ray")
    ]
    assert all(row[-1].endswith("%") for row in rows)
    projected = rows_of(r.stdout, ("task", "ms of worker time per audio second"))
    assert len(projected) == 3 and all(float(row[-1].replace(",", "")) > 0 for row in projected)


def test_lld_study_scores_the_epoch_early_stopping_kept_on_validation_speakers(tmp_path):
    """The study's table reads each finished fold's validation UA at the epoch of least
    validation loss (not the best validation UA, not the test UA) and pairs the two frames."""
    import pandas as pd

    from benchmarks import study_lld_frames as st

    def fold(kind: str, seed: int, f: int, loss: list[float], val_ua: list[float], done=True):
        d = tmp_path / f"{kind}_s{seed}" / f"fold_{f:02d}"
        (d / "logs").mkdir(parents=True)
        rows = [
            {"epoch": e, "val_loss": v, "val_ua": u}
            for e, (v, u) in enumerate(zip(loss, val_ua, strict=True))
        ]
        pd.DataFrame(rows).to_csv(d / "logs" / "metrics.csv", index=False)
        if done:
            (d / "model.pt").write_bytes(b"")

    fold("logmel", 0, 0, [1.0, 0.5, 0.7], [0.3, 0.6, 0.9])  # least loss at epoch 1: 60 %
    fold("lld", 0, 0, [1.0, 0.8, 0.4], [0.2, 0.95, 0.7])  # epoch 2: 70 %
    fold("logmel", 0, 1, [1.0], [0.5])
    fold("lld", 0, 1, [1.0], [0.9], done=False)  # still training: not scored
    out = st.table(tmp_path, [0], [0, 1])
    assert "| 0 | 0 | 60.0 (1) | 70.0 (2) | +10.0 |" in out
    assert "| 0 | 1 | 50.0 (0) | not finished |  |" in out
    assert "Paired folds: 1; mean lld − log-mel +10.0" in out


def test_level_columns_are_those_the_gain_moves():
    """On clips and their 3× copies: the columns `level_columns` leaves alone do not move, the
    flagged ones do, and after `relative_level` none does (a gain is a level shift)."""
    import numpy as np

    from benchmarks import benchlib as bl
    from benchmarks import study_level as sl
    from stlser.features.functionals import FunctionalFrontEnd, batch_functionals
    from stlser.featuresets import level_columns

    names = FunctionalFrontEnd("compact+large").names
    clips = []
    for s in range(4):
        rng = np.random.default_rng(s)
        x = bl.speechlike(1.0, rng)
        clips.append(0.3 * x / np.abs(x).max() + 1e-3 * rng.standard_normal(len(x)))
    w = np.stack(clips + [3 * c for c in clips]).astype(np.float32)
    X = batch_functionals(w, np.full(len(w), w.shape[1]), "compact+large").astype(np.float64)
    shift, drop = level_columns(names)
    assert shift.sum() > 200 and drop.sum() > 50
    assert not any(shift[i] or drop[i] for i, n in enumerate(names) if "mfcc" in n)

    def moved(M: np.ndarray) -> np.ndarray:  # mean change in units of the clips' spread
        return np.abs(M[4:] - M[:4]).mean(0) / (M[:4].std(0) + 1e-9)

    raw, rel = moved(X), moved(sl.relative_level(X, names))
    free = ~(shift | drop)
    assert np.median(raw[free]) < 0.01 and np.quantile(raw[free], 0.95) < 0.1
    assert np.median(raw[shift]) > 1.0 and np.median(raw[drop]) > 1.0
    assert np.quantile(rel, 0.95) < 0.1 and np.median(rel[shift]) < 0.01


def test_level_study_chooses_each_corpus_variant_on_the_other_corpora():
    from benchmarks import study_level as sl

    keep, drop = sl.KEPT, sl.DROPPED
    score = {
        (keep, "a"): 50.0, (drop, "a"): 10.0,
        (keep, "b"): 30.0, (drop, "b"): 40.0,
        (keep, "c"): 30.0, (drop, "c"): 40.0,
    }  # fmt: skip
    # a is best with the level kept, yet b and c (which choose for a) prefer it dropped
    assert sl.nested_choice(score, ["a", "b", "c"]) == {"a": drop, "b": keep, "c": keep}


def test_adapt_per_column_counts_are_within_over_between_speaker_variance():
    import numpy as np

    from benchmarks.bench_adapt import per_column_counts

    rng = np.random.default_rng(0)
    spk = np.repeat(np.arange(200), 50).astype(str)
    between = rng.standard_normal((200, 2)) * np.array([1.0, 0.2])  # speaker means
    x = between[np.repeat(np.arange(200), 50)] + rng.standard_normal((10000, 2))  # within: 1
    k = per_column_counts(x, spk)
    assert abs(k[0] - 1.0) < 0.25 and abs(k[1] - 25.0) < 10.0
