"""Feature extraction speed: stlser's log-mel front end and disk cache against the authors'
librosa recipe, on EmoDB (or the built-in synthetic corpus when EmoDB is absent).

    python -m benchmarks.bench_features [--quick]

Rows, all in one run on the same files (OS page cache warm for every method):
* stlser ``load_features`` with a fresh cache directory (cold: decode + log-mel + write .npy)
  and with the filled cache (cached: read .npy), with 1 and 2 worker processes;
* stlser with the ``authors`` preset (n_fft 2048, hop 512, 10 s), cold, 1 worker;
* the authors' recipe as their repository does it: per file ``librosa.load(path, sr=16000)``,
  pad/cut to 10 s, ``librosa.feature.melspectrogram(y=y, sr=16000, n_mels=40)`` (librosa
  defaults: n_fft 2048, hop 512), ``np.log``, then a ``StandardScaler`` fitted over all frames
  and applied.

× real time = seconds of audio (unpadded) / wall seconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import benchlib as bl

SIZES = {
    # files: 0 = the whole corpus; synth_*: the fallback corpus when EmoDB is absent
    "full": {"files": 0, "reps": 3, "synth_speakers": 4, "synth_per_class": 25},
    "quick": {"files": 40, "reps": 2, "synth_speakers": 2, "synth_per_class": 4},
}
GOAL_COLD = 200.0
GOAL_CACHED = 2000.0
#: Added before the log: zero-padded frames have mel power 0 and np.log(0) = -inf, which the
#: scaler cannot take. stlser's `authors` preset uses the same floor. It costs nothing.
LOG_FLOOR = 1e-6


def get_corpus(files: int, synth_speakers: int, synth_per_class: int, tmp: Path) -> tuple[Any, str]:
    """(manifest DataFrame, description): EmoDB if present, else a synthetic corpus."""
    from stlser.corpora import build_manifest, read_manifest

    root = bl.corpus_root("emodb")
    if root is not None:
        df, _ = build_manifest("emodb", root)
        what = f"EmoDB at {root}"
    else:
        from stlser import synth

        manifest = synth.generate(
            tmp / "synth",
            speakers=synth_speakers,
            per_class=synth_per_class,
            seed=0,
            progress=False,
        )
        df = read_manifest(manifest)
        what = (
            f"synthetic corpus (stlser.synth.generate, {synth_speakers} speakers × 4 classes × "
            f"{synth_per_class}; EmoDB not found)"
        )
    df = df.sort_values("utt_id").reset_index(drop=True)
    if files and files < len(df):
        df = df.iloc[:files].reset_index(drop=True)
        what += f", first {files} files"
    return df, what


def authors_recipe(paths: list[str]) -> np.ndarray:
    """The authors' feature pipeline; returns the standardised [N, frames, 40] array."""
    import librosa
    from sklearn.preprocessing import StandardScaler

    sr, target = 16000, 10 * 16000
    feats = []
    for p in paths:
        y, _ = librosa.load(p, sr=sr)
        y = librosa.util.fix_length(y, size=target)  # pad/cut to 10 s
        s = librosa.feature.melspectrogram(y=y, sr=sr, n_mels=40)  # [40, 313]
        feats.append(np.log(s + LOG_FLOOR).T)
    x = np.stack(feats)
    scaler = StandardScaler().fit(x.reshape(-1, x.shape[-1]))
    return scaler.transform(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def _stlser(df: Any, cache_dir: Path | None, workers: int, preset: str = "default") -> int:
    from stlser.config import FeatureConfig
    from stlser.features import load_features

    out = load_features(df, FeatureConfig(preset=preset), cache_dir, workers, progress=False)
    return len(out)


def main(quick: bool = False, **overrides: Any) -> str:
    """Run the feature benchmark; return its markdown section."""
    z = bl.sizes(SIZES, quick, overrides)
    load = bl.load_text()
    with tempfile.TemporaryDirectory(prefix="stlser-bench-feat-") as td:
        tmp = Path(td)
        df, what = get_corpus(z["files"], z["synth_speakers"], z["synth_per_class"], tmp)
        paths = df["path"].astype(str).tolist()
        audio_s = float(df["duration"].astype(float).sum())
        for p in paths:  # warm the OS page cache so every method reads from memory
            Path(p).read_bytes()
        import librosa  # noqa: F401  (import and first-call JIT outside the timed region)

        authors_recipe(paths[:1])
        _stlser(df.iloc[:1], None, 1)
        reps = z["reps"]
        rows: list[tuple[str, str, str, list[float]]] = []
        counter = iter(range(10**6))

        def cold(workers: int, preset: str = "default") -> None:
            _stlser(df, tmp / f"cache{next(counter)}", workers, preset)

        for w in (1, 2):
            rows.append(
                ("stlser log-mel 25/10 ms", str(w), "cold", bl.repeat(lambda w=w: cold(w), reps, 0))
            )
        filled = tmp / "filled"
        _stlser(df, filled, 2)
        for w in (1, 2):
            t = bl.repeat(lambda w=w: _stlser(df, filled, w), reps, 1)
            rows.append(("stlser log-mel 25/10 ms", str(w), "cached", t))
        t = bl.repeat(lambda: cold(1, "authors"), reps, 0)
        rows.append(("stlser, `authors` preset (2048/512, 10 s)", "1", "cold", t))
        t_auth = bl.repeat(lambda: authors_recipe(paths), reps, 0)
        rows.append(("authors' recipe (librosa + StandardScaler)", "1", "none", t_auth))

    auth_med = float(np.median(t_auth))
    table_rows = []
    for name, workers, cache, t in rows:
        s = bl.stats(t)
        goal = (
            GOAL_CACHED
            if cache == "cached"
            else GOAL_COLD
            if name.startswith("stlser log")
            else None
        )
        xrt = audio_s / s["median"]
        verdict = "-" if goal is None else f"≥ {goal:.0f}×: {'met' if xrt >= goal else 'NOT met'}"
        table_rows.append(
            [
                name,
                workers,
                cache,
                bl.fmt(s["min"]),
                bl.fmt(s["median"]),
                bl.fmt(audio_s / s["min"]),
                bl.fmt(xrt),
                bl.fmt(auth_med / s["median"]),
                verdict,
            ]
        )
    headers = [
        "method",
        "workers",
        "feature cache",
        "min s",
        "median s",
        "× real time (best)",
        "× real time (median)",
        "speed-up vs authors (median)",
        "goal (on median)",
    ]
    intro = f"""
Corpus: {what}: {len(df)} files, {audio_s:.0f} s ({audio_s / 3600:.2f} h) of audio.
{reps} repetitions per row (cold rows use a fresh cache directory each time); the audio files are
in the OS page cache for every method. `cold` = decode + features + write the `.npy` cache;
`cached` = read the `.npy` cache (what every training run after the first does). The authors'
recipe pads/cuts every clip to 10 s before the mel spectrogram (as stlser's `authors` preset
does) and takes `np.log(S + {LOG_FLOOR:g})` (plain `np.log` gives -inf on the zero padding).
Load average at start: {load}.
"""
    return bl.section("Feature extraction", intro, bl.md_table(headers, table_rows), quick)


def cli(argv: list[str] | None = None) -> None:
    bl.cli(main, __doc__, argv)


if __name__ == "__main__":
    cli()
