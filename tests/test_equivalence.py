"""Every recogniser kind gives the predictions committed in tests/data/equivalence/ on the
miniature corpus of tests/equivalence.py (crossval and baseline through the command line)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests import equivalence


@pytest.mark.parametrize("system", list(equivalence.SYSTEMS))
def test_predictions_are_the_committed_ones(system, tmp_path_factory, one_torch_thread):
    work = tmp_path_factory.getbasetemp() / "equivalence"
    out = equivalence.run(system, work)
    got = pd.read_csv(out / "predictions.csv", dtype={"speaker": str})
    want = pd.read_csv(equivalence.DATA / f"{system}.csv")
    assert got["utt_id"].tolist() == want["utt_id"].tolist()
    assert got["fold"].tolist() == want["fold"].tolist()
    cols = equivalence.columns(system)
    err = np.abs(got[cols].to_numpy(float) - want[cols].to_numpy(float)).max()
    assert err < 1e-4, f"{system}: predictions moved by {err:.2e}"
    assert got["pred"].tolist() == want["pred"].tolist()
