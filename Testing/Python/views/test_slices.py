"""Slice views on the synthetic backend: the encoding policy (which slices are encoded, how the others are seen),
masks interpolated between lattice slices, and the intensity windows a click may be seen in."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from PromptRegLib.core.image import Image
from PromptRegLib.core.regions import interpolate_masks
from PromptRegLib.models import load_model
from PromptRegLib.models.cache import EmbeddingCache
from PromptRegLib.views.slices import SOFT_TISSUE_WINDOW_HU, SliceOptions, SliceView


def volume(slices: int = 20, spacing_mm=(2.0, 2.0, 5.0), low: float = 0.0) -> Image:
    """A cylinder along S (k): one structure on every slice, radius growing with k."""
    z, y, x = np.indices((slices, 48, 48)).astype(float)
    values = np.where((x - 24) ** 2 + (y - 24) ** 2 < (6 + 0.5 * z) ** 2, 1000.0, low)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(spacing_mm)
    return Image(image)


def view(image: Image, **options) -> SliceView:
    model = load_model("test-patches", cache=EmbeddingCache(False))
    return SliceView(image, model, 2, SliceOptions(slice_spacing_mm=5.0, **options))


def test_the_lattice_holds_every_kth_slice_and_each_clicked_one():
    every = view(volume())
    assert every.lattice_step == 1 and every.lattice == list(range(20))
    spaced = view(volume(), encode_spacing_mm=15.0)        # 5 mm slices: every third
    assert spaced.lattice_step == 3 and spaced.lattice == list(range(0, 20, 3))
    spaced.add_to_lattice(7)                                # a click's slice is encoded itself
    assert 7 in spaced.lattice and spaced.nearest_lattice_slice(8) == 7 and spaced.next_slice(7, 1) == 9


def test_a_slice_between_lattice_slices_gets_its_neighbours_features_interpolated_and_nothing_is_encoded_for_it():
    spaced = view(volume(), encode_spacing_mm=15.0)
    (between,) = spaced.embeddings([4])
    assert spaced.encoded == 2                              # slices 3 and 6 only
    low, high = spaced.embeddings([3, 6])
    expected = (2 / 3) * low.features + (1 / 3) * high.features
    assert torch.allclose(between.features, expected) and spaced.encoded == 2
    features, grid = spaced.feature_volume()                # the dense term reads the regular lattice only
    assert features.shape[1] == 7 and np.isclose(grid.spacing[2], 15.0)


def test_interpolated_masks_move_smoothly_between_two_slices():
    near, far = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    near[8:16, 8:16], far[8:24, 8:24] = True, True         # an 8-pixel square growing to 16
    first, second = interpolate_masks(near, far, 2)
    assert near.sum() < first.sum() < second.sum() < far.sum()
    assert interpolate_masks(near, far, 0) == []


def test_a_ct_in_hounsfield_units_offers_the_soft_tissue_window():
    ct = volume(low=-1024.0)
    assert view(ct, window_per_click=False).windows == [view(ct).window]
    offered = view(ct)
    assert offered.windows[1] == SOFT_TISSUE_WINDOW_HU
    assert view(volume()).windows == [view(volume()).window]  # not a CT: one window
    seed = offered.seed_from_point(offered.voxel_to_lps(np.array([[10, 24, 24]]))[0])
    assert seed.window in (0, 1) and seed.mask.any()
