"""Torch-free runtime for an exported model: numpy + onnxruntime (+ soundfile/soxr for decoding).

    from stlser.onnx_runtime import OnnxRecognizer
    rec = OnnxRecognizer("model.onnx")
    rec.predict("clip.wav").label

`OnnxRecognizer` has the methods of `stlser.inference.Recognizer` (predict, predict_batch,
segments, stream), all from `stlser.recognizer`. Importing this module never imports torch
(checked by tests/test_export.py), so a deployment needs only
``numpy onnxruntime soundfile soxr`` and the stlser package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from stlser.adapt import decode_prior
from stlser.recognizer import SAMPLE_RATE, BaseRecognizer, Prediction, Segment
from stlser.safety import ModelLoadError, ModelRunError

__all__ = ["OnnxRecognizer", "Prediction", "Segment", "read_metadata"]


#: Metadata keys of the answer settings (`stlser.calibration`), JSON-encoded.
ANSWER_KEYS = ("temperature", "default_labels")


def read_metadata(session: Any) -> dict[str, str]:
    """The string metadata `stlser.export.export_onnx` stored in the graph."""
    return dict(session.get_modelmeta().custom_metadata_map)


class OnnxRecognizer(BaseRecognizer):
    """Emotion recognition with an exported `.onnx` graph (wave, lengths → probs).

    `threads` sets onnxruntime's intra-op threads (None: its default, one per core).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"ONNX model {p} not found")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ModelLoadError(p, f"not a readable ONNX model ({first})") from None
        self.meta: dict[str, Any] = read_metadata(self.session)
        names = [i.name for i in self.session.get_inputs()]
        #: graphs over openSMILE functionals take them computed here first (a model over
        #: stlser's own sets exports one graph from the waveform instead)
        self.sets: list[str] = []
        if names == ["functionals"]:
            from stlser import featuresets

            try:
                self.sets = [str(s) for s in json.loads(self.meta["functionals"])]
            except (KeyError, ValueError, TypeError) as e:
                raise ModelLoadError(p, f"malformed stlser metadata ({e})"[:300]) from None
            if any(featuresets.is_own(s) for s in self.sets):
                raise ModelLoadError(
                    p,
                    f"a graph over functionals {self.sets} mixes stlser's own sets with openSMILE's:"
                    " this runtime computes openSMILE's only; load the model.pt with Recognizer",
                )
            featuresets.require_opensmile(f"{p.name} (a graph over openSMILE functionals)")
            names = ["wave", "lengths"]
        if names != ["wave", "lengths"] or "labels" not in self.meta:
            raise ModelLoadError(
                p, f"not an stlser export (inputs {names}, metadata {sorted(self.meta)[:10]})"
            )
        try:
            labels = json.loads(self.meta["labels"])
            self.sample_rate = int(self.meta.get("sample_rate", SAMPLE_RATE))
        except (ValueError, TypeError) as e:
            raise ModelLoadError(p, f"malformed stlser metadata ({e})"[:300]) from None
        if not isinstance(labels, list) or not labels:
            raise ModelLoadError(p, "malformed stlser metadata (labels is not a non-empty list)")
        self.labels = [str(x) for x in labels]
        out = self.session.get_outputs()
        width = out[0].shape[-1] if out and out[0].shape else None
        if isinstance(width, int) and width != len(self.labels):
            raise ModelLoadError(
                p,
                f"the graph gives {width} probabilities but its metadata names {len(self.labels)} labels",
            )
        if self.sample_rate != SAMPLE_RATE:
            raise ModelLoadError(
                p, f"graph expects {self.sample_rate} Hz; this runtime feeds {SAMPLE_RATE} Hz"
            )
        self.meta["source"] = str(p)
        try:
            self._answer_with({k: json.loads(self.meta.get(k) or "null") for k in ANSWER_KEYS})
        except (ValueError, TypeError, AttributeError) as e:
            raise ModelLoadError(p, f"malformed stlser metadata ({e})"[:300]) from None
        # a graph over stlser's own sets with the speaker-statistics inputs and the
        # functionals output can be adapted to a speaker (`BaseRecognizer.adapt`)
        outs = [o.name for o in out]
        stats = {i.name: i.shape for i in self.session.get_overridable_initializers()}
        if "functionals" in outs and {"stats_mean", "stats_std"} <= set(stats):
            try:
                from stlser.featuresets import stats_names

                sets = [str(s) for s in json.loads(self.meta["functionals"])]
                relative = self.meta.get("functionals_level") == "relative"
                self.functional_sets = stats_names(sets, relative)  # as the torch recognizer's
                self.functionals_dim = int(stats["stats_mean"][0])
            except (KeyError, ValueError, TypeError, IndexError):
                self.functional_sets = None
            if self.functional_sets is not None and "global_stats" in self.meta:
                try:
                    self.global_stats = decode_prior(
                        self.meta["global_stats"], self.functionals_dim
                    )
                except ValueError as e:
                    raise ModelLoadError(p, f"malformed stlser metadata ({e})"[:300]) from None

    def _feeds(self, wave: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"wave": wave, "lengths": lengths}
        if self.speaker is not None:
            feeds["stats_mean"] = np.asarray(self.speaker.mean, np.float32)
            feeds["stats_std"] = np.asarray(self.speaker.std, np.float32)
        return feeds

    def _run(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if self.sets:
            from stlser import smile

            x = smile.batch(wave, lengths, self.sets, self.sample_rate)
            return self._session_run({"functionals": x})
        return self._session_run(self._feeds(wave, lengths))

    def _functionals(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if not self.adaptable:
            return super()._functionals(wave, lengths)
        return self._session_run({"wave": wave, "lengths": lengths}, "functionals")

    def _session_run(self, feeds: dict[str, np.ndarray], output: str = "probs") -> np.ndarray:
        """`session.run`; onnxruntime's own exceptions (Fail, RuntimeException, InvalidArgument,
        ... — plain Exceptions) become a ModelRunError naming the file, so `stlser predict`
        prints one line (exit 2) and the service a JSON error, never a traceback."""
        try:
            (probs,) = self.session.run([output], feeds)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ModelRunError(self.meta.get("source", "<onnx>"), first) from None
        probs = np.asarray(probs)
        if probs.ndim != 2 or probs.shape[0] != len(next(iter(feeds.values()))):
            raise ModelRunError(
                self.meta.get("source", "<onnx>"),
                f"output {output} of shape {probs.shape} is not [B, ·]",
            )
        return probs

    def __repr__(self) -> str:
        return f"OnnxRecognizer(labels={self.labels}, source={self.meta.get('source')!r})"
