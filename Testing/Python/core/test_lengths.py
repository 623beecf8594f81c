"""Photographs and slides: length defaults relative to the field of view, and the foreground on a
bright background."""
import csv

import numpy as np
import pytest
import SimpleITK as sitk

from PromptRegLib.core.image import Image, read_image
from PromptRegLib.core.lengths import (
    REFERENCE_FIELD_OF_VIEW_MM,
    has_physical_units,
    length_scale,
)
from PromptRegLib.pipeline.presets import resolve_options
from PromptRegLib.prompting.pairs import PairOptions
from PromptRegLib.transform.fit import FitOptions
from PromptRegLib.views import SliceOptions, make_views
from PromptRegLib.views.foreground import background_level, foreground_mask


def _disc_image(background: float, disc: float, size=(400, 300)) -> np.ndarray:
    rows, columns = np.mgrid[: size[1], : size[0]]
    inside = (rows - size[1] / 2) ** 2 + (columns - size[0] / 2) ** 2 < 100 ** 2
    noise = np.random.default_rng(0).normal(0, 3, inside.shape)
    return (np.where(inside, disc, background) + noise).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".nrrd"])
def test_length_defaults_follow_a_photographs_field_of_view_and_never_override_the_callers_choice(suffix, tmp_path):
    path = tmp_path / f"photo{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(_disc_image(230, 60, (800, 640))), str(path))
    image = read_image(path)
    photo = suffix == ".png"
    assert has_physical_units(image) is not photo
    factor = 800 / REFERENCE_FIELD_OF_VIEW_MM if photo else 1.0
    assert length_scale(image) == pytest.approx(factor)

    pair, fit, slices = resolve_options("accurate", image, PairOptions(), FitOptions(control_spacing_mm=(40.0, 20.0)))
    assert fit.control_spacing_mm == (40.0, 20.0)  # the caller's, as given
    np.testing.assert_allclose(slices.box_half_sizes_mm, np.array(SliceOptions().box_half_sizes_mm) * factor)
    assert pair.inverse.search_radius_mm == pytest.approx(60.0 * factor)
    assert pair.warp_shift_mm == pytest.approx(9.0 * factor)
    assert pair.auto_pairs == 12  # the preset's, not a length
    _, preset_fit, _ = resolve_options("accurate", image, PairOptions(), FitOptions())
    np.testing.assert_allclose(preset_fit.control_spacing_mm, np.array([60.0, 30.0, 15.0]) * factor)


@pytest.mark.parametrize("background, disc", [(230, 60), (10, 200)])
def test_the_foreground_is_what_differs_from_the_background_dark_or_bright(background, disc, model):
    """A brightfield slide is dark tissue on white glass; a CT is bright anatomy on dark air: either way the
    subject, not the background, is the foreground (sampled prompts and the feature term live there)."""
    array = _disc_image(background, disc)
    view, _ = make_views(model, Image(sitk.Cast(sitk.GetImageFromArray(array), sitk.sitkFloat32), "slide"), None)
    truth = view.from_image_mask(np.abs(array.astype(float) - disc) < 40)
    found = foreground_mask(view)
    assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.95


def test_a_photograph_filled_to_its_edges_is_foreground_everywhere_inside_it(model):
    array = np.random.default_rng(1).uniform(0, 255, (300, 400)).astype(np.float32)
    larger = sitk.GetImageFromArray(array)
    larger.SetSpacing((2.0, 2.0))  # the pair's larger field of view sets the pixel: the photo's view is padded
    view, _ = make_views(model, Image(sitk.GetImageFromArray(array), "photo"), Image(larger, "larger"))
    assert background_level(view) is None
    inside = view.from_image_mask(np.ones(array.shape, dtype=bool))
    assert np.array_equal(foreground_mask(view), inside) and 0.2 < inside.mean() < 0.6  # not the padding


