"""Property tests of the composition layout over many seeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthgen.compose.layout import (
    DROP_NO_POSITION,
    LayoutParams,
    aspect_error,
    box_shape,
    draw_count,
    long_side_range,
    place_objects,
    size_candidates,
    visible_cells,
)
from synthgen.grounding import overlap_ratio

PAPER = LayoutParams()


def test_paper_size_ranges():
    # the authors paste randint(round(s_min*G), round(s_max*G) - 1) + 1 cells: 6-16 / 4-16 / 3-16
    assert long_side_range(1, PAPER) == (6, 17)
    assert long_side_range(2, PAPER) == (4, 17)
    assert long_side_range(3, PAPER) == (3, 17)
    assert long_side_range(1, LayoutParams(grid=16, s_min=(1.0,), s_max=(1.0,), a_max=1)) == (16, 17)


def test_box_shape_follows_aspect():
    assert box_shape(10, 2.0) == (10, 5)
    assert box_shape(10, 0.5) == (5, 10)
    assert box_shape(3, 10.0) == (3, 1)  # at least one cell
    assert aspect_error((10, 5), 2.0) == 0.0


def test_size_candidates_avoid_aspect_distortion():
    # aspect 0.33: L=5 -> 2x5 (0.4, +21%) is refused, L=6 -> 2x6 exact is allowed
    c = size_candidates(1, 1 / 3, PAPER)
    assert 6 in c and 5 not in c
    assert all(aspect_error(box_shape(int(s), 1 / 3), 1 / 3) <= 0.1 for s in c)
    # when no size is within tolerance the least distorted ones are used, never an empty set
    strict = LayoutParams(max_aspect_error=0.0)
    assert len(size_candidates(3, 0.77, strict)) >= 1


def test_draw_count_uniform_and_fixed():
    rng = np.random.default_rng(0)
    counts = np.bincount([draw_count(rng, PAPER) for _ in range(3000)], minlength=4)
    assert counts[0] == 0 and all(counts[1:] > 850)
    fixed = LayoutParams(fixed_count=True)
    assert {draw_count(rng, fixed) for _ in range(50)} == {3}


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       aspects=st.lists(st.floats(0.2, 5.0), min_size=1, max_size=5),
       o_max=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
       grid=st.sampled_from([8, 14, 16]))
def test_layout_invariants(seed, aspects, o_max, grid):
    a_max = len(aspects)
    p = LayoutParams(grid=grid, a_max=a_max, s_min=(0.3, 0.2, 0.1, 0.1, 0.1)[:a_max],
                     s_max=(1.0,) * a_max, o_max=o_max)
    lay = place_objects(np.random.default_rng(seed), aspects, p)
    assert len(lay.boxes) + len(lay.dropped) == len(aspects)
    assert sorted(lay.placed + [i for i, _ in lay.dropped]) == list(range(len(aspects)))
    assert all(r == DROP_NO_POSITION for _, r in lay.dropped)
    assert len(lay.boxes) >= 1  # the first object always fits on an empty canvas
    lo, hi = long_side_range(len(aspects), p)
    for k, (box, idx) in enumerate(zip(lay.boxes, lay.placed)):
        c1, r1, c2, r2 = box
        assert all(isinstance(v, int) for v in box)
        assert 0 <= c1 < c2 <= grid and 0 <= r1 < r2 <= grid           # fully inside, whole cells
        w, h = c2 - c1, r2 - r1
        assert lo <= max(w, h) < hi                                      # size range for n
        assert (w, h) == box_shape(max(w, h), aspects[idx])              # aspect kept
        # overlap rule against every object placed before it
        assert sum(overlap_ratio(box, b) for b in lay.boxes[:k]) <= o_max + 1e-9
    # no earlier object is left with less than min_visible of its cells
    for box, vis in zip(lay.boxes, visible_cells(lay.boxes, grid)):
        assert vis.sum() >= p.min_visible * (box[2] - box[0]) * (box[3] - box[1]) - 1e-9


def test_zero_overlap_means_disjoint_and_drops_are_counted():
    p = LayoutParams(a_max=5, s_min=(0.9,) * 5, s_max=(1.0,) * 5, o_max=0.0)
    lay = place_objects(np.random.default_rng(1), [1.0] * 5, p)
    # 14/15-cell squares cannot share a 16-cell canvas without overlap: only one fits
    assert len(lay.boxes) == 1 and len(lay.dropped) == 4


def test_layout_is_deterministic():
    a = place_objects(np.random.default_rng(7), [1.0, 2.0, 0.5], PAPER)
    b = place_objects(np.random.default_rng(7), [1.0, 2.0, 0.5], PAPER)
    assert a.boxes == b.boxes and a.dropped == b.dropped


@pytest.mark.parametrize("kw,needle", [
    (dict(a_max=0), "--a-max"),
    (dict(s_min=(0.5, 0.5, 0.5), s_max=(0.4, 1, 1)), "larger than"),
    (dict(s_min=(0.3,)), "at least a_max"),
    (dict(o_max=1.5), "--o-max"),
    (dict(o_max=-0.1), "--o-max"),
])
def test_bad_parameters_are_reported(kw, needle):
    probs = LayoutParams(**kw).problems()
    assert probs and any(needle in p for p in probs)


@settings(max_examples=300, deadline=None)
@given(grid=st.integers(1, 24), data=st.data())
def test_window_overlaps_of_a_box_equal_its_window_sums(grid, data):
    """The cells a box shares with every window position (used for the overlap rule), computed
    per axis, equal the window sums of the box's cell mask."""
    from synthgen.compose.layout import _overlaps, _rect_mask, _window_sums

    c1 = data.draw(st.integers(0, grid - 1))
    r1 = data.draw(st.integers(0, grid - 1))
    box = (c1, r1, data.draw(st.integers(c1 + 1, grid)), data.draw(st.integers(r1 + 1, grid)))
    w, h = data.draw(st.integers(1, grid)), data.draw(st.integers(1, grid))
    want = _window_sums(_rect_mask(box, grid), w, h)
    got = _overlaps(box, w, h, grid)
    assert got.shape == want.shape and np.array_equal(got, want)


def test_size_candidates_are_memoised_read_only():
    a = size_candidates(2, 1.37, PAPER)
    assert size_candidates(2, 1.37, PAPER) is a and not a.flags.writeable
