"""Every recogniser kind gives the predictions committed in tests/data/equivalence/ on the
miniature corpus of tests/equivalence.py (crossval and baseline through the command line)."""

from __future__ import annotations

import pytest

from tests import equivalence


@pytest.mark.parametrize("system", list(equivalence.SYSTEMS))
def test_predictions_are_the_committed_ones(system, tmp_path_factory, one_torch_thread):
    work = tmp_path_factory.getbasetemp() / "equivalence"
    out = equivalence.run(system, work)
    equivalence.assert_committed(system, out)