def test_the_rat_kidney_slides_foreground_holds_its_landmarks_and_not_the_glass(data_dir, model):
    image = read_image(data_dir / "histology_birl" / "rat_kidney_HE.jpg")
    view, _ = make_views(model, image, None)
    found = foreground_mask(view)
    with open(data_dir / "histology_birl" / "rat_kidney_pairs.csv") as table:
        pixels = np.array([[float(row["fixed_x"]), float(row["fixed_y"])] for row in csv.DictReader(table)])
    voxels = np.round(view.lps_to_voxel(image.index_to_lps(pixels))).astype(int)
    on_tissue = found[voxels[:, 0], voxels[:, 1], voxels[:, 2]]
    assert on_tissue.mean() > 0.8, on_tissue.mean()  # measured 0.88: some landmarks mark white lumens and edges
    corner = view.lps_to_voxel(image.index_to_lps(np.array([[5.0, 5.0]])))[0].round().astype(int)
    assert not found[tuple(corner)]  # the glass in the corner
    assert found.mean() < 0.8  # before: 0.81 of the view, glass included


def _png(path, array: np.ndarray, spacing: float):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((spacing, spacing))  # PNG keeps it (pHYs), as a camera's 72 dpi JPEG header would say 0.35 mm
    sitk.WriteImage(image, str(path))
    return read_image(path)


def test_photographs_of_other_pixel_sizes_correspond_through_their_pixel_grids(tmp_path, model):
    """aerial_synth: the fixed JPEG says 0.345 mm a pixel, the moving PNG 1 mm, for the same scene. Neither is a
    physical statement: the model sees both at one scale, the search starts from pixel ↔ pixel, and a region and
    the fit are judged as the fixed image measures them."""
    from PromptRegLib.prompting.inverse import region_quality
    from PromptRegLib.prompting.pairs import initial_prior
    from PromptRegLib.transform.affine import initial_affine
    from PromptRegLib.views import ROI

    array = _disc_image(230, 60)
    fixed, moving = _png(tmp_path / "fixed.png", array, 0.35), _png(tmp_path / "moving.png", array, 1.0)
    scale = 1.0 / 0.35
    fixed_view, moving_view = make_views(model, fixed, moving)
    assert (fixed_view.unit_mm, moving_view.unit_mm) == (1.0, pytest.approx(scale))
    assert moving_view.spacing_mm[1] / fixed_view.spacing_mm[1] == pytest.approx(scale)
    assert moving_view.shape == fixed_view.shape  # the same pixels, the same view
    prior = initial_prior(fixed_view, moving_view)
    np.testing.assert_allclose(prior.matrix, scale * np.eye(2))
    np.testing.assert_allclose(prior.forward(fixed.physical_center())[0], moving.physical_center(), atol=1e-9)

    disc = np.abs(array.astype(float) - 60) < 40
    roi_x, roi_y = (ROI(view.from_image_mask(disc), 0.9, np.zeros(2), 0) for view in (fixed_view, moving_view))
    quality = region_quality(fixed_view, moving_view, roi_x, roi_y)
    assert quality["size_ratio"] == pytest.approx(1.0, abs=0.05)  # 8.2 in millimetres

    blobs = [np.zeros(array.shape, dtype=bool) for _ in range(3)]
    for blob, (row, column) in zip(blobs, [(60, 80), (220, 120), (120, 320)]):
        blob[row - 25:row + 25, column - 30:column + 30] = True
    fixed_masks = [fixed.with_array(b.astype(np.float32)) for b in blobs]
    moving_masks = [moving.with_array(b.astype(np.float32)) for b in blobs]
    matrix, offset, how = initial_affine(fixed_masks, moving_masks, np.ones(3), scale=scale)
    np.testing.assert_allclose(matrix, scale * np.eye(2), atol=0.02 * scale)
    assert "affine" in how
    assert "shift" in initial_affine(fixed_masks, moving_masks, np.ones(3))[2]  # unscaled: implausible, refused
