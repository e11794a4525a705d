"""A miniature corpus and configs whose predictions are committed (tests/data/equivalence/), so
that a change to the recognisers or the evaluation driver can be checked to leave every kind's
predictions as they were (tests/test_equivalence.py; regenerate with
``python -m tests.equivalence`` only for an intended change, and say why in the commit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

DATA = Path(__file__).parent / "data" / "equivalence"
LABELS = ["angry", "neutral", "sad"]
SPEAKERS = ["s1", "s2", "s3", "s4", "s5"]

#: Largest change of a committed score a test accepts: the float32 fits round differently on
#: hosts with other SIMD units (an AVX-512 host moves the expert systems' probabilities by up
#: to 8.4e-4 from those committed on an AVX2 host); an intended change moves them by far more.
TOLERANCE = 2e-3
#: kind → config overrides (the data section is added by :func:`overrides`)
SYSTEMS: dict[str, list[str]] = {
    "expert_select": [
        "model.kind=expert",
        "model.functionals=[egemaps, is09]",
        "model.l2_mode=select",
        "split.val_speakers=1",
    ],
    "expert_average": [
        "model.kind=expert",
        "model.functionals=[egemaps, is09]",
        "model.l2_mode=average",
        "model.speeds=[0.9, 1.1]",
        "split.val_speakers=2",
    ],
    "svm": ["split.val_speakers=1"],
    "network": [
        "model.kind=network",
        "model.channels=[4, 8]",
        "model.pool_time=[2, 2]",
        "model.pool_freq=[2, 2]",
        "model.d_lstm=8",
        "model.stl_layers=1",
        "model.stl_ff=16",
        "model.stl_heads=2",
        "train.max_epochs=2",
        "train.patience=1",
        "train.batch_size=8",
        "train.progress=false",
        "split.val_speakers=1",
        "split.folds=[0, 1]",
    ],
}


def clip(label: str, speaker: int, k: int) -> np.ndarray:
    """0.8 s of a harmonic tone: pitch and modulation say the class, a shift the speaker."""
    sr = 16_000
    rng = np.random.default_rng(1000 * speaker + 10 * LABELS.index(label) + k)
    base = {"angry": 260.0, "neutral": 170.0, "sad": 120.0}[label] * (1 + 0.08 * speaker)
    f0 = base * (1 + 0.2 * rng.standard_normal())
    t = np.arange(int(0.8 * sr)) / sr
    vib = {"angry": 6.0, "neutral": 2.0, "sad": 1.0}[label]
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.02 * np.sin(2 * np.pi * vib * t))) / sr
    x = sum(np.sin(h * phase) / h for h in range(1, 6))
    am = {"angry": 0.9, "neutral": 0.5, "sad": 0.3}[label]
    x = am * x / np.max(np.abs(x)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    x = x + 0.3 * rng.standard_normal(t.size)
    return (0.5 * x).astype(np.float32)


def build(root: Path, per_class: int = 3) -> Path:
    """The corpus as WAV files plus a CSV (utt_id,path,label,speaker) → the CSV's path."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["utt_id,path,label,speaker"]
    for si, spk in enumerate(SPEAKERS):
        for lab in LABELS:
            for k in range(per_class):
                p = root / f"{spk}_{lab}_{k}.wav"
                sf.write(p, clip(lab, si, k), 16_000, subtype="PCM_16")
                rows.append(f"{p.stem},{p},{lab},{spk}")
    csv = root / "corpus.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def overrides(system: str, csv: Path, cache: Path) -> list[str]:
    return [
        "data.corpus=csv",
        f"data.root={csv}",
        f"cache_dir={cache}",
        "seed=0",
        "train.jobs=1",
        "train.num_threads=1",
        *SYSTEMS[system],
    ]


def run(system: str, work: Path) -> Path:
    """Cross-validate `system` on the corpus through the command line → its run folder."""
    from stlser.cli import main

    csv = build(work / "corpus") if not (work / "corpus" / "corpus.csv").exists() else None
    csv = csv or work / "corpus" / "corpus.csv"
    out = work / system
    argv = ["baseline" if system == "svm" else "crossval", "-o", str(out)]
    for o in overrides(system, csv, work / "cache"):
        argv += ["--set", o]
    assert main(argv) == 0
    return out


def assert_committed(system: str, out: Path) -> None:
    """The run folder `out` of `system` holds the committed predictions (scores to
    :data:`TOLERANCE`, the same predicted labels)."""
    import numpy as np
    import pandas as pd

    got = pd.read_csv(out / "predictions.csv", dtype={"speaker": str})
    want = pd.read_csv(DATA / f"{system}.csv")
    assert got["utt_id"].tolist() == want["utt_id"].tolist()
    assert got["fold"].tolist() == want["fold"].tolist()
    cols = columns(system)
    err = np.abs(got[cols].to_numpy(float) - want[cols].to_numpy(float)).max()
    assert err < TOLERANCE, f"{system}: predictions moved by {err:.2e}"
    assert got["pred"].tolist() == want["pred"].tolist()


def columns(system: str) -> list[str]:
    """The prediction columns compared: probabilities, or the SVM's decision scores."""
    prefix = "score_" if system == "svm" else "prob_"
    return [prefix + lab for lab in LABELS]


if __name__ == "__main__":
    import sys
    import tempfile

    import pandas as pd

    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for system in sys.argv[1:] or list(SYSTEMS):
            out = run(system, Path(tmp))
            p = pd.read_csv(out / "predictions.csv", dtype={"speaker": str})
            keep = ["utt_id", "fold", "label", "pred", *columns(system)]
            p[keep].to_csv(DATA / f"{system}.csv", index=False, float_format="%.6f")
            print(system, "written", len(p))
