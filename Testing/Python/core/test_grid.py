"""Coordinates: slice ↔ model input mapping, RAS/LPS/index conversions, working grids on oblique, anisotropic grids."""
import numpy as np
import SimpleITK as sitk
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from PromptRegLib.core.grid import SLICE_AXES_LPS, Grid, covering_grid, slicing_axis_lps
from PromptRegLib.core.image import Image, lps_to_ras, ras_to_lps
from PromptRegLib.models.base import SliceGeometry
from PromptRegLib.views import make_views


def oblique_image(size=(20, 30, 7), spacing=(0.3, 0.3, 7.0), angle=0.4) -> Image:
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 5.0))
    c, s = np.cos(angle), np.sin(angle)
    image.SetDirection((c, -s, 0.0, s * 0.8, c * 0.8, 0.6, -s * 0.6, -c * 0.6, 0.8))
    return Image(image)


def test_index_lps_round_trip_matches_itk_on_oblique_anisotropic_grid():
    image = oblique_image()
    index = np.array([[0, 0, 0], [19, 29, 6], [3.5, 7.25, 2.5]])
    lps = image.index_to_lps(index)
    expected = [image.sitk_image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in index]
    np.testing.assert_allclose(lps, expected, atol=1e-9)
    np.testing.assert_allclose(image.lps_to_index(lps), index, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-500, 500), min_size=3, max_size=3))
def test_ras_lps_flip_is_its_own_inverse(point):
    point = np.array(point)
    np.testing.assert_allclose(lps_to_ras(ras_to_lps(point)), point)
    assert ras_to_lps(point)[2] == point[2]


class ModelShape:
    """What a view needs of a 2D model: its input size."""
    input_size = 64
    native_3d = False


def random_oblique() -> Image:
    image = oblique_image()
    return image.with_array(np.random.default_rng(0).random(image.array.shape).astype(np.float32))


@settings(max_examples=50, deadline=None)
@given(st.floats(-0.5, 19.5), st.floats(-0.5, 29.5), st.floats(-0.5, 6.5))
def test_view_voxel_lps_round_trip_on_an_oblique_image(i, j, k):
    view, _ = make_views(ModelShape(), random_oblique(), random_oblique())
    point = oblique_image().index_to_lps(np.array([[i, j, k]]))
    np.testing.assert_allclose(view.voxel_to_lps(view.lps_to_voxel(point)), point, atol=1e-9)


def test_working_grid_is_canonical_and_covers_the_image():
    image = random_oblique()
    # k points along (0, 0.6, 0.8) and is the coarsest axis (7 mm): slices go along S
    assert slicing_axis_lps(Grid.of(image)) == 2
    view, _ = make_views(ModelShape(), image, image)
    np.testing.assert_allclose(view.grid.direction, SLICE_AXES_LPS[2])  # RAS+ axial, whatever the storage
    assert view.grid.spacing[2] == 7.0 and view.grid.spacing[0] == view.grid.spacing[1]
    assert max(view.grid.size[:2]) == ModelShape.input_size
    corners = Grid.of(image).corners_lps()
    assert np.all(view.grid.contains(corners, margin_voxels=0.51))


def test_covering_grid_is_centred_and_padded_to_a_minimum_size():
    image_grid = Grid.of(oblique_image())
    grid = covering_grid(image_grid, np.eye(3), np.array([2.0, 2.0, 7.0]), [50, 1, 1])
    assert grid.size[0] == 50
    centre = grid.index_to_lps((np.array(grid.size) - 1)[None] / 2)[0]
    box = image_grid.corners_lps()
    np.testing.assert_allclose(centre, (box.min(0) + box.max(0)) / 2, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.integers(8, 300), st.integers(8, 300), st.floats(0.2, 3.0), st.floats(0.2, 3.0))
def test_slice_model_point_mapping_round_trip(height, width, spacing_y, spacing_x):
    geometry = SliceGeometry.fit(height, width, (spacing_y, spacing_x), 256)
    assert max(geometry.resized_height, geometry.resized_width) == 256
    points = np.array([[0.0, 0.0], [width - 1.0, height - 1.0], [width / 3, height / 2]])
    np.testing.assert_allclose(geometry.from_model(geometry.to_model(points)), points, atol=1e-9)
    # pixel edges map to the resized image's edges (no half-pixel drift)
    np.testing.assert_allclose(geometry.to_model(np.array([[-0.5, -0.5]])), [[-0.5, -0.5]], atol=1e-9)
    np.testing.assert_allclose(geometry.to_model(np.array([[width - 0.5, height - 0.5]])),
                               [[geometry.resized_width - 0.5, geometry.resized_height - 0.5]], atol=1e-9)


def test_mask_decoded_in_model_space_maps_back_exactly():
    """A mask drawn in model space (resized region, padding zero) comes back as the same mask on the slice."""
    geometry = SliceGeometry.fit(128, 100, (1.0, 1.0), 256)
    mask = np.zeros((128, 100), dtype=np.float32)
    mask[30:90, 20:70] = 1
    model_space = geometry.slice_to_input(mask)[0]  # resize + pad
    assert model_space[geometry.resized_height:].abs().sum() == 0 and model_space[:, geometry.resized_width:].abs().sum() == 0
    back = geometry.input_to_slice((model_space - 0.5)[None]) > 0
    assert np.array_equal(back[0].numpy(), mask > 0)


def test_feature_grid_pooling_weights_sum_to_covered_area():
    geometry = SliceGeometry.fit(128, 128, (1.0, 1.0), 256)
    weights = geometry.slice_to_grid(torch.ones(128, 128), 64)
    assert abs(float(weights.sum()) - 64 * 64) < 1e-3
