"""`stlser predict`: classify audio files and folders, write CSV/JSONL or print a table."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import soundfile as sf

from stlser import audio
from stlser.audio import AudioError
from stlser.calibration import UNSURE_BELOW
from stlser.recognizer import Prediction, Segment
from stlser.utils import atomic_path, csv_cell, printable, write_text

#: What writing a ``.parquet`` output needs.
PARQUET_EXTRA = "pip install 'stlser[cluster]' or pip install pyarrow"

#: `stlser predict` without --segments refuses longer files (one forward pass over an hour of
#: audio needs gigabytes; the segments path streams instead).
MAX_CLIP_SECONDS = audio.MAX_CLIP_SECONDS


#: File extensions per libsndfile major format (only the formats this libsndfile has are used).
_EXTENSIONS = {
    "WAV": (".wav",),
    "WAVEX": (".wav",),
    "RF64": (".rf64",),
    "W64": (".w64",),
    "FLAC": (".flac",),
    "OGG": (".ogg", ".oga", ".opus"),
    "MP3": (".mp3",),
    "AIFF": (".aiff", ".aif", ".aifc"),
    "AU": (".au", ".snd"),
    "CAF": (".caf",),
}


def audio_extensions() -> set[str]:
    """Extensions `stlser predict` picks up in folders: the formats libsndfile reads here."""
    have = sf.available_formats()
    return {e for fmt, exts in _EXTENSIONS.items() if fmt in have for e in exts}


def read_input_csv(path: Path) -> tuple[list[Path], list[str] | None]:
    """The clips a CSV lists (a `path` column, relative paths from the CSV's folder) and their
    speakers (a `speaker` column, else None). ValueError names what is missing."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cols = set(rows[0]) if rows else set()
    if "path" not in cols:
        raise ValueError(f"{path}: an input CSV needs a 'path' column (has {sorted(cols)})")
    files = [
        Path(r["path"]) if Path(r["path"]).is_absolute() else path.parent / r["path"] for r in rows
    ]
    speakers = [str(r.get("speaker") or "").strip() for r in rows] if "speaker" in cols else None
    return files, speakers


def expand_inputs(
    inputs: Iterable[str | os.PathLike], speakers: dict[Path, str] | None = None
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders and CSV lists (a `path` column) → (audio files, [(input, reason)] for
    inputs that do not exist). A CSV's `speaker` column fills `speakers` (file → speaker).

    Folders are searched recursively for extensions libsndfile reads (sorted, hidden skipped).
    """
    exts = audio_extensions()
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_file() and p.suffix.lower() == ".csv":
            listed, spk = read_input_csv(p)
            for i, f in enumerate(listed):
                if not f.exists():
                    missing.append((str(f), "no such file"))
                    continue
                files.append(f)
                if spk is not None and speakers is not None:
                    speakers[f] = spk[i]
            continue
        if p.is_dir():
            found = sorted(
                q
                for q in p.rglob("*")
                if q.is_file()
                and q.suffix.lower() in exts
                and not any(part.startswith(".") for part in q.relative_to(p).parts)
            )
            if not found:
                missing.append((str(p), "folder holds no audio files"))
            files += found
        elif p.exists():
            files.append(p)
        else:
            missing.append((str(p), "no such file"))
    return files, missing


def _row(
    path: str, labels: list[str], r: Prediction | Segment | None, error: str = ""
) -> dict[str, Any]:
    row: dict[str, Any] = {"path": path, "label": "" if r is None else r.label}
    row["unsure"] = None if r is None else r.unsure
    for lab in labels:
        row[f"prob_{lab}"] = None if r is None else round(r.probabilities[lab], 6)
    if isinstance(r, Segment):
        row["duration"] = round(r.end - r.start, 3)
        row["start"], row["end"] = round(r.start, 3), round(r.end, 3)
    else:
        row["duration"] = None if r is None else round(r.duration, 3)
    row["error"] = error
    return row


def _write_rows(rows: list[dict[str, Any]], out: Path, labels: list[str], segments: bool) -> None:
    cols = ["path", "label", "unsure", *[f"prob_{lab}" for lab in labels], "duration"]
    cols += ["start", "end"] if segments else []
    cols += ["error"]
    if out.suffix.lower() == ".parquet":
        import pandas as pd

        frame = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
        for c in cols:
            if c not in ("path", "label", "error"):
                frame[c] = pd.to_numeric(frame[c]).astype("float64")
        with atomic_path(out) as tmp:
            frame.to_parquet(tmp, index=False)
        return
    if out.suffix.lower() == ".jsonl":
        lines = []
        for r in rows:
            d = {k: r.get(k) for k in cols if k != "error"}
            if r.get("error"):
                d["error"] = r["error"]
            lines.append(json.dumps(d))
        write_text(out, "".join(line + "\n" for line in lines))
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writerow({c: csv_cell(c) for c in cols})  # header: label names are user data too
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else csv_cell(r.get(k))) for k in cols})
    write_text(out, buf.getvalue())


def _table(rows: list[dict[str, Any]], segments: bool) -> str:
    """Compact human-readable table for stdout."""
    names = [str(r["path"]) for r in rows]
    absolute = {os.path.isabs(n) for n in names}
    common = os.path.commonpath(names) if len(set(names)) > 1 and len(absolute) == 1 else ""
    if common and not Path(common).is_dir():
        common = str(Path(common).parent)
    shown = [printable(os.path.relpath(n, common) if common else n) for n in names]
    width = min(max([len(s) for s in shown] + [4]), 60)
    head = (
        f"{'file':<{width}}  "
        + ("  start     end  " if segments else "")
        + "label         prob   dur(s)"
    )
    lines = [head]
    for r, name in zip(rows, shown, strict=True):
        name = name if len(name) <= width else "…" + name[-(width - 1) :]
        span = (
            f"{r['start']:7.2f} {r['end']:7.2f}  "
            if segments and not r["error"]
            else (" " * 17 if segments else "")
        )
        if r["error"]:
            lines.append(f"{name:<{width}}  {span}ERROR: {printable(r['error'])}")
            continue
        conf = r[f"prob_{r['label']}"]
        label = printable(r["label"])
        note = "  (unsure)" if r["unsure"] else ""
        lines.append(f"{name:<{width}}  {span}{label:<12} {conf:5.3f} {r['duration']:8.2f}{note}")
    return "\n".join(lines)


#: The `error` of a `predict --segments` row for a file in which the VAD found no speech.
NO_SPEECH = "no speech detected"


def check_output_file(out: Path, suffixes: tuple[str, ...]) -> None:
    """Refuse, before any work, an output path that could not be written at the end."""
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"output must end in {' or '.join(suffixes)}, got {out.name!r}")
    if out.is_dir():
        raise ValueError(f"output {out} is a folder; give a file name ending in {suffixes[0]}")
    if out.exists() and not out.is_file():
        raise ValueError(
            f"output {out} exists and is not a regular file (a device, pipe or socket); "
            "give a file name"
        )
    parent = out.parent if str(out.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"output {out}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"output {out}: folder {probe} is not writable")
    if out.exists() and not os.access(out, os.W_OK):
        raise ValueError(f"output {out} exists and is not writable")


def load_recognizer(model: str | os.PathLike | None) -> Any:
    """The recognizer for `stlser predict`/`serve`: an `.onnx` file (and the shipped model,
    whose ONNX twin is used) runs on onnxruntime without importing torch, which keeps the
    start-up of a one-clip prediction short; anything else loads through torch."""
    from stlser.recognizer import describe_model, resolve_model_path

    p = resolve_model_path(model, shipped=".onnx")
    if p.suffix.lower() == ".onnx":
        from stlser.onnx_runtime import OnnxRecognizer

        rec = OnnxRecognizer(p)
    else:
        from stlser.inference import Recognizer

        rec = Recognizer.load(p)
    print(f"stlser: {describe_model(model, p)}", file=sys.stderr)  # which model, once loaded
    return rec


def _speaker_groups(
    files: list[Path], todo: list[int], adapt: str, speakers: dict[Path, str]
) -> dict[str, list[int]]:
    """Indices of `todo` by speaker: the file's folder (``folder``) or its CSV speaker."""
    groups: dict[str, list[int]] = {}
    for i in todo:
        key = str(files[i].parent) if adapt == "folder" else speakers.get(files[i], "")
        groups.setdefault(key, []).append(i)
    return groups


def _adapted(rec: Any, name: str, clips: list[Path], save_stats: Path | None, say: Any) -> Any:
    """`rec` adapted to one speaker from its clips (global statistics if too few, or if a clip
    cannot be read), saying which on stderr; the statistics saved under `save_stats`."""
    if not name:
        say(f"stlser predict: {len(clips)} clip(s) without a speaker: global statistics")
        return rec
    try:
        stats = rec.speaker_stats(clips, speaker=name)
    except AudioError as e:
        say(f"stlser predict: speaker {name!r}: global statistics ({e})")
        return rec
    if save_stats is not None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip("/"))
        stats.save(save_stats / f"{safe or 'speaker'}.json")
    adapted = rec.adapt(stats)
    how = "adapted" if adapted.speaker is not None else f"global statistics ({stats.why_not()})"
    say(f"stlser predict: speaker {name!r}: {stats.clips} clips, {stats.seconds:.1f} s → {how}")
    return adapted


def predict_cli(
    model: str | os.PathLike,
    inputs: list[str],
    output: str | os.PathLike | None = None,
    segments: bool = False,
    labels: list[str] | None = None,
    adapt: str = "none",
    speaker_stats: str | os.PathLike | None = None,
    save_stats: str | os.PathLike | None = None,
    engine: str = "local",
    address: str | None = None,
) -> int:
    """`stlser predict`: classify files, folders (recursively) and CSV lists; one row per file,
    or per speech segment with `segments`. With `adapt` (``folder``: each folder's clips are
    one speaker; ``speaker``: a CSV's `speaker` column) or saved `speaker_stats`, each speaker's
    clips are normalised with that speaker's statistics (`stlser.adapt`). Writes CSV, JSONL or
    Parquet by the output suffix, else prints a table. Unreadable files are reported on stderr
    and as rows with an `error`; the others go on. Returns 0 if at least one file succeeded, 1
    if none did. ``engine="ray"`` classifies whole clips on Ray tasks (`stlser.raydata`; no
    segments or adaptation)."""
    from tqdm import tqdm

    from stlser.adapt import SpeakerStats

    out = Path(output) if output else None
    if out is not None:
        check_output_file(out, (".csv", ".jsonl", ".parquet"))
        if out.suffix.lower() == ".parquet" and importlib.util.find_spec("pyarrow") is None:
            raise ValueError(f"output {out.name}: writing Parquet needs pyarrow ({PARQUET_EXTRA})")
    if engine == "ray":
        if segments or adapt != "none" or speaker_stats or save_stats:
            raise ValueError(
                "--engine ray classifies whole clips: --segments, --adapt, --speaker-stats and "
                "--save-stats need --engine local"
            )
        return _predict_ray(model, inputs, out, labels, address)
    if adapt not in ("none", "folder", "speaker", "recording"):
        raise ValueError(f"--adapt must be none, folder, speaker or recording, not {adapt!r}")
    if adapt != "none" and speaker_stats:
        raise ValueError("give --adapt or --speaker-stats, not both")
    if segments and adapt in ("folder", "speaker"):
        raise ValueError("with --segments, --adapt recording (each recording is one speaker)")
    if adapt == "recording" and not segments:
        raise ValueError("--adapt recording needs --segments")
    if save_stats and adapt in ("none", "recording"):
        raise ValueError("--save-stats needs --adapt folder or --adapt speaker")
    stats_dir = Path(save_stats) if save_stats else None
    if stats_dir is not None:
        stats_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(stats_dir, os.W_OK):
            raise ValueError(f"--save-stats: folder {stats_dir} is not writable")
    fixed = SpeakerStats.load(speaker_stats) if speaker_stats else None
    speakers: dict[Path, str] = {}
    csv_inputs = [i for i in inputs if str(i).lower().endswith(".csv") and Path(i).is_file()]
    if adapt == "speaker":
        if not csv_inputs or any(read_input_csv(Path(c))[1] is None for c in csv_inputs):
            raise ValueError("--adapt speaker needs a CSV input with 'path' and 'speaker' columns")
    rec = load_recognizer(model).restrict(labels)
    if (adapt != "none" or fixed is not None) and not rec.adaptable:
        from stlser.recognizer import NOT_ADAPTABLE

        raise ValueError(NOT_ADAPTABLE)
    if fixed is not None:
        rec = rec.adapt(fixed)
    files, missing = expand_inputs(inputs, speakers)
    rows: list[dict[str, Any]] = []
    for item, reason in missing:
        print(f"stlser predict: {item}: {reason}", file=sys.stderr)
        rows.append(_row(item, rec.labels, None, reason))
    ok = 0
    done: dict[int, list[dict[str, Any]]] = {}  # file index → rows, written in input order
    bar = tqdm(total=len(files), file=sys.stderr, unit="file", disable=len(files) < 5, leave=False)

    def fail(i: int, e: AudioError) -> None:
        bar.write(f"stlser predict: skipped {e}", file=sys.stderr)
        done[i] = [_row(str(files[i]), rec.labels, None, e.reason)]
        bar.update(1)

    if segments:
        for i, f in enumerate(files):
            try:
                segs = list(rec.iter_segments(f, adapt=adapt == "recording"))
            except AudioError as e:
                fail(i, e)
                continue
            if not segs:  # a row saying so; not counted as classified
                bar.write(f"stlser predict: {f}: no speech detected", file=sys.stderr)
                done[i] = [_row(str(f), rec.labels, None, NO_SPEECH)]
                bar.update(1)
                continue
            ok += 1
            done[i] = [_row(str(f), rec.labels, s) for s in segs]
            bar.update(1)
    else:
        from stlser.inference import clip_problem

        todo = []
        for i, f in enumerate(files):  # header only: refuse what would not fit in memory
            problem = clip_problem(f, MAX_CLIP_SECONDS)
            if problem is not None:
                fail(i, problem)
                continue
            todo.append(i)
        groups = _speaker_groups(files, todo, adapt, speakers) if adapt != "none" else {"": todo}
        for name, idx in groups.items():
            who = rec
            if adapt != "none":
                who = _adapted(
                    rec,
                    name,
                    [files[i] for i in idx],
                    stats_dir,
                    lambda m: bar.write(m, file=sys.stderr),
                )
            for j, r in who.iter_predict([files[i] for i in idx], batch_size=16):
                if isinstance(r, AudioError):
                    fail(idx[j], r)
                    continue
                ok += 1
                done[idx[j]] = [_row(str(files[idx[j]]), rec.labels, r)]
                bar.update(1)
    rows += [r for i in sorted(done) for r in done[i]]
    bar.close()
    if out is not None:
        _write_rows(rows, out, rec.labels, segments)
        print(
            f"{ok}/{len(files) + len(missing)} files classified; {len(rows)} rows → {out}",
            file=sys.stderr,
        )
    elif rows:
        print(_table(rows, segments))
        if any(r["unsure"] for r in rows if not r["error"]):
            print(f"(unsure: top probability below {UNSURE_BELOW})", file=sys.stderr)
    if not files and not missing:
        print("stlser predict: no inputs", file=sys.stderr)
    return 0 if ok else 1


def _predict_ray(
    model: str | os.PathLike,
    inputs: list[str],
    out: Path | None,
    labels: list[str] | None,
    address: str | None,
) -> int:
    """`predict_cli` on Ray (`stlser.raydata.predict_files`): the same rows, in input
    order. With an output file, finished shards wait in ``.<output name>.parts`` beside it
    until the output is written, so a rerun after an interruption skips them."""
    from stlser import raydata
    from stlser.recognizer import Prediction, resolve_model_path

    rec = load_recognizer(model).restrict(labels)  # bad model or labels: refused here
    files, missing = expand_inputs(inputs)
    rows = []
    for item, reason in missing:
        print(f"stlser predict: {item}: {reason}", file=sys.stderr)
        rows.append(_row(item, rec.labels, None, reason))
    if out is not None:
        parts = out.parent / f".{out.name}.parts"
    else:
        parts = Path(tempfile.mkdtemp(prefix="stlser-predict-"))
    ok, written = 0, False
    try:
        results = raydata.predict_files(
            resolve_model_path(model, shipped=".onnx"),
            files,
            labels,
            parts,
            address=address,
            max_seconds=MAX_CLIP_SECONDS,
        )
        for f, (_, label, probs, duration, error) in zip(files, results, strict=True):
            if error:
                print(f"stlser predict: skipped {f}: {error}", file=sys.stderr)
                rows.append(_row(str(f), rec.labels, None, error))
                continue
            ok += 1
            unsure = max(probs) < UNSURE_BELOW
            p = Prediction(label, dict(zip(rec.labels, probs, strict=True)), duration, unsure)
            rows.append(_row(str(f), rec.labels, p))
        if out is not None:
            _write_rows(rows, out, rec.labels, False)
            written = True
            print(
                f"{ok}/{len(files) + len(missing)} files classified; {len(rows)} rows → {out}",
                file=sys.stderr,
            )
        elif rows:
            print(_table(rows, False))
    finally:
        if out is None or written:  # else kept: a rerun skips the finished shards
            shutil.rmtree(parts, ignore_errors=True)
    if not files and not missing:
        print("stlser predict: no inputs", file=sys.stderr)
    return 0 if ok else 1
