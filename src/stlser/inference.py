"""Run a trained model of any kind on anyone's audio.

    from stlser.inference import Recognizer
    rec = Recognizer.load("base")          # or a model.pt, a run folder, an exported .onnx
    rec.predict("clip.wav").label

`Recognizer.load` asks the artefact's kind (`stlser.kinds`) for its runtime; every runtime has
the methods of `stlser.recognizer.BaseRecognizer` (``predict``, ``predict_batch``,
``iter_predict``, ``segments``, ``iter_segments``, ``stream``, ``restrict``). An ``.onnx`` file
gets `stlser.onnx_runtime.OnnxRecognizer`, which needs no torch. `stlser predict` is
`stlser.cli.predict`.
"""

from __future__ import annotations

import os

from stlser import audio
from stlser.audio import AudioError
from stlser.recognizer import BaseRecognizer, Prediction, Segment, resolve_model_path

__all__ = ["Prediction", "Recognizer", "Segment", "clip_problem", "resolve_model_path"]


def clip_problem(
    path: str | os.PathLike, max_seconds: float = audio.MAX_CLIP_SECONDS
) -> AudioError | None:
    """Why a file cannot be classified as one clip, from its header alone (None: it can be
    decoded; decoding may still fail): unreadable, a rate below the minimum, too large, or
    longer than `max_seconds` (then the error says to use ``--segments``)."""
    try:
        meta = audio.info(path)
        if meta.duration <= max_seconds:
            audio.check_limits(meta, path, max_seconds)
    except AudioError as e:
        return e
    if meta.duration > max_seconds:
        return AudioError(
            path,
            f"{meta.duration:.0f} s long; use --segments for recordings over {max_seconds:.0f} s",
        )
    return None


class Recognizer:
    """The loader of every kind's runtime: ``Recognizer.load(path)``."""

    @staticmethod
    def load(path: str | os.PathLike | None = None) -> BaseRecognizer:
        """A `model.pt` artefact of any kind, a run or crossval folder (`fold_00/model.pt`),
        ``base`` (the general model shipped in the package; the default) or an `.onnx` file."""
        p = resolve_model_path(path)
        if p.suffix.lower() == ".onnx":
            from stlser.onnx_runtime import OnnxRecognizer

            return OnnxRecognizer(p)
        from stlser import kinds

        kind, art, p = kinds.read(p)
        return kind.recognizer(p, art)
