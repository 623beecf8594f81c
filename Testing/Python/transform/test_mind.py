"""MIND-SSC (mind.py): contrast-independent, physical, and it places an image against an inverted-contrast copy."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PromptRegLib.core.image import Image
from PromptRegLib.transform.features import FeatureLoss, FeaturePair
from PromptRegLib.transform.field import grid_points_lps, working_reference
from PromptRegLib.transform.fit import (
    MIN_DESCRIPTOR_CORRELATION,
    FitOptions,
    fit_transform,
)
from PromptRegLib.transform.mind import describe, descriptor_grid, mind_ssc

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(shape, seed: int = 0) -> np.ndarray:
    """Smooth random structure (a few Gaussian blobs of different brightness)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    volume = np.zeros(shape)
    for _ in range(12):
        centre = [rng.uniform(0, n) for n in shape]
        width = rng.uniform(2.0, 5.0)
        volume += rng.uniform(0.3, 1.0) * np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / (2 * width ** 2))
    return volume


@pytest.mark.parametrize("shape,channels", [((20, 24, 22), 12), ((40, 36), 4)])
def test_descriptor_is_the_same_under_any_contrast(shape, channels):
    volume = torch.as_tensor(blobs(shape), dtype=torch.float32)
    descriptor = mind_ssc(volume)
    assert descriptor.shape == (channels, *shape)
    assert torch.allclose(descriptor.norm(dim=0), torch.ones(shape), atol=1e-4)
    inverted = mind_ssc(5.0 - 3.0 * volume)  # another modality: brighter where the first is darker
    assert torch.allclose(inverted, descriptor, atol=1e-3)
    assert not torch.allclose(mind_ssc(torch.as_tensor(blobs(shape, seed=1), dtype=torch.float32)), descriptor,
                              atol=0.1)


def test_descriptor_grid_follows_the_physical_box_not_the_storage():
    image = sitk.Image([60, 50, 20], sitk.sitkFloat32)
    image.SetSpacing([3.0, 3.0, 10.0])
    finer = sitk.Image([240, 200, 80], sitk.sitkFloat32)
    finer.SetSpacing([0.75, 0.75, 2.5])
    finer.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([-0.375, -0.375, -0.375]))
    grids = [descriptor_grid(Image(i), np.eye(3), 1.5) for i in (image, finer)]
    assert grids[0].size == grids[1].size and np.allclose(grids[0].spacing, grids[1].spacing)
    assert np.allclose(grids[0].origin, grids[1].origin, atol=1e-3)
    assert np.prod(grids[0].size) <= 2_000_000


def test_descriptors_place_an_inverted_contrast_copy_at_its_true_shift():
    """Moving = fixed shifted 4 mm along L with its contrast inverted (as CT against MR): the descriptor
    correlation, like the feature term that carries it, is best at the true shift."""
    values = blobs((16, 48, 48), seed=2).astype(np.float32)
    fixed = sitk.GetImageFromArray(values)
    fixed.SetSpacing([2.0, 2.0, 2.0])
    moving = sitk.GetImageFromArray(1.0 - values)
    moving.SetSpacing([2.0, 2.0, 2.0])
    moving.SetOrigin([4.0, 0.0, 0.0])  # the same content 4 mm further along L
    grid = descriptor_grid(Image(fixed), np.eye(3), 2.0)
    moving_grid = descriptor_grid(Image(moving), np.eye(3), 2.0)
    foreground = Image(sitk.Cast(fixed * 0 + 1, sitk.sitkFloat32), "fixed")
    pair = FeaturePair(describe(fixed, grid), grid, describe(moving, moving_grid), moving_grid, foreground, 12)
    reference = working_reference(foreground, 8000)
    points = torch.as_tensor(grid_points_lps(reference), dtype=torch.float32)
    loss = FeatureLoss(pair, reference, points)
    losses = {dx: float(loss.loss(points + torch.tensor([dx, 0.0, 0.0]))) for dx in (-4.0, 0.0, 2.0, 4.0, 6.0)}
    assert min(losses, key=losses.get) == 4.0, losses


def test_a_box_cut_across_the_image_reads_as_no_information_not_as_an_edge():
    """The same image stored on a smaller box (cut across its structure): where the crop's descriptor is defined
    it is the full image's; near the cut it is zero, so the fill outside cannot pull the fit."""
    values = blobs((40, 44), seed=3).astype(np.float32)
    full = sitk.GetImageFromArray(values)
    full.SetSpacing([2.0, 2.0])
    cropped = full[8:30, 5:35]
    grid = descriptor_grid(Image(full), np.eye(2), 2.0)
    whole, cut = describe(full, grid), describe(cropped, grid)
    defined = cut.norm(dim=0) > 0.5
    inside_box = torch.zeros_like(defined)
    inside_box[5:35, 8:30] = True  # the crop's own box on the full grid (numpy order)
    rim = inside_box & ~defined
    assert int(defined.sum()) > 400 and int(rim.sum()) > 100
    assert float((cut[:, defined] * whole[:, defined]).sum(0).mean()) > 0.99
    assert torch.all(cut[:, ~defined] == 0)  # the cut's rim is blanked, not described as an edge


@pytest.mark.parametrize("related", [True, False])
def test_the_fit_drops_the_term_when_the_images_share_no_structure(related):
    """Two stains with nothing in common at image resolution (here: independent noise) would have the term align
    noise; the fit measures the correlation at the affine and drops the term below the threshold."""
    values = blobs((48, 48), seed=4).astype(np.float32)
    other = values if related else np.random.default_rng(5).random((48, 48)).astype(np.float32)
    fixed, moving = sitk.GetImageFromArray(values), sitk.GetImageFromArray(1.0 - other)
    for image in (fixed, moving):
        image.SetSpacing([2.0, 2.0])
    grid = descriptor_grid(Image(fixed), np.eye(2), 2.0)
    foreground = Image(sitk.Cast(fixed * 0 + 1, sitk.sitkFloat32), "fixed")
    descriptors = FeaturePair(describe(fixed, grid), grid, describe(moving, grid), grid, foreground, 4)
    features = FeaturePair(descriptors.fixed, grid, descriptors.fixed, grid, foreground, 4, descriptors)
    mask = np.zeros((48, 48), np.float32)
    mask[10:30, 12:36] = 1
    report = fit_transform(Image(fixed), Image(moving), [mask], [mask], None,
                           FitOptions(working_voxels=2000, control_spacing_mm=(40.0,), max_iterations=20),
                           features=features).report
    assert (report["descriptor_correlation_affine"] >= MIN_DESCRIPTOR_CORRELATION) == related
    assert ("descriptor_term" in report) != related
    assert ("descriptor_correlation_deformable" in report) == related
