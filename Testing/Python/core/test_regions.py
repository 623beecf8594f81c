"""Mask operations in physical units (views/regions.py)."""
import numpy as np

from PromptRegLib.core.regions import dilate_mm, ring


def test_dilation_grows_a_box_of_the_radius_in_millimetres_along_each_axis():
    mask = np.zeros((9, 21, 31), dtype=bool)
    mask[4, 10, 15] = True
    grown = dilate_mm(mask, np.array([5.0, 1.5, 0.5]), 3.0)  # radius in voxels: 0, 2, 6
    k, r, c = np.nonzero(grown)
    assert (k.min(), k.max()) == (4, 4)
    assert (r.min(), r.max()) == (8, 12)
    assert (c.min(), c.max()) == (9, 21)
    assert grown.sum() == 1 * 5 * 13          # a full box: the passes along each axis compose


def test_dilation_of_two_regions_is_their_union_and_the_input_is_kept():
    mask = np.zeros((5, 30, 30), dtype=bool)
    mask[2, 3, 3] = mask[2, 25, 20] = True
    before = mask.copy()
    both = dilate_mm(mask, np.array([10.0, 1.0, 1.0]), 2.0)
    one, other = np.zeros_like(mask), np.zeros_like(mask)
    one[2, 3, 3], other[2, 25, 20] = True, True
    assert np.array_equal(both, dilate_mm(one, np.array([10.0, 1.0, 1.0]), 2.0)
                          | dilate_mm(other, np.array([10.0, 1.0, 1.0]), 2.0))
    assert np.array_equal(mask, before)
    assert not (ring(mask, np.array([10.0, 1.0, 1.0]), 2.0) & mask).any()
