"""Run a trained model on anyone's audio: `Pipeline` (waveform → probabilities in one module,
also what `stlser export` writes to ONNX), `Recognizer` (files, bytes, arrays, long recordings,
live streams) and `predict_cli` behind `stlser predict`.

Does not import Lightning: the artefact is read with `stlser.model.load_artefact`. The parts
that do not need torch (result types, decoding, VAD, windowing, batching) live in
`stlser.segmenting`, shared with the torch-free `stlser.onnx_runtime`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stlser import __version__, audio
from stlser.audio import SAMPLE_RATE, AudioError
from stlser.config import FeatureConfig
from stlser.model import STLSER, count_parameters, load_artefact
from stlser.safety import ModelLoadError
from stlser.segmenting import BaseRecognizer, Prediction, Segment, expand_inputs
from stlser.utils import write_text

__all__ = ["Pipeline", "Recognizer", "Prediction", "Segment", "predict_cli", "resolve_model_path"]

#: `stlser predict` without --segments refuses longer files (one forward pass over an hour of
#: audio needs gigabytes; the segments path streams instead).
MAX_CLIP_SECONDS = 600.0
#: Same floor as `stlser.features.STD_FLOOR` (utterance mode divides by a per-clip std).
STD_FLOOR = 1e-5


class Pipeline(nn.Module):
    """16 kHz waveform → class probabilities: LogMel → normalisation → STLSER → softmax.

    ``forward(wave[B, N] float32, lengths[B] int64) -> probs[B, C]``. Normalisation applies the
    training-set global statistics stored in the artefact (modes ``global`` and ``speaker`` —
    an unseen speaker gets the global statistics, as in training); ``utterance`` uses each
    clip's own valid frames; ``none`` passes through. Padded frames stay 0, so a padded batch
    gives each clip's one-by-one result.
    """

    def __init__(
        self,
        model: STLSER,
        feature_config: FeatureConfig,
        normalizer: dict[str, Any],
        labels: list[str],
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from stlser.features import LogMel  # librosa (filter bank): only when building one

        fc = feature_config.resolved()
        if fc.kind not in ("logmel", "mfcc"):
            raise ValueError(
                f"features.kind={fc.kind!r} has no torch front end; only logmel/mfcc models can "
                "run on raw audio"
            )
        if fc.sample_rate != SAMPLE_RATE:
            raise ValueError(
                f"models are trained at {SAMPLE_RATE} Hz, this one says {fc.sample_rate}"
            )
        self.front_end = LogMel(fc)
        self.model = model.eval()
        self.feature_config = fc
        self.labels = [str(x) for x in labels]
        self.meta = dict(meta or {})
        self.norm_mode = str(normalizer.get("mode", "global"))
        if self.norm_mode not in ("none", "global", "speaker", "utterance"):
            raise ValueError(f"unknown normalizer mode {self.norm_mode!r}")
        n = self.front_end.n_features
        mean, std = normalizer.get("mean"), normalizer.get("std")
        if self.norm_mode in ("global", "speaker") and (mean is None or std is None):
            raise ValueError(
                f"normalizer mode {self.norm_mode!r} needs mean and std in the artefact"
            )
        mean = np.zeros(n, np.float32) if mean is None else np.asarray(mean, np.float32).reshape(-1)
        std = np.ones(n, np.float32) if std is None else np.asarray(std, np.float32).reshape(-1)
        if mean.shape != (n,) or std.shape != (n,):
            raise ValueError(f"normalizer has {mean.shape[0]} dims, front end gives {n}")
        self.register_buffer("mean", torch.from_numpy(mean.copy()))
        self.register_buffer("std", torch.from_numpy(np.maximum(std, STD_FLOOR)))
        self.eval()

    @classmethod
    def from_artefact(cls, path: str | os.PathLike) -> Pipeline:
        """Build from a `model.pt` artefact (see docs/design.md)."""
        model, art = load_artefact(path)
        try:
            fc = FeatureConfig(**art["feature_config"])
            if fc.resolved().n_features != art["n_features"]:
                raise ValueError(
                    f"feature config gives {fc.n_features} features, model expects {art['n_features']}"
                )
            meta = {**(art.get("meta") or {}), "source": str(path)}
            return cls(model, fc, art["normalizer"], art["labels"], meta)
        except (TypeError, ValueError, KeyError) as e:
            if isinstance(e, ModelLoadError):
                raise
            raise ModelLoadError(path, f"unusable artefact settings ({e})"[:300]) from None

    @property
    def n_params(self) -> int:
        return count_parameters(self.model)

    def normalize(self, feats: Tensor, frames: Tensor) -> Tensor:
        valid = (
            torch.arange(feats.shape[1], device=feats.device)[None, :] < frames[:, None]
        ).unsqueeze(-1)
        if self.norm_mode == "none":
            return feats
        if self.norm_mode == "utterance":
            m = valid.to(feats.dtype)
            n = m.sum(1, keepdim=True).clamp_min(1.0)
            mean = (feats * m).sum(1, keepdim=True) / n
            var = ((feats - mean) ** 2 * m).sum(1, keepdim=True) / n
            x = (feats - mean) / var.sqrt().clamp_min(STD_FLOOR)
        else:
            x = (feats - self.mean) / self.std
        return torch.where(valid, x, torch.zeros_like(x))

    def forward(self, wave: Tensor, lengths: Tensor) -> Tensor:
        feats, frames = self.front_end(wave, lengths)
        logits = self.model(self.normalize(feats, frames), frames)
        return torch.softmax(logits, dim=-1)

    def export_metadata(self) -> dict[str, str]:
        """String metadata stored in the ONNX file (read back by `OnnxRecognizer`)."""
        from dataclasses import asdict

        keep = ("corpus", "fold", "seed", "val_ua", "best_epoch", "stlser_version")
        return {
            "labels": json.dumps(self.labels),
            "sample_rate": str(SAMPLE_RATE),
            "stlser_version": __version__,
            "feature_config": json.dumps(asdict(self.feature_config)),
            "normalizer_mode": self.norm_mode,
            "n_params": str(self.n_params),
            "model_config": json.dumps(asdict(self.model.cfg)),
            "training": json.dumps({k: self.meta[k] for k in keep if k in self.meta}, default=str),
            "inputs": "wave[B,N] float32 16 kHz mono in [-1,1], right-padded; lengths[B] int64 samples",
            "outputs": "probs[B,C] float32, softmax over labels",
        }


def resolve_model_path(path: str | os.PathLike) -> Path:
    """The model file a user means: a `model.pt`/`.onnx` file, a training run folder holding
    `model.pt`, or a crossval run folder (its first fold, `fold_00/model.pt`)."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "model.pt", p / "fold_00" / "model.pt", p / "model.onnx"):
            if cand.is_file():
                return cand
        raise FileNotFoundError(
            f"{p}: no model.pt, fold_00/model.pt or model.onnx in this folder "
            "(pass a model.pt artefact, a crossval run folder, or an .onnx file)"
        )
    if not p.exists():
        raise FileNotFoundError(f"model {p} not found")
    if p.suffix == ".ckpt":
        raise ValueError(
            f"{p} is a Lightning checkpoint without the feature/normaliser settings; "
            "use the model.pt artefact written beside it (its run folder)"
        )
    return p


