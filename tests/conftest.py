"""Shared fixtures: a tiny synthetic corpus spoken once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    """4 speakers x 4 classes x 6 utterances of the built-in synthetic corpus."""
    from stlser import synth

    out = tmp_path_factory.mktemp("synth")
    synth.generate(out, speakers=4, per_class=6, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def shared_corpora() -> Path:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} not present (real-corpus checks run in CI)")
    return SHARED


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine OpenMP threads spinning against other
    processes make small forward passes 10x slower. Restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
