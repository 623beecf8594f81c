"""A discrete search for large local displacements, regularised by coupled convex steps (ConvexAdam's first step).

Both images' channels (ROI pairs, model features, MIND-SSC) are given on one working grid: the fixed ones as they
are, the moving ones sampled through the affine. For every cell (``cell_voxels`` voxels along each axis) the cost
of each integer displacement within ``radius_cells`` cells along each axis is the cell's mean squared channel
difference; the field is then the argmin of cost + λ·‖u − ū‖², alternated with ū = a smoothed u for growing λ
(Heinrich et al., "Globally optimal deformable registration on a minimum spanning tree using dense displacement
sampling", and Siebert, Hansen and Heinrich, "Fast 3D registration with accurate optimisation and little
learning", ConvexAdam, MICCAI L2R 2021).

Written here rather than called from the ``convexadam`` package: its ``correlate`` and ``coupled_convex`` are 3D
only (``avg_pool3d``, an ``unfold`` over two axes), index displacements in its own voxel order and take one cell
size and radius for all axes, while the same step must run on 2D slides and photographs and on anisotropic
working grids (a chest CT's 10 mm slices beside 5 mm pixels), where a radius in cells must differ per axis to be
one radius in millimetres. The cost volume holds offsets × cells values: :func:`discrete_geometry` keeps it within
a memory budget by choosing coarser cells, and both steps work in chunks so no temporary exceeds it.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: the coupling weights of the successive convex steps (ConvexAdam's schedule, relative to the cost's scale)
COUPLING = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: the most offsets × cells the cost volume may hold (4 bytes each: 400 MB); coarser cells beyond it
MAX_COST_ENTRIES = 100_000_000
#: the most values one chunk of the convex step's (offsets × cells) temporaries may hold
CHUNK_ENTRIES = 8_000_000


@dataclass(frozen=True)
class DiscreteGeometry:
    """Cells and search radius of the discrete step, per axis in numpy order (a working grid's array axes)."""
    cell_voxels: tuple[int, ...]
    radius_cells: tuple[int, ...]
    cells: tuple[int, ...]

    @property
    def offsets(self) -> int:
        return math.prod(2 * r + 1 for r in self.radius_cells)

    def cell_mm(self, spacing_numpy: np.ndarray) -> list[float]:
        return [float(c * s) for c, s in zip(self.cell_voxels, spacing_numpy)]


def discrete_geometry(shape: tuple[int, ...], spacing_numpy: np.ndarray, cell_mm: float, radius_mm: float,
                      max_entries: int = MAX_COST_ENTRIES) -> DiscreteGeometry:
    """Cells of about ``cell_mm`` along every axis of a grid of ``shape`` (numpy order) and spacing
    ``spacing_numpy`` (mm, numpy order), at least one voxel, and a radius of about ``radius_mm`` (at least one
    cell) along each; while offsets × cells > ``max_entries`` the axis with the finest cells grows by a voxel
    (the radius in mm is kept, so a coarser cell also means fewer offsets)."""
    spacing_numpy = np.asarray(spacing_numpy, dtype=float)
    cell_voxels = [int(max(1, min(n, round(cell_mm / s)))) for n, s in zip(shape, spacing_numpy)]
    while True:
        radius = tuple(int(max(1, round(radius_mm / (c * s)))) for c, s in zip(cell_voxels, spacing_numpy))
        geometry = DiscreteGeometry(tuple(cell_voxels), radius, tuple(n // c for n, c in zip(shape, cell_voxels)))
        growable = [axis for axis, (c, n) in enumerate(zip(cell_voxels, shape)) if c < n]
        if geometry.offsets * math.prod(geometry.cells) <= max_entries or not growable:
            return geometry
        cell_voxels[min(growable, key=lambda axis: cell_voxels[axis] * spacing_numpy[axis])] += 1


def _pool(values: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Mean over cells of ``size`` voxels (C, *shape) → (C, *cells), any dimension (edges cropped)."""
    pool = F.avg_pool3d if values.dim() == 4 else F.avg_pool2d
    return pool(values[None], size, stride=size)[0]


def _smooth(values: torch.Tensor) -> torch.Tensor:
    """A 3-cell box mean along every axis (C, *cells), edges replicated."""
    dimension = values.dim() - 1
    pool = F.avg_pool3d if dimension == 3 else F.avg_pool2d
    padded = F.pad(values[None], [1, 1] * dimension, mode="replicate")
    return pool(padded, 3, stride=1)[0]


def cost_volume(fixed: torch.Tensor, moving: torch.Tensor, cell_voxels: tuple[int, ...],
                radius_cells: tuple[int, ...], weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cost (O, *cells), offsets (O, d) in cells, numpy axis order): for each cell, the weighted mean squared
    difference of the cell-pooled channels ``fixed`` (C, *shape) and ``moving`` (C, *shape) shifted by each
    integer offset within ``radius_cells`` (per axis), smoothed over neighbouring cells; a shift that leaves the
    moving grid costs as an empty moving cell."""
    dimension = fixed.dim() - 1
    channel_weights = weights.view(-1, *[1] * dimension)
    fixed_cells = _pool(fixed, tuple(cell_voxels)) * channel_weights
    moving_cells = _pool(moving, tuple(cell_voxels)) * channel_weights
    padded = F.pad(moving_cells, [p for r in reversed(radius_cells) for p in (r, r)])
    cells = fixed_cells.shape[1:]
    offsets = torch.tensor(list(itertools.product(*[range(-r, r + 1) for r in radius_cells])), dtype=torch.float32)
    cost = torch.empty(len(offsets), *cells)
    for index, offset in enumerate(offsets.long().tolist()):
        window = padded[(slice(None),) + tuple(slice(r + o, r + o + n)
                                               for o, r, n in zip(offset, radius_cells, cells))]
        cost[index] = _smooth((window - fixed_cells).pow(2).sum(0, keepdim=True))[0]
    return cost, offsets


def _argmin_coupled(cost: torch.Tensor, offsets: torch.Tensor, smooth: torch.Tensor | None, weight: float,
                    tie: float) -> torch.Tensor:
    """Per cell, the offset index minimising cost (O, cells) + weight·‖offset − smooth‖² (smooth (d, cells)) +
    tie·‖offset‖², in chunks of cells (no temporary of the cost's size); ‖o − s‖² = ‖o‖² − 2 o·s + ‖s‖², whose
    last term is the same for every offset."""
    choice = torch.empty(cost.shape[1], dtype=torch.long)
    step = max(1, CHUNK_ENTRIES // len(offsets))
    squared = (offsets ** 2).sum(1, keepdim=True)
    for start in range(0, cost.shape[1], step):
        part = cost[:, start:start + step] + tie * squared
        if smooth is not None:
            part += weight * (squared - 2 * offsets @ smooth[:, start:start + step])
        choice[start:start + step] = part.argmin(0)
    return choice


def coupled_convex(cost: torch.Tensor, offsets: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The displacement (d, *cells), in cells, minimising cost + λ·‖u − ū‖² by alternating the per-cell argmin
    with ū = smoothed u over :data:`COUPLING` (scaled by the cost's typical spread ``scale``, default its std)."""
    scale = float(cost.std()) if scale is None else scale
    cells = cost.shape[1:]
    flat = cost.reshape(len(offsets), -1)
    tie = 1e-6 * scale  # ties (a cell without structure costs the same everywhere) go to the smallest displacement
    smooth = _smooth(offsets[_argmin_coupled(flat, offsets, None, 0.0, tie)].T.reshape(-1, *cells))
    for coupling in COUPLING:
        choice = _argmin_coupled(flat, offsets, smooth.reshape(offsets.shape[1], -1), coupling * scale, tie)
        smooth = _smooth(offsets[choice].T.reshape(-1, *cells))
    return smooth
