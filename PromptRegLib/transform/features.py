"""Dense refinement on the model's own features.

The encoder features of both images — already computed for prompting — describe anatomy in a way that does not
depend on the modality (SAM's encoder was the best frozen registration feature among the foundation models
compared by Gu et al., arXiv 2507.11569). After the ROI pairs have placed the images, the fit refines the
deformation on the cosine between fixed features and moving features sampled through φ, jointly with the
ROI-pair overlap and the bending regulariser (:func:`PromptRegLib.transform.fit.fit_transform`).

Features are unit-normalised per location, centred and projected on a basis shared by both images (principal
components of samples from both, so the optimiser handles a few dozen channels instead of hundreds), and
compared at the fixed image's anatomy (its foreground, grown by one feature cell). Every position is physical:
each feature volume carries its grid (:class:`~PromptRegLib.core.grid.Grid`), and samples are taken at LPS
points.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..core.grid import Grid, covering_grid, sample_on_grid
from ..core.image import Image
from ..views.foreground import foreground_mask
from ..views.slices import windowed
from .mind import describe, descriptor_grid


@dataclass
class FeaturePair:
    """Both images' projected features (c, *shape) with their grids, and where the fixed image has anatomy."""

    fixed: torch.Tensor
    fixed_grid: Grid
    moving: torch.Tensor
    moving_grid: Grid
    fixed_foreground: Image
    channels_in: int
    descriptors: "FeaturePair | None" = None     # MIND-SSC of both images at image resolution (:mod:`.mind`)


#: feature vectors each image contributes to the shared basis
BASIS_SAMPLES = 20_000


def sampled_vectors(values: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
    """Feature vectors (n ≤ ``samples``, C) at random locations of ``values`` (C, ...): a copy, so the volume can
    be released."""
    flat = values.reshape(values.shape[0], -1)
    chosen = torch.randperm(flat.shape[1], generator=generator)[:samples]
    return flat[:, chosen].T.contiguous()


def principal_basis(vectors: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and the first ``channels`` principal directions (C, channels) of feature vectors (n, C) — from
    both images' samples, one basis, so projected features stay comparable across the images."""
    mean = vectors.mean(0)
    _, _, right = torch.linalg.svd(vectors - mean, full_matrices=False)
    return mean, right[: min(channels, right.shape[0])].T.contiguous()


def project(values: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
    """Features (C, *shape) → centred and projected (c, *shape), a chunk of locations at a time (no centred copy
    of the whole C-channel volume: on a clinical grid that copy is ~300 MB)."""
    flat = values.reshape(values.shape[0], -1)
    weights, shift = basis.T.contiguous(), basis.T @ mean
    projected = torch.empty(basis.shape[1], flat.shape[1])
    for start in range(0, flat.shape[1], chunk):
        projected[:, start: start + chunk] = weights @ flat[:, start: start + chunk] - shift[:, None]
    return projected.reshape(basis.shape[1], *values.shape[1:])


def feature_pair(fixed_view, moving_view, channels: int = 24, descriptors: bool = False) -> FeaturePair | None:
    """The projected features of both views (encoding the slices not yet encoded); None where a view has none.
    With ``descriptors``, also both images' MIND-SSC (:func:`descriptor_pair`)."""
    generator, vectors, grids = torch.Generator().manual_seed(0), [], []
    for view in (fixed_view, moving_view):  # one raw volume in memory at a time (~300 MB on a clinical grid)
        volume = view.feature_volume()
        if volume is None:
            return None
        vectors.append(sampled_vectors(volume[0], BASIS_SAMPLES, generator))
        grids.append(volume[1])
        del volume
    mean, basis = principal_basis(torch.cat(vectors), channels)
    # built again from the held embeddings (about a second) rather than both kept through the projection
    fixed, moving = (project(view.feature_volume()[0], mean, basis) for view in (fixed_view, moving_view))
    pair = FeaturePair(fixed, grids[0], moving, grids[1], fixed_view.mask_image(foreground_mask(fixed_view)),
                       int(vectors[0].shape[1]))
    if descriptors:
        pair.descriptors = descriptor_pair(fixed_view, moving_view, pair.fixed_foreground)
    return pair


def descriptor_pair(fixed_view, moving_view, foreground: Image) -> FeaturePair:
    """MIND-SSC of both views' windowed images, each on an isotropic grid along the fixed view's axes; the moving
    grid's spacing is the fixed one's in the moving image's units (photographs of other pixel sizes)."""
    direction = fixed_view.grid.direction
    finest = float(fixed_view.grid.spacing[0])
    spacing = max(descriptor_grid(fixed_view.image, direction, finest).spacing[0],
                  descriptor_grid(moving_view.image, direction, finest * moving_view.unit_mm).spacing[0]
                  / moving_view.unit_mm)
    grids = [covering_grid(Grid.of(view.image), direction, np.full(view.image.dimension, spacing * view.unit_mm))
             for view in (fixed_view, moving_view)]
    fixed, moving = (describe(windowed(view.image, view.window), grid)
                     for view, grid in zip((fixed_view, moving_view), grids))
    return FeaturePair(fixed, grids[0], moving, grids[1], foreground, int(fixed.shape[0]))


#: fixed-anatomy points the feature term compares (a random subset of the fit's working grid beyond this)
MAX_POINTS = 20_000


class FeatureLoss:
    """1 − mean cosine between fixed features and moving features sampled through φ, over the fixed anatomy.

    Built for the fit's working ``reference`` grid: :meth:`loss` takes the moved positions of all its voxels
    (in the order of :func:`PromptRegLib.transform.field.grid_points_lps`). Moving samples outside the moving image count
    as dissimilar (cosine 0)."""

    def __init__(self, pair: FeaturePair, reference: Image, points: torch.Tensor, max_points: int = MAX_POINTS):
        grown = sitk.BinaryDilate(sitk.Cast(pair.fixed_foreground.sitk_image > 0.5, sitk.sitkUInt8),
                                  [int(np.ceil(s / max(r, 1e-6))) for s, r in
                                   zip(pair.fixed_grid.spacing, pair.fixed_foreground.spacing)])
        on_reference = sitk.Resample(grown, reference.sitk_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        foreground = torch.as_tensor(sitk.GetArrayFromImage(on_reference).ravel() > 0)
        inside = torch.as_tensor(pair.fixed_grid.contains(points.numpy(), margin_voxels=0.0))
        index = torch.nonzero(foreground & inside).ravel()
        if len(index) > max_points:  # features vary over cells of several mm: a fixed random subset suffices
            chosen = torch.randperm(len(index), generator=torch.Generator().manual_seed(0))[:max_points]
            index = index[torch.sort(chosen).values]
        self.index = index
        self.anatomy = foreground & inside     # (N,) the working grid's voxels on the fixed anatomy
        self.fixed = F.normalize(sample_on_grid(pair.fixed, pair.fixed_grid, points[self.index]), dim=0)
        self.moving = torch.cat([pair.moving, torch.ones(1, *pair.moving.shape[1:])])
        self.moving_grid = pair.moving_grid

    def cosine(self, moved_points: torch.Tensor) -> torch.Tensor:
        """Mean cosine similarity over the fixed anatomy."""
        if len(self.index) == 0:
            return moved_points.new_zeros(())
        sampled = sample_on_grid(self.moving, self.moving_grid, moved_points[self.index])
        inside = sampled[-1].clamp(0, 1)
        cosine = (self.fixed * F.normalize(sampled[:-1], dim=0)).sum(0) * inside
        return cosine.mean()

    def loss(self, moved_points: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.cosine(moved_points)
