"""A discrete search for large local displacements, regularised by coupled convex steps (ConvexAdam's first step).

Both images' channels (ROI pairs, model features, MIND-SSC) are given on one working grid: the fixed ones as they
are, the moving ones sampled through the affine. For every cell of ``cell_voxels`` voxels the cost of each integer
displacement within ``radius_cells`` cells is the cell's mean squared channel difference; the field is then the
argmin of cost + λ·‖u − ū‖², alternated with ū = a smoothed u for growing λ (Heinrich et al., "Globally optimal
deformable registration on a minimum spanning tree using dense displacement sampling", and Siebert, Hansen and
Heinrich, "Fast 3D registration with accurate optimisation and little learning", ConvexAdam, MICCAI L2R 2021).

Written here rather than called from the ``convexadam`` package: its ``correlate`` and ``coupled_convex`` are 3D
only (``avg_pool3d``, an ``unfold`` over two axes) and index displacements in its own voxel order, while the same
step must run on 2D slides and photographs; this is the same computation for any dimension, in about 60 lines.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

#: the coupling weights of the successive convex steps (ConvexAdam's schedule, relative to the cost's scale)
COUPLING = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def _pool(values: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over ``size``-voxel cells (C, *shape) → (C, *cells), any dimension (edges cropped)."""
    pool = F.avg_pool3d if values.dim() == 4 else F.avg_pool2d
    return pool(values[None], size, stride=size)[0]


def _smooth(values: torch.Tensor) -> torch.Tensor:
    """A 3-cell box mean along every axis (C, *cells), edges replicated."""
    dimension = values.dim() - 1
    pool = F.avg_pool3d if dimension == 3 else F.avg_pool2d
    padded = F.pad(values[None], [1, 1] * dimension, mode="replicate")
    return pool(padded, 3, stride=1)[0]


def cost_volume(fixed: torch.Tensor, moving: torch.Tensor, cell_voxels: int, radius_cells: int,
                weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cost (O, *cells), offsets (O, d) in cells): for each cell, the weighted mean squared difference of the
    cell-pooled channels ``fixed`` (C, *shape) and ``moving`` (C, *shape) shifted by each integer offset (cells)
    within ``radius_cells`` along every axis; a shift that leaves the moving grid costs as an empty moving cell."""
    fixed_cells = _pool(fixed, cell_voxels) * weights.view(-1, *[1] * (fixed.dim() - 1))
    moving_cells = _pool(moving, cell_voxels) * weights.view(-1, *[1] * (fixed.dim() - 1))
    dimension = fixed.dim() - 1
    r = radius_cells
    padded = F.pad(moving_cells, [r, r] * dimension)
    cells = fixed_cells.shape[1:]
    offsets = torch.tensor(list(itertools.product(range(-r, r + 1), repeat=dimension)), dtype=torch.float32)
    cost = torch.empty(len(offsets), *cells)
    for index, offset in enumerate(offsets.long().tolist()):
        window = padded[(slice(None),) + tuple(slice(r + o, r + o + n) for o, n in zip(offset, cells))]
        cost[index] = (window - fixed_cells).pow(2).sum(0)
    return _smooth(cost), offsets


def coupled_convex(cost: torch.Tensor, offsets: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The displacement (d, *cells), in cells, minimising cost + λ·‖u − ū‖² by alternating the per-cell argmin
    with ū = smoothed u over :data:`COUPLING` (scaled by the cost's typical spread ``scale``, default its std)."""
    scale = float(cost.std()) if scale is None else scale
    # ties (a cell without structure costs the same everywhere) go to the smallest displacement
    flat = cost.reshape(len(offsets), -1) + 1e-6 * scale * (offsets ** 2).sum(1, keepdim=True)
    choice = flat.argmin(0)
    cells = cost.shape[1:]
    smooth = _smooth(offsets[choice].T.reshape(-1, *cells))
    for coupling in COUPLING:
        distance = ((offsets[:, :, None] - smooth.reshape(1, offsets.shape[1], -1)) ** 2).sum(1)  # (O, cells)
        choice = (flat + coupling * scale * distance).argmin(0)
        smooth = _smooth(offsets[choice].T.reshape(-1, *cells))
    return smooth