class Recognizer(BaseRecognizer):
    """Emotion recognition with a trained model (torch).

    ``Recognizer.load(path)`` → ``.predict(x)``, ``.predict_batch(xs)``, ``.segments(x)``,
    ``.stream(chunks, sample_rate)``; attributes ``labels`` and ``sample_rate`` (16 000).
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline.eval()
        self.labels = list(pipeline.labels)
        self.sample_rate = SAMPLE_RATE
        self.meta = dict(pipeline.meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Any:
        """A `model.pt` artefact, a run/crossval folder (`fold_00/model.pt`) or an `.onnx` file
        (then an `stlser.onnx_runtime.OnnxRecognizer`, which has the same methods)."""
        p = resolve_model_path(path)
        if p.suffix.lower() == ".onnx":
            from stlser.onnx_runtime import OnnxRecognizer

            return OnnxRecognizer(p)
        return cls(Pipeline.from_artefact(p))

    def _run(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.pipeline(torch.from_numpy(wave), torch.from_numpy(lengths)).numpy()

    def __repr__(self) -> str:
        return f"Recognizer(labels={self.labels}, source={self.meta.get('source')!r})"


# ------------------------------------------------------------------------------------ CLI
def _row(
    path: str, labels: list[str], r: Prediction | Segment | None, error: str = ""
) -> dict[str, Any]:
    row: dict[str, Any] = {"path": path, "label": "" if r is None else r.label}
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
    cols = ["path", "label", *[f"prob_{lab}" for lab in labels], "duration"]
    cols += ["start", "end"] if segments else []
    cols += ["error"]
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
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    write_text(out, buf.getvalue())


def _table(rows: list[dict[str, Any]], segments: bool) -> str:
    """Compact human-readable table for stdout."""
    names = [str(r["path"]) for r in rows]
    absolute = {os.path.isabs(n) for n in names}
    common = os.path.commonpath(names) if len(set(names)) > 1 and len(absolute) == 1 else ""
    if common and not Path(common).is_dir():
        common = str(Path(common).parent)
    shown = [os.path.relpath(n, common) if common else n for n in names]
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
            lines.append(f"{name:<{width}}  {span}ERROR: {r['error']}")
            continue
        conf = r[f"prob_{r['label']}"]
        lines.append(f"{name:<{width}}  {span}{r['label']:<12} {conf:5.3f} {r['duration']:8.2f}")
    return "\n".join(lines)


#: The `error` of a `predict --segments` row for a file in which the VAD found no speech.
NO_SPEECH = "no speech detected"


def check_output_file(out: Path, suffixes: tuple[str, ...]) -> None:
    """Refuse, before any work, an output path that could not be written at the end."""
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"output must end in {' or '.join(suffixes)}, got {out.name!r}")
    if out.is_dir():
        raise ValueError(f"output {out} is a folder; give a file name ending in {suffixes[0]}")
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


def predict_cli(
    model: str | os.PathLike,
    inputs: list[str],
    output: str | os.PathLike | None = None,
    segments: bool = False,
) -> int:
    """`stlser predict`: classify files and folders (recursively); one row per file, or per
    speech segment with `segments`. Writes CSV or JSONL by the output suffix, else prints a
    table. Unreadable files are reported on stderr and as rows with an `error`; the others go
    on. Returns 0 if at least one file succeeded, 1 if none did."""
    from tqdm import tqdm

    out = Path(output) if output else None
    if out is not None:
        check_output_file(out, (".csv", ".jsonl"))
    rec = Recognizer.load(model)
    files, missing = expand_inputs(inputs)
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
                segs = list(rec.iter_segments(f))
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
        todo = []
        for i, f in enumerate(files):  # header only: refuse what would not fit in memory
            try:
                meta = audio.info(f)
                seconds = meta.duration
                if seconds <= MAX_CLIP_SECONDS:  # longer: the --segments hint below
                    audio.check_limits(meta, f, MAX_CLIP_SECONDS)
            except AudioError as e:
                fail(i, e)
                continue
            if seconds > MAX_CLIP_SECONDS:
                fail(
                    i,
                    AudioError(
                        f,
                        f"{seconds:.0f} s long; use --segments for recordings "
                        f"over {MAX_CLIP_SECONDS:.0f} s",
                    ),
                )
                continue
            todo.append(i)
        for j, r in rec.iter_predict([files[i] for i in todo], batch_size=16):
            if isinstance(r, AudioError):
                fail(todo[j], r)
                continue
            ok += 1
            done[todo[j]] = [_row(str(files[todo[j]]), rec.labels, r)]
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
    if not files and not missing:
        print("stlser predict: no inputs", file=sys.stderr)
    return 0 if ok else 1
