"""torch modules → checked ONNX graphs, shared by every kind's export.

Two graph shapes: a waveform graph ``wave[B, N] float32, lengths[B] int64 → probs[B, C]``
(:func:`wave_graph`: front end inside, dynamic batch and length; optional further inputs with
default values, e.g. a functionals model's normalisation statistics) and a vector graph
``functionals[B, D] float32 → probs[B, C]`` (:func:`vector_graph`). Both are checked against
torch before they are written (atomically) and carry string metadata (``metadata_props``) that
`stlser.onnx_runtime` reads.

The wave exporter is torch.export (``dynamo=True``); ``dynamo=False`` uses the TorchScript
tracer with ``dynamic_axes``. The check runs at lengths not seen while tracing, and a graph
that disagrees with torch is refused.
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


def _to_proto(
    pipeline: torch.nn.Module,
    dynamo: bool,
    verbose: bool,
    optional: dict[str, torch.Tensor] | None = None,
    optimize: bool = True,
    outputs: list[str] | None = None,
) -> Any:
    """Trace the pipeline → onnx.ModelProto (exporter chatter silenced unless `verbose`).
    `optional`: further inputs (name → default value), stored as initializers of the same name,
    which makes them inputs a caller may leave out."""
    wave, lengths = _example(2, [3.0, 2.0], seed=0)
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    if not verbose:  # "torchvision is not installed. Skipping ..." and friends
        onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), quiet:
            warnings.simplefilter("ignore")
            proto = _trace(
                pipeline, wave, lengths, dynamo, verbose, optional or {}, optimize, outputs
            )
    finally:
        onnx_log.setLevel(level)
    from onnx import numpy_helper

    for name, value in (optional or {}).items():
        proto.graph.initializer.append(numpy_helper.from_array(value.numpy(), name))
    return proto


def _trace(
    pipeline: torch.nn.Module,
    wave: torch.Tensor,
    lengths: torch.Tensor,
    dynamo: bool,
    verbose: bool,
    optional: dict[str, torch.Tensor],
    optimize: bool = True,
    outputs: list[str] | None = None,
) -> Any:
    import onnx

    names = {"input_names": ["wave", "lengths", *optional], "output_names": outputs or ["probs"]}
    args = (wave, lengths, *optional.values())
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=4096)
        samples = torch.export.Dim("samples", min=MIN_BATCH_SAMPLES)
        shapes = {"wave": {0: batch, 1: samples}, "lengths": {0: batch}}
        prog = torch.onnx.export(
            pipeline,
            args,
            None,
            dynamo=True,
            verbose=verbose,
            opset_version=OPSET,
            dynamic_shapes={**shapes, **{k: None for k in optional}},
            optimize=optimize,
            external_data=False,
            **names,
        )
        return prog.model_proto
    buf = io.BytesIO()
    torch.onnx.export(
        pipeline,
        args,
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
    pipeline: torch.nn.Module,
    onnx_bytes: bytes,
    seconds: list[float],
    seed: int = 1,
    given: dict[str, torch.Tensor] | None = None,
) -> float:
    """Max |p_torch - p_onnx| on one random padded batch of clips of the given lengths (with
    the optional inputs `given`, else their defaults)."""
    import onnxruntime as ort

    wave, lengths = _example(len(seconds), seconds, seed)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # onnxruntime's notes on nodes it cannot constant-fold
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    feeds = {"wave": wave.numpy(), "lengths": lengths.numpy()}
    (got,) = sess.run(["probs"], {**feeds, **{k: v.numpy() for k, v in (given or {}).items()}})
    with torch.inference_mode():
        ref = pipeline(wave, lengths, *(given or {}).values())
    ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()
    return float(np.abs(got - ref).max())


def set_metadata(path: str | os.PathLike, updates: dict[str, str]) -> None:
    """Set string metadata entries of the ONNX graph at `path` (added or replaced), atomically;
    the graph itself is untouched."""
    import onnx

    graph = onnx.load(str(path))
    props = {p.key: p for p in graph.metadata_props}
    for key, value in updates.items():
        entry = props.get(key) or graph.metadata_props.add()
        entry.key, entry.value = key, str(value)
    with atomic_path(Path(path)) as tmp:
        onnx.save(graph, str(tmp))


def _write(proto: Any, meta: dict[str, str], doc: str, out: str | os.PathLike) -> bytes:
    import onnx

    onnx.helper.set_model_props(proto, meta)
    proto.doc_string = doc
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    return data


def wave_graph(
    module: torch.nn.Module,
    meta: dict[str, str],
    out: str | os.PathLike,
    doc: str = "stlser: 16 kHz waveform -> speech emotion probabilities",
    dynamo: bool = True,
    verbose: bool = False,
    optional: dict[str, torch.Tensor] | None = None,
    tolerance: float = CHECK_TOLERANCE,
    optimize: bool = True,
    outputs: list[str] | None = None,
) -> Path:
    """Export ``module(wave, lengths, *optional) -> probs`` (or a tuple whose first item is
    probs, named by `outputs`) to `out`; RuntimeError if onnxruntime and torch disagree on the
    probabilities by more than `tolerance` on clips of 0.7, 4.3 and 1.1 s (with the optional
    inputs left out, and given other values)."""
    module = module.eval()
    proto = _to_proto(module, dynamo, verbose, optional, optimize, outputs or ["probs"])
    meta = {**meta, "exporter": "torch.export (dynamo)" if dynamo else "torchscript"}
    data = _write(proto, meta, doc, out)
    err = check_against_torch(module, data, [0.7, 4.3, 1.1])
    if optional:
        g = torch.Generator().manual_seed(2)
        other = {k: v * (1 + 0.1 * torch.rand(v.shape, generator=g)) for k, v in optional.items()}
        err = max(err, check_against_torch(module, data, [2.3, 0.9], given=other))
    if not err <= tolerance:
        raise RuntimeError(f"exported graph disagrees with torch (max |dp| = {err:.2e})")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return Path(out)


def vector_graph(
    model: torch.nn.Module,
    dim: int,
    meta: dict[str, str],
    out: str | os.PathLike,
    doc: str = "stlser: functionals -> speech emotion probabilities",
) -> Path:
    """Export ``model(functionals[B, D]) -> probs[B, C]`` to `out`, checked against torch."""
    import onnxruntime as ort

    model = model.eval()
    x = torch.randn(3, dim, generator=torch.Generator().manual_seed(0))
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
    import onnx

    data = _write(
        onnx.load_from_string(buf.getvalue()), {**meta, "exporter": "torchscript"}, doc, out
    )
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["probs"], {"functionals": x.numpy()})
    with torch.inference_mode():
        err = float(np.abs(got - model(x).numpy()).max())
    if not err <= CHECK_TOLERANCE:
        raise RuntimeError(f"exported graph disagrees with torch (max |dp| = {err:.2e})")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return Path(out)
