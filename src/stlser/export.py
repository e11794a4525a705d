"""Export a trained model of any kind to ONNX (`stlser export`).

The artefact's kind (`stlser.kinds`) writes its graph: a network's graph goes from 16 kHz
waveform to probabilities (front end inside), a functionals model's from its functionals
(`stlser.onnx_graph`). Every graph is checked against torch before it is written, and
`stlser.onnx_runtime` runs it without torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stlser.onnx_graph import CHECK_TOLERANCE, OPSET

__all__ = ["CHECK_TOLERANCE", "OPSET", "export_onnx"]


def export_onnx(model_path: str | os.PathLike | None, out: str | os.PathLike, **kw: Any) -> Path:
    """Write the ONNX graph of a `model.pt` (a run folder, or ``base``) to `out` (atomically);
    returns the path. Raises RuntimeError if the graph disagrees with torch. Keyword arguments
    (``dynamo``, ``verbose``) reach a waveform graph's exporter."""
    from stlser import kinds
    from stlser.utils import check_writable

    if Path(out).is_dir():
        raise ValueError(f"--output {out} is a folder; give the .onnx file to write")
    kind, art, path = kinds.read(model_path)
    check_writable(out)  # before tracing a waveform graph, which takes a minute or more
    return kind.export(path, art, out, **kw)
