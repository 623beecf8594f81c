"""What the fit minimises besides the features: ROI-pair overlap (soft Dice) and the field's bending energy."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..core.grid import Grid, resample_onto
from ..core.image import Image
from .field import grid_points_lps


def as_mask_image(mask: np.ndarray | Image, domain: Image) -> Image:
    """A mask with its geometry: an :class:`Image` as given, or a numpy mask on ``domain``'s grid."""
    if isinstance(mask, Image):
        return Image(sitk.Cast(mask.sitk_image, sitk.sitkFloat32), mask.source)
    return domain.with_array(np.asarray(mask, dtype=np.float32))


def soft_mask(mask: Image) -> np.ndarray:
    """A mask blurred by a Gaussian of one voxel spacing along each axis (numpy order, float32); axes of fewer
    than 4 voxels (a thin slab; ITK's recursive filter needs 4) stay sharp."""
    image = mask.sitk_image
    for axis, (spacing, size) in enumerate(zip(mask.spacing, mask.size)):
        if size >= 4:
            blur = sitk.RecursiveGaussianImageFilter()
            blur.SetDirection(axis)
            blur.SetSigma(float(spacing))
            image = blur.Execute(image)
    return sitk.GetArrayFromImage(image)


class PairLoss:
    """Mean per-pair soft Dice between fixed masks and moving masks sampled through φ.

    Fixed masks may lie on any grids; they are resampled on the working ``reference``. Moving masks share one
    grid and are sampled there through φ."""

    def __init__(self, fixed_masks: list[Image], moving_masks: list[Image], weights: np.ndarray, reference: Image):
        self.reference = reference
        self.dimension = reference.dimension
        self.points = torch.as_tensor(grid_points_lps(reference), dtype=torch.float32)
        # Masks blurred by one voxel along each axis: gradients beyond the boundary, and a Dice that varies
        # smoothly with sub-voxel shifts (binary masks sampled linearly snap to whole slices).
        on_reference = [resample_onto(m.with_array(soft_mask(m)).sitk_image, reference.grid, 0.0, antialias=False)
                        for m in fixed_masks]
        self.fixed_soft = torch.as_tensor(np.stack(on_reference), dtype=torch.float32).reshape(len(fixed_masks), -1)
        moving = moving_masks[0]
        if any(not m.grid.same_geometry(moving.grid) for m in moving_masks):
            raise ValueError("moving masks must share one grid")
        self.moving_soft = torch.as_tensor(np.stack([soft_mask(m) for m in moving_masks]), dtype=torch.float32)[None]
        matrix, offset = Grid.of(moving).normalised_map()
        self.to_normalised = torch.as_tensor(matrix, dtype=torch.float32)
        self.normalised_offset = torch.as_tensor(offset, dtype=torch.float32)
        self.weights = torch.as_tensor(weights / weights.sum(), dtype=torch.float32)

    def moving_at(self, moved_points: torch.Tensor) -> torch.Tensor:
        """The moving masks (soft) at moving positions (N, d) of the reference voxels: (P, N)."""
        grid = moved_points @ self.to_normalised.T + self.normalised_offset
        grid = grid.reshape(1, *([1] * (self.dimension - 1)), -1, self.dimension)
        sampled = F.grid_sample(self.moving_soft, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return sampled.reshape(self.fixed_soft.shape)

    def dice(self, moved_points: torch.Tensor) -> torch.Tensor:
        """Per-pair soft Dice (P,) for moving positions (N, d) of the reference voxels."""
        warped = self.moving_at(moved_points)
        overlap = (warped * self.fixed_soft).sum(1)
        return 2 * overlap / (warped.sum(1) + self.fixed_soft.sum(1)).clamp_min(1e-6)

    def loss(self, moved_points: torch.Tensor) -> torch.Tensor:
        return 1.0 - (self.weights * self.dice(moved_points)).sum()


def bending_energy(dense: torch.Tensor, spacing_mm: np.ndarray) -> torch.Tensor:
    """Mean squared second derivatives (mm⁻¹ per mm of displacement) of a field (*shape, d) on a grid."""
    energy = dense.new_zeros(())
    spatial = dense.dim() - 1
    for axis in range(spatial):
        if dense.shape[axis] < 3:
            continue
        h = float(spacing_mm[axis])
        second = (dense.narrow(axis, 2, dense.shape[axis] - 2) - 2 * dense.narrow(axis, 1, dense.shape[axis] - 2)
                  + dense.narrow(axis, 0, dense.shape[axis] - 2)) / h ** 2
        energy = energy + (second ** 2).mean()
    return energy
