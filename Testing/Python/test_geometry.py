"""Coordinates: slice ↔ model input mapping, RAS/LPS/index conversions on oblique, anisotropic grids."""
import numpy as np
import SimpleITK as sitk
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from PromptRegLib.imageio import Image, lps_to_ras, ras_to_lps
from PromptRegLib.models.base import SliceGeometry
from PromptRegLib.volume import SliceStack


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


@settings(max_examples=50, deadline=None)
@given(st.floats(-0.5, 19.5), st.floats(-0.5, 29.5), st.floats(-0.5, 6.5))
def test_stack_index_round_trip_any_axis(i, j, k):
    image = oblique_image()
    image = image.with_array(np.random.default_rng(0).random(image.array.shape).astype(np.float32))
    for axis in (0, 1, 2):
        stack = SliceStack.__new__(SliceStack)
        stack.image, stack.axis = image, axis
        stacked = stack.image_index_to_stack(np.array([[i, j, k]]))
        np.testing.assert_allclose(stack.stack_index_to_image(stacked), [[i, j, k]], atol=1e-12)


def test_coarsest_axis_is_the_stacking_axis():
    image = oblique_image()
    image = image.with_array(np.random.default_rng(0).random(image.array.shape).astype(np.float32))

    class NoModel:
        pass

    stack = SliceStack(image, NoModel())
    assert stack.axis == 0  # numpy axis 0 is ITK k, spacing 7 mm
    assert stack.shape == (7, 30, 20)
    assert stack.pixel_spacing == (0.3, 0.3)


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
