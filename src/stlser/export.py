"""Export a trained model to one ONNX graph: 16 kHz waveform → class probabilities.

The graph is `stlser.inference.Pipeline`: the log-mel front end (DFT as conv1d), the training-set
normalisation, the network and the softmax, with a dynamic batch and a dynamic number of samples:

    inputs   wave[B, N] float32 (mono, 16 kHz, right-padded), lengths[B] int64 (samples)
    output   probs[B, C] float32

Metadata (``metadata_props``): labels (JSON), sample_rate, stlser_version, feature_config
(JSON), normalizer_mode, n_params, model_config, training facts. `stlser.onnx_runtime` runs it
without torch.

The default exporter is torch.export (``dynamo=True``); ``dynamo=False`` uses the legacy
TorchScript tracer with ``dynamic_axes``. Both give a graph equal to torch at every length
(tests/test_export.py); the export checks itself against torch at two lengths not seen while
tracing and refuses to write a graph that disagrees.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stlser.inference import Pipeline, resolve_model_path
from stlser.recognizer import MIN_BATCH_SAMPLES, SAMPLE_RATE
from stlser.utils import atomic_path

#: Largest |probability difference| between torch and onnxruntime the export accepts.
CHECK_TOLERANCE = 1e-4
OPSET = 18


def _example(b: int, seconds: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([int(s * SAMPLE_RATE) for s in seconds][:b], dtype=torch.int64)
    wave = 0.1 * torch.randn(b, int(lengths.max()), generator=g)
    return wave, lengths


def _to_proto(pipeline: Pipeline, dynamo: bool, verbose: bool) -> Any:
    """Trace the pipeline → onnx.ModelProto (exporter chatter silenced unless `verbose`)."""
    wave, lengths = _example(2, [3.0, 2.0], seed=0)
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    if not verbose:  # "torchvision is not installed. Skipping ..." and friends
        onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), quiet:
            warnings.simplefilter("ignore")
            return _trace(pipeline, wave, lengths, dynamo, verbose)
    finally:
        onnx_log.setLevel(level)


def _trace(
    pipeline: Pipeline, wave: torch.Tensor, lengths: torch.Tensor, dynamo: bool, verbose: bool
) -> Any:
    import onnx

    names = {"input_names": ["wave", "lengths"], "output_names": ["probs"]}
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=4096)
        samples = torch.export.Dim("samples", min=MIN_BATCH_SAMPLES)
        prog = torch.onnx.export(
            pipeline,
            (wave, lengths),
            None,
            dynamo=True,
            verbose=verbose,
            opset_version=OPSET,
            dynamic_shapes={"wave": {0: batch, 1: samples}, "lengths": {0: batch}},
            optimize=True,
            external_data=False,
            **names,
        )
        return prog.model_proto
    buf = io.BytesIO()
    torch.onnx.export(
        pipeline,
        (wave, lengths),
        buf,
        dynamo=False,
        verbose=verbose,
        opset_version=17,
        dynamic_axes={
            "wave": {0: "batch", 1: "samples"},
            "lengths": {0: "batch"},
            "probs": {0: "batch"},
        },
        **names,
    )
    return onnx.load_from_string(buf.getvalue())


def check_against_torch(
    pipeline: Pipeline, onnx_bytes: bytes, seconds: list[float], seed: int = 1
) -> float:
    """Max |p_torch - p_onnx| on one random padded batch of clips of the given lengths."""
    import onnxruntime as ort

    wave, lengths = _example(len(seconds), seconds, seed)
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["probs"], {"wave": wave.numpy(), "lengths": lengths.numpy()})
    with torch.inference_mode():
        ref = pipeline(wave, lengths).numpy()
    return float(np.abs(got - ref).max())


def export_onnx(
    model_path: str | os.PathLike | Pipeline,
    out: str | os.PathLike,
    dynamo: bool = True,
    verbose: bool = False,
) -> Path:
    """Write the waveform → probabilities graph of a `model.pt` (or run folder, or Pipeline) to
    `out` (atomically); returns the path. Raises RuntimeError if the graph disagrees with torch."""
    import onnx

    if isinstance(model_path, Pipeline):
        pipeline = model_path
    else:
        from stlser import expert
        from stlser.safety import safe_torch_load

        path = resolve_model_path(model_path)
        art = safe_torch_load(path, "model artefact")
        if expert.is_expert(art):
            return export_expert(path, art, out)
        pipeline = Pipeline.from_artefact(path, art)
    pipeline = pipeline.eval()
    proto = _to_proto(pipeline, dynamo, verbose)
    meta = pipeline.export_metadata()
    meta["exporter"] = "torch.export (dynamo)" if dynamo else "torchscript"
    onnx.helper.set_model_props(proto, meta)
    proto.doc_string = (
        "stlser: 16 kHz waveform -> speech emotion probabilities (log-mel front end inside)"
    )
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    err = check_against_torch(pipeline, data, [0.7, 4.3, 1.1])
    if not err <= CHECK_TOLERANCE:
        raise RuntimeError(f"exported graph disagrees with torch (max |dp| = {err:.2e})")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return Path(out)


def export_expert(path: Path, art: dict[str, Any], out: str | os.PathLike) -> Path:
    """ONNX graph of an expert-feature model: functionals[B, D] → probs[B, C].

    openSMILE computes the functionals before the graph (`stlser.onnx_runtime` does it; the
    metadata names the sets). Checked against torch before it is written.
    """
    import json

    import onnx
    import onnxruntime as ort

    from stlser import __version__, expert

    model, art = expert.from_artefact(path, art)
    sets = list(art["model_config"]["functionals"])
    x = torch.randn(3, sum(model.dims), generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["functionals"],
            output_names=["probs"],
            dynamic_axes={"functionals": {0: "batch"}, "probs": {0: "batch"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    meta = {
        "kind": "expert",
        "labels": json.dumps(list(art["labels"])),
        "sample_rate": str(SAMPLE_RATE),
        "functionals": json.dumps(sets),
        "stlser_version": __version__,
        "n_params": str(sum(p.numel() for p in model.parameters())),
        "training": json.dumps(art.get("meta") or {}, default=str),
        "inputs": "functionals[B,D] float32: openSMILE functionals of 16 kHz mono clips, "
        "sets concatenated in the order of 'functionals'",
        "outputs": "probs[B,C] float32 over labels",
        "exporter": "torchscript",
    }
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["probs"], {"functionals": x.numpy()})
    with torch.inference_mode():
        err = float(np.abs(got - model(x).numpy()).max())
    if not err <= CHECK_TOLERANCE:
        raise RuntimeError(f"exported graph disagrees with torch (max |dp| = {err:.2e})")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return Path(out)
