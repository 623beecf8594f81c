"""Dense refinement on features (dense.py): physical sampling of feature volumes, the shared basis, the loss,
and the feature grid a slice view reports."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PromptRegLib.core.grid import Grid, sample_on_grid
from PromptRegLib.core.image import Image
from PromptRegLib.models import load_model
from PromptRegLib.models.cache import EmbeddingCache
from PromptRegLib.transform.features import (
    FeatureLoss,
    FeaturePair,
    principal_basis,
    project,
    sampled_vectors,
)
from PromptRegLib.transform.field import grid_points_lps, working_reference
from PromptRegLib.views import make_views

pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_field(points_lps: np.ndarray, channels: int = 6) -> np.ndarray:
    """A smooth vector field defined in physical space: (channels, N)."""
    frequencies = np.random.default_rng(3).normal(0, 0.1, (channels, points_lps.shape[1]))
    phases = np.random.default_rng(4).uniform(0, 2 * np.pi, channels)
    return np.sin(frequencies @ points_lps.T + phases[:, None])


def volume_on(grid: Grid, shift_lps: np.ndarray) -> torch.Tensor:
    """The field, moved by ``shift_lps``, stored on ``grid`` (numpy order)."""
    points = grid.points_lps().reshape(-1, grid.dimension).astype(float)
    values = smooth_field(points - shift_lps)
    return torch.as_tensor(values.reshape(-1, *grid.shape), dtype=torch.float32)


def test_sample_reads_values_at_physical_points_whatever_the_storage():
    flipped = Grid(np.array([100.0, -20.0, 40.0]), np.array([3.0, 2.0, 5.0]),
                   np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]), (30, 25, 12))
    values = volume_on(flipped, np.zeros(3))
    points = flipped.points_lps()[3:9, 4:10, 5:12].reshape(-1, 3)  # voxel centres: exact values expected
    sampled = sample_on_grid(values, flipped, torch.as_tensor(points))
    expected = smooth_field(points.astype(float))
    assert np.allclose(sampled.numpy(), expected, atol=1e-4)


def test_shared_basis_keeps_the_common_structure():
    grid = Grid(np.zeros(2), np.ones(2), np.eye(2), (40, 40))
    values = volume_on(grid, np.zeros(2))
    generator = torch.Generator().manual_seed(0)
    mean, basis = principal_basis(torch.cat([sampled_vectors(values, 20_000, generator) for _ in range(2)]), 3)
    assert basis.shape == (6, 3)
    assert np.allclose(basis.T @ basis, np.eye(3), atol=1e-5)
    assert project(values, mean, basis).shape == (3, 40, 40)


def test_feature_loss_is_lowest_at_the_true_displacement():
    """Moving = fixed moved by 6 mm along L, stored with flipped axes: the cosine peaks where φ adds that shift."""
    fixed_image = sitk.Image([40, 36, 14], sitk.sitkFloat32)
    fixed_image.SetSpacing([3.0, 3.0, 6.0])
    fixed_image.SetOrigin([-60.0, -54.0, -42.0])
    fixed_grid = Grid.of(fixed_image)
    moving_grid = Grid(np.array([66.0, 60.0, -42.0]), np.array([4.0, 4.0, 6.0]),
                       np.diag([-1.0, -1.0, 1.0]), (34, 32, 14))
    shift = np.array([6.0, 0.0, 0.0])
    foreground = Image(sitk.Cast(fixed_image + 1, sitk.sitkFloat32), "fixed")
    pair = FeaturePair(volume_on(fixed_grid, np.zeros(3)), fixed_grid, volume_on(moving_grid, shift), moving_grid,
                       foreground, 6)
    reference = working_reference(foreground, 8000)
    points = torch.as_tensor(grid_points_lps(reference), dtype=torch.float32)
    loss = FeatureLoss(pair, reference, points)
    losses = {dx: float(loss.loss(points + torch.tensor([dx, 0.0, 0.0]))) for dx in (-6.0, 0.0, 3.0, 6.0, 9.0)}
    assert min(losses, key=losses.get) == 6.0
    assert losses[6.0] < 0.02 and losses[0.0] > 5 * losses[6.0], losses


def test_slice_view_feature_grid_covers_the_image():
    image = sitk.Image([50, 40, 6], sitk.sitkFloat32)
    image.SetSpacing([2.0, 2.5, 8.0])
    image.SetDirection([-1.0, 0, 0, 0, 0, 1.0, 0, -1.0, 0])  # stored sideways: the view still slices axially
    array = np.random.default_rng(0).uniform(0, 1, (6, 40, 50)).astype(np.float32)
    stored = sitk.GetImageFromArray(array)
    stored.CopyInformation(image)
    model = load_model("test-patches", device="cpu", cache=EmbeddingCache(None))
    view, _ = make_views(model, Image(stored, "sideways"), None)
    values, grid = view.feature_volume()
    assert values.shape[1:] == grid.shape
    assert np.allclose(values.norm(dim=0).numpy(), 1.0, atol=1e-4)
    # the feature cells span the view's working grid: their outer edges agree within one cell
    cell_edges = np.ptp(grid.corners_lps(), axis=0)
    view_edges = np.ptp(view.grid.corners_lps(), axis=0)
    assert np.all(np.abs(cell_edges - view_edges) <= grid.spacing.max() + 1e-6)
