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


DEMO_LABELS = ["angry", "happy", "neutral", "sad"]


def random_artefact(path: Path, labels: list[str] = DEMO_LABELS) -> Path:
    """A default-config `model.pt` with random (seeded) weights: for tests that need a model
    but not a trained one (service, browser)."""
    import numpy as np
    import torch

    from stlser.config import ExperimentConfig, ModelConfig
    from stlser.model import STLSER, save_artefact

    torch.manual_seed(0)
    model = STLSER(ModelConfig(), 40, len(labels))
    norm = {
        "mode": "global",
        "mean": np.full(40, -5, np.float32),
        "std": np.full(40, 2, np.float32),
    }
    return save_artefact(path, model, ExperimentConfig(), 40, labels, norm, {})
