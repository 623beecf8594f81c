"""MIND-SSC: a hand-made, modality-independent local structure descriptor.

The encoder's features live on a grid of one cell per 4 model pixels (6 mm on the chest CT's slices): they place
organs, not edges. MIND-SSC (Heinrich et al., MICCAI 2013: "Towards realtime multimodal fusion for image-guided
interventions using self-similarities") describes each voxel by how its neighbourhood resembles itself at
pairs of nearby offsets — patch distances between the 6 (3D) or 4 (2D) axis neighbours at distance √2 from each
other, normalised by their mean and passed through exp(−·) — which an edge produces the same way whatever its
contrast or sign, so CT and MR, or two stains, give comparable descriptors at image resolution.

Hand-written (about 30 lines of torch): no maintained package on the index computes it for numpy/torch volumes.
Each image is resampled (anti-aliased) onto a physical grid before describing it, so the descriptor does not
depend on how finely the image is stored.
"""
from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..core.grid import Grid, covering_grid, resample_onto
from ..core.image import Image

#: descriptor grids hold about this many voxels at most (3D: ~130³; 12 channels of float32 ≈ 100 MB an image)
MAX_DESCRIPTOR_VOXELS = 2_000_000


def _shifted(volume: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
    """``volume`` (1, 1, *shape) read at index + offset (edges replicated)."""
    pad = [abs(o) for o in offset[::-1] for _ in range(2)]
    padded = F.pad(volume, pad, mode="replicate")
    index = tuple(slice(abs(o) + o, abs(o) + o + n) for o, n in zip(offset, volume.shape[2:]))
    return padded[(slice(None), slice(None)) + index]


def mind_ssc(volume: torch.Tensor, dilation: int = 1, radius: int = 1) -> torch.Tensor:
    """MIND-SSC of a 2D or 3D ``volume`` (numpy-order tensor): (channels, *shape) — 12 channels in 3D, 4 in 2D —
    centred and unit-normalised per voxel, so the cosine of two descriptors is their correlation."""
    dimension = volume.dim()
    image = volume.float()[None, None]
    neighbours = [tuple(dilation * s if a == axis else 0 for a in range(dimension))
                  for axis in range(dimension) for s in (-1, 1)]
    pairs = [(a, b) for a, b in itertools.combinations(neighbours, 2)
             if sum((x - y) ** 2 for x, y in zip(a, b)) == 2 * dilation ** 2]
    pool = F.avg_pool3d if dimension == 3 else F.avg_pool2d
    distances = torch.cat([pool((_shifted(image, a) - _shifted(image, b)) ** 2, 2 * radius + 1, stride=1,
                                padding=radius, count_include_pad=False) for a, b in pairs], dim=1)[0]
    distances = distances - distances.min(dim=0, keepdim=True).values
    variance = distances.mean(dim=0, keepdim=True)
    mean_variance = variance.mean()
    variance = variance.clamp(min=1e-3 * float(mean_variance) + 1e-12, max=1e3 * float(mean_variance) + 1e-12)
    descriptor = torch.exp(-distances / variance)
    descriptor = descriptor - descriptor.mean(dim=0, keepdim=True)
    return F.normalize(descriptor, dim=0)


def descriptor_grid(image: Image, direction: np.ndarray, finest_mm: float) -> Grid:
    """An isotropic grid along ``direction`` covering the image, no finer than ``finest_mm`` and holding at most
    :data:`MAX_DESCRIPTOR_VOXELS` voxels — set by the physical box, never by the storage sampling."""
    box = Grid.of(image)
    extent = np.ptp(box.corners_lps() @ direction, axis=0)
    extent = extent[extent > 0]
    spacing = max(finest_mm, float(np.prod(extent) / MAX_DESCRIPTOR_VOXELS) ** (1.0 / len(extent)))
    return covering_grid(box, direction, np.full(image.dimension, spacing))


def describe(image01: sitk.Image, grid: Grid, dilation: int = 1, radius: int = 1) -> torch.Tensor:
    """MIND-SSC of an image already mapped to [0, 1], sampled (anti-aliased) on ``grid``: (channels, *grid shape).

    Zero (no information) wherever the descriptor's footprint reaches outside the image's own box: the fill
    outside a stored box — a coarse oblique volume cut across the body, say — would otherwise read as an edge
    the other image lacks."""
    values = torch.from_numpy(resample_onto(image01, grid, 0.0))
    stored = Grid.of(image01).contains(grid.points_lps().reshape(-1, grid.dimension)).reshape(grid.shape)
    outside = torch.from_numpy(~stored).float()[None, None]
    pool = F.max_pool3d if stored.ndim == 3 else F.max_pool2d
    reach = dilation + radius
    valid = 1.0 - pool(outside, 2 * reach + 1, stride=1, padding=reach)[0, 0]
    return mind_ssc(values, dilation, radius) * valid
