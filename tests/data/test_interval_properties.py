"""hypothesis: the interval machinery (N-run/soft-mask index, leak check) against brute force."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genomamba.data.store import _RunsIndex, runs_of
from genomamba.data.windows import DataLeakError, assert_no_overlap

flags = st.lists(st.booleans(), min_size=0, max_size=200).map(lambda x: np.array(x, dtype=np.bool_))


@settings(max_examples=300, deadline=None)
@given(flags, st.data())
def test_runs_index_matches_brute_force(flag, data):
    runs = runs_of(flag)
    assert runs.dtype == np.int64
    rebuilt = np.zeros_like(flag)
    for a, b in runs:
        assert a < b
        rebuilt[a:b] = True
    assert np.array_equal(rebuilt, flag)
    idx = _RunsIndex(runs)
    n = flag.size
    a = data.draw(st.integers(0, n))
    b = data.draw(st.integers(a, n))
    assert idx.count(a, b) == int(flag[a:b].sum())
    assert np.array_equal(idx.fill(a, b), flag[a:b])


intervals = st.lists(
    st.tuples(st.sampled_from(["c1", "c2"]), st.integers(0, 300), st.integers(0, 60)).map(
        lambda t: (t[0], t[1], t[1] + t[2])
    ),
    max_size=12,
)


@settings(max_examples=500, deadline=None)
@given(intervals, intervals)
def test_no_overlap_check_is_exact(train, evals):
    covered = {(c, i) for c, a, b in evals for i in range(a, b)}
    leak = any((c, i) in covered for c, a, b in train for i in range(a, b))
    if leak:
        with pytest.raises(DataLeakError):
            assert_no_overlap(train, evals)
    else:
        assert_no_overlap(train, evals)
