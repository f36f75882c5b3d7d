"""evaluate musdb: every stem of a track in one pass when the estimator can (ConditionEstimator.separate_many)."""
from __future__ import annotations

import pytest
import torch

from separator.eval.estimators import ConditionEstimator, estimate_stems


def test_all_stems_in_one_call_and_equal_to_one_per_stem():
    passes = []

    def separate(wav, rate, cond):
        passes.append(1)
        return wav * cond

    def separate_many(wav, rate, conds):
        passes.append(len(conds))
        return [wav * c for c in conds]

    queries = {"vocals": 0.1, "drums": 0.2, "bass": 0.3, "other": 0.4}
    mix = torch.randn(2, 100)
    one = ConditionEstimator(separate=separate, queries=queries)
    many = ConditionEstimator(separate=separate, queries=queries, separate_many=separate_many)
    a = estimate_stems(one, mix, 44100, list(queries))
    b = estimate_stems(many, mix, 44100, list(queries))
    assert passes == [1, 1, 1, 1, 4]  # four passes, then one pass for the four stems
    assert all(torch.equal(a[s], b[s]) for s in queries)
    with pytest.raises(ValueError, match="no query for stem 'piano'"):
        estimate_stems(many, mix, 44100, ["piano"])
