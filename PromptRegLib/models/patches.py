"""Weight-free, deterministic test backends: ``test-patches`` (slices, 128²) and ``test-patches-3d`` (cubes, 32³).

They stand in for the SAM models where tests need geometry, inverse prompting, the cycle check and the fit
to run on synthetic images in milliseconds. Nothing is learned; every number below is fixed.

**Features** (one recipe for 2D and 3D, on intensities in [0, 1]: slices as windowed, cubes z-scored over
the cube with z = −3 … 3 mapped to 0 … 1; 128² → 32² cells, 32³ → 8³): a Gaussian pre-smoothing
(σ = 0.7 px), then for each cell of the grid (4 px or voxels, so cell ``j`` covers pixels ``4j … 4j + 3``
exactly as ``adaptive_avg_pool`` to ``S/4`` cells assumes) 32 channels, each a ``tanh`` in [−1, 1]:

- 8 *intensity* channels: the cell's mean against 8 evenly spaced levels (1/16 … 15/16, width 0.06): a
  soft thermometer code, so cells of similar brightness agree and distant brightness gives cosine ≈ 0;
- 4 *contrast* channels: the cell's standard deviation against levels 0.01 … 0.12 (log scale, a factor
  e^0.5 per unit);
- 4 *edge* channels: the cell's mean gradient magnitude against levels 0.005 … 0.06 per px (log scale);
- 16 *pattern* channels: a fixed random projection (``torch.Generator`` seed 0) of the 6-px patch around
  the cell (6² or 6³, stride 4, edges replicated), each kernel averaged over the patch's symmetry group
  (flips and axis swaps: 8 in 2D, 48 in 3D), zero-sum and of unit norm, divided by 0.1 before the tanh.

Why: the first three groups are rotation-invariant statistics; the symmetrised random kernels are themselves
unchanged by flips and 90° turns and nearly isotropic otherwise (centre–surround profiles), where a plain
random projection would not be. So a flipped, turned or shifted copy of an image has (up to grid
alignment) the same features at the moved places, as the pipeline expects of SAM features. Statistics
are over the cell itself, not an 8-px patch: with 8-px patches every cell whose patch touched a boundary
dropped out of the region (measured with this decoder on 12 discs of radius 8–22 px in 128² and 12 balls
of radius 8–12 voxels in 32³: worst Dice 0.49 / 0.39 with 8-px statistics, 0.82 / 0.82 with 4-px cells).

**Decoder** (region growing on the feature grid): seeds are the cell nearest the box centre plus the
cells within the box's central quarter (``box``), and the cells nearest the positive points; the
*prototype* is the normalised mean unit feature of the seeds. The region is every cell connected to a
seed (face neighbours) whose unit feature has cosine ≥ ``threshold`` (0.7) with the prototype, inside the
*bound* (the box grown by 20 %, or the whole grid), and not *blocked*: a negative point's cell, and every
cell more similar to a negative point's feature than to the prototype. A second pass grows again from the
seeds with the first region's mean feature as prototype. Cells that straddle the object's boundary are
mostly excluded, so the region ends inside the object; its *ring* (the cells around it, face or corner
neighbours, in the bound and not blocked) are such mixed cells. Logits: region cells 1, ring cells 0,
others −1, upsampled bilinearly (trilinearly) to the input and scaled by 10, so the boundary runs through
the ring's cell centres. The predicted IoU is the region's mean cosine with the prototype times
(1 − ½ · the share of the bound's edge cells that the region covers): a region that fills its box or
floods to the grid border scores low. One candidate per prompt (M = 1). A 3D ``previous_logits`` adds
its positive cells to the first prototype.

**Limits**: the grid is 4 px (4 voxels) per cell, so boundaries are placed to about a cell's width and
structures under ~2 cells are lost; a box whose centre lies outside its object (a ring) seeds the wrong
region; regions are as homogeneous as the threshold allows (objects whose brightness drifts split, and
touching objects of similar brightness merge); the zero padding of a non-square slice is a dark region
like any other; cubes are z-scored over the whole cube, so the same tissue in two cubes of different
content is mapped to slightly different intensities.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from .base import EncoderWork, PromptableSegmenter
from .cache import EmbeddingCache

#: bump when the feature recipe changes: it is part of every cache key
RECIPE_VERSION = 1
SEED = 0
STRIDE = 4                 # pixels (voxels) per cell
PATTERN_PATCH = 6
SMOOTH_SIGMA_PX = 0.7
INTENSITY_LEVELS, INTENSITY_WIDTH = torch.linspace(1 / 16, 15 / 16, 8), 0.06
CONTRAST_LEVELS = torch.tensor([0.01, 0.03, 0.06, 0.12])
EDGE_LEVELS = torch.tensor([0.005, 0.015, 0.03, 0.06])
LOG_WIDTH = 0.5            # a factor e^0.5 ≈ 1.65 above or below a level reaches tanh's knee
PATTERN_CHANNELS, PATTERN_SCALE = 16, 0.1
GROW_FRACTION = 0.2        # a box prompt bounds its region grown by this fraction of its size
SEED_FRACTION = 0.25       # cells within this central fraction of a box's size seed its region
LOGIT_SCALE = 10.0
GROWING_PASSES = 2         # the second pass grows again with the first region's mean feature as prototype
Z_SCORE_SPAN = 6.0         # cubes: z-scores −3 … 3 map to intensities 0 … 1


def _conv(dims: int):
    return F.conv2d if dims == 2 else F.conv3d


def _avg_pool(dims: int):
    return F.avg_pool2d if dims == 2 else F.avg_pool3d


def symmetric_kernels(count: int, dims: int, seed: int = SEED) -> torch.Tensor:
    """``count`` random kernels (count, 1, 6, 6[, 6]), each averaged over every flip and axis permutation,
    zero-sum and of unit norm; the same for every call with the same seed."""
    generator = torch.Generator().manual_seed(seed)
    kernels = torch.randn(count, *(PATTERN_PATCH,) * dims, generator=generator, dtype=torch.float64)
    axes = list(range(1, dims + 1))
    symmetric = torch.zeros_like(kernels)
    for order in itertools.permutations(axes):
        permuted = kernels.permute(0, *order)
        for flip_count in range(dims + 1):
            for flipped in itertools.combinations(axes, flip_count):
                symmetric += permuted.flip(flipped) if flipped else permuted
    symmetric -= symmetric.mean(dim=axes, keepdim=True)
    symmetric /= symmetric.flatten(1).norm(dim=1).reshape(-1, *(1,) * dims)
    return symmetric.float()[:, None]


def _smooth(volume: torch.Tensor, dims: int) -> torch.Tensor:
    """Separable Gaussian blur (σ = SMOOTH_SIGMA_PX) of (B, 1, *spatial), edges replicated."""
    radius = math.ceil(2 * SMOOTH_SIGMA_PX)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / SMOOTH_SIGMA_PX) ** 2)
    taps = (taps / taps.sum()).to(volume.device)
    for axis in range(dims):
        shape = [1, 1] + [1] * dims
        shape[2 + axis] = taps.numel()
        padding = [0, 0] * dims
        padding[2 * (dims - 1 - axis): 2 * (dims - 1 - axis) + 2] = [radius, radius]
        volume = _conv(dims)(F.pad(volume, padding, mode="replicate"), taps.reshape(shape))
    return volume


def _levels(values: torch.Tensor, levels: torch.Tensor, log_scale: bool) -> torch.Tensor:
    """(B, 1, *grid) statistics → (B, len(levels), *grid) soft thermometer code in [−1, 1]."""
    shape = (1, -1) + (1,) * (values.dim() - 2)
    levels = levels.to(values.device).reshape(shape)
    if log_scale:
        return torch.tanh(torch.log((values + 1e-6) / levels) / LOG_WIDTH)
    return torch.tanh((values - levels) / INTENSITY_WIDTH)


def patch_features(volume_01: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Intensities (B, 1, *spatial) in [0, 1] → features (B, 32, *spatial/4) (the recipe in the module doc)."""
    dims = volume_01.dim() - 2
    smoothed = _smooth(volume_01.float(), dims)
    gradient = torch.stack(torch.gradient(smoothed, dim=tuple(range(2, 2 + dims)))).square().sum(0).sqrt()
    pool = _avg_pool(dims)
    mean = pool(smoothed, STRIDE)
    spread = smoothed - F.interpolate(mean, size=smoothed.shape[2:], mode="nearest")   # minus its cell's mean
    std = pool(spread.square(), STRIDE).sqrt()
    edge = pool(gradient, STRIDE)
    padding = [(PATTERN_PATCH - STRIDE) // 2] * (2 * dims)
    pattern = _conv(dims)(F.pad(smoothed, padding, mode="replicate"), kernels, stride=STRIDE)
    return torch.cat([_levels(mean, INTENSITY_LEVELS, False), _levels(std, CONTRAST_LEVELS, True),
                      _levels(edge, EDGE_LEVELS, True), torch.tanh(pattern / PATTERN_SCALE)], dim=1)


def _dilate(cells: torch.Tensor, corners: bool = False) -> torch.Tensor:
    """Boolean (B, *grid) grown by one cell: to face neighbours, or with ``corners`` to all neighbours."""
    grown = cells.clone()
    for axis in range(1, cells.dim()):
        source = grown.clone() if corners else cells
        length = cells.shape[axis]
        grown.narrow(axis, 1, length - 1).logical_or_(source.narrow(axis, 0, length - 1))
        grown.narrow(axis, 0, length - 1).logical_or_(source.narrow(axis, 1, length - 1))
    return grown


def _edge_cells(bound: torch.Tensor) -> torch.Tensor:
    """Cells of ``bound`` with a face neighbour outside it or on the grid's outer faces."""
    border = torch.zeros_like(bound)
    for axis in range(1, bound.dim()):
        border.narrow(axis, 0, 1).fill_(True)
        border.narrow(axis, bound.shape[axis] - 1, 1).fill_(True)
    return bound & (_dilate(~bound) | border)


def _grow(unit: torch.Tensor, seeds: torch.Tensor, prototype_cells: torch.Tensor, bound: torch.Tensor,
          negatives: torch.Tensor, threshold: float):
    """One region-growing pass → (region, cosine with the prototype, blocked cells), all (B, *grid)."""
    prototype = F.normalize(torch.einsum("bc...,b...->bc", unit, prototype_cells.float()), dim=1)
    cosine = torch.einsum("bc...,bc->b...", unit, prototype)
    blocked = negatives.clone()
    for b in range(len(seeds)):
        if negatives[b].any():
            negative_unit = unit[b].flatten(1)[:, negatives[b].flatten()]            # (C, n)
            closest_negative = torch.einsum("cn,c...->n...", negative_unit, unit[b]).amax(0)
            blocked[b] |= closest_negative > cosine[b]
    allowed = ((cosine >= threshold) & bound & ~blocked) | seeds
    region = seeds.clone()
    while True:
        grown = _dilate(region) & allowed
        if torch.equal(grown, region):
            return region, cosine, blocked
        region = grown


def grow_regions(features: torch.Tensor, seeds: torch.Tensor, bound: torch.Tensor, negatives: torch.Tensor,
                 threshold: float, prototype_cells: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Region growing on feature grids (the decoder rule in the module doc).

    ``features`` (B, C, *grid); ``seeds``, ``bound``, ``negatives`` and ``prototype_cells`` (cells whose mean
    feature is the first prototype; the seeds when None) are boolean (B, *grid). Returns cell maps (B, *grid):
    1 in the region, 0 on its ring, −1 elsewhere; and predicted IoU (B,), 0 for a prompt without seeds.
    """
    unit = F.normalize(features.float(), dim=1)
    region = seeds if prototype_cells is None else prototype_cells | seeds
    for _ in range(GROWING_PASSES):
        region, cosine, blocked = _grow(unit, seeds, region, bound, negatives, threshold)
    ring = _dilate(region, corners=True) & ~region & bound & ~blocked
    flat_region, flat_cosine = region.flatten(1).float(), cosine.flatten(1)
    mean_cosine = (flat_cosine * flat_region).sum(1) / flat_region.sum(1).clamp_min(1)
    edges = _edge_cells(bound | seeds).flatten(1).float()
    flooded = (edges * flat_region).sum(1) / edges.sum(1).clamp_min(1)
    score = mean_cosine.clamp(0, 1) * (1 - 0.5 * flooded)
    cells = region.float() - (~region & ~ring).float()
    return cells, torch.where(seeds.flatten(1).any(1), score, torch.zeros_like(score))


def region_logits(cells: torch.Tensor, size: int) -> torch.Tensor:
    """Cell maps (B, *grid) of 1 / 0 / −1 → logits (B, *(size,)*dims), (tri)linearly upsampled, × LOGIT_SCALE."""
    dims = cells.dim() - 1
    signed = cells[:, None]
    mode = "bilinear" if dims == 2 else "trilinear"
    return F.interpolate(signed, size=(size,) * dims, mode=mode, align_corners=False)[:, 0] * LOGIT_SCALE


def points_to_cells(points: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Model pixel/voxel indices (..., d) in array axis order → the nearest cell's index (long)."""
    return torch.round((points - (STRIDE - 1) / 2) / STRIDE).long().clamp(0, grid_size - 1)


def _cell_centres(grid_size: int, device) -> torch.Tensor:
    """Model pixel index of each cell's centre along one axis."""
    return torch.arange(grid_size, dtype=torch.float32, device=device) * STRIDE + (STRIDE - 1) / 2


def _mark(cells: torch.Tensor, indices: torch.Tensor, chosen: torch.Tensor) -> None:
    """Set ``cells[b, *indices[b, n]]`` for every ``chosen[b, n]``."""
    batch, count = chosen.shape
    rows = torch.arange(batch, device=cells.device)[:, None].expand(batch, count)[chosen]
    picked = indices[chosen]
    cells[(rows, *picked.unbind(-1))] = True


def point_cells(points: torch.Tensor, labels: torch.Tensor, grid_shape: tuple[int, ...]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (B, N, d) in array axis order, labels (B, N) (1 positive, 0 negative, others ignored) →
    boolean seeds and negatives (B, *grid)."""
    seeds = torch.zeros(len(points), *grid_shape, dtype=torch.bool, device=points.device)
    negatives = torch.zeros_like(seeds)
    cells = points_to_cells(points, grid_shape[0])
    _mark(seeds, cells, labels == 1)
    _mark(negatives, cells, labels == 0)
    return seeds, negatives & ~seeds


def box_cells(boxes_uv: torch.Tensor, grid_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (B, 4) as x0, y0, x1, y1 in model pixels → boolean seeds (the cell nearest the centre and the cells
    within the central quarter of the box) and bound (the cells within the box grown by GROW_FRACTION), (B, g, g)."""
    centres = _cell_centres(grid_size, boxes_uv.device)
    middle, size = (boxes_uv[:, :2] + boxes_uv[:, 2:]) / 2, (boxes_uv[:, 2:] - boxes_uv[:, :2]).abs()   # (x, y)

    def within(half_extent: torch.Tensor) -> torch.Tensor:
        near = (centres[None, :, None] - middle[:, None]).abs() <= half_extent[:, None]     # (B, g, 2)
        return near[:, :, None, 1] & near[:, None, :, 0]                                   # rows y, columns x

    seeds = within(size * SEED_FRACTION / 2)
    _mark(seeds, points_to_cells(middle.flip(-1), grid_size)[:, None],
          torch.ones(len(boxes_uv), 1, dtype=torch.bool, device=boxes_uv.device))
    return seeds, within(size * (1 + GROW_FRACTION) / 2)


def _check_no_checkpoint(name: str, checkpoint: str | None) -> None:
    if checkpoint:
        raise CheckpointError(f"{name} is a weight-free test backend and takes no checkpoint (got {checkpoint}).")


class PatchSlices(PromptableSegmenter):
    """Slices: 128² input, 32² grid of 32 patch features, boxes and points decoded by region growing."""

    name = "test-patches"
    input_size = 128
    supports_points = True
    supports_boxes = True

    def __init__(self, checkpoint: str | None = None, device: str = "cpu", cache: EmbeddingCache | None = None,
                 threshold: float = 0.7):
        _check_no_checkpoint(self.name, checkpoint)
        super().__init__(device, cache)
        self.checkpoint = None
        self.threshold = threshold
        self.kernels = symmetric_kernels(PATTERN_CHANNELS, 2).to(self.device)

    @property
    def cache_tag(self) -> str:
        return f"{self.name}-recipe{RECIPE_VERSION}"

    def _normalize(self, resized_01):
        return resized_01[None].expand(3, -1, -1)

    def _encode_inputs(self, inputs):
        return patch_features(inputs.mean(dim=1, keepdim=True), self.kernels)

    def _decode(self, features, boxes_uv, points_uv, point_labels):
        batch, grid = len(features), features.shape[-1]
        seeds = torch.zeros(batch, grid, grid, dtype=torch.bool, device=features.device)
        negatives = torch.zeros_like(seeds)
        bound = torch.ones_like(seeds)
        if boxes_uv is not None:
            seeds, bound = box_cells(boxes_uv, grid)
        if points_uv is not None:
            point_seeds, negatives = point_cells(points_uv.flip(-1), point_labels, (grid, grid))
            seeds |= point_seeds
            negatives &= ~seeds
        cells, iou = grow_regions(features, seeds, bound, negatives, self.threshold)
        return region_logits(cells, self.input_size)[:, None], iou[:, None]


class PatchCubes:
    """Cubes: 32³ at ``spacing_mm``, 8³ grid of 32 patch features, points decoded by 3D region growing
    (the interface of :class:`~PromptRegLib.models.sammed3d.SAMMed3D`)."""

    name = "test-patches-3d"
    native_3d = True
    supports_points = True
    supports_boxes = False
    cube_size = 32
    grid_size = 8

    def __init__(self, checkpoint: str | None = None, device: str = "cpu", cache: EmbeddingCache | None = None,
                 spacing_mm: float = 3.0, threshold: float = 0.7):
        _check_no_checkpoint(self.name, checkpoint)
        self.checkpoint = None
        self.device = torch.device(device)
        self.cache = cache if cache is not None else EmbeddingCache()
        self.spacing_mm = spacing_mm
        self.threshold = threshold
        self.encoder_work = EncoderWork()
        self.kernels = symmetric_kernels(PATTERN_CHANNELS, 3).to(self.device)

    @property
    def cache_tag(self) -> str:
        return f"{self.name}-recipe{RECIPE_VERSION}"

    def encode(self, cube: np.ndarray) -> torch.Tensor:
        """Raw intensities (32, 32, 32) → features (32, 8, 8, 8); z-scored over the cube, cached by content."""
        if np.shape(cube) != (self.cube_size,) * 3:
            raise ValueError(f"{self.name} encodes {self.cube_size}³ cubes, got {np.shape(cube)}")
        values = np.asarray(cube, dtype=np.float32)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{self.name} needs finite intensities; the cube holds NaN or infinity")
        spread = float(values.std())
        z_scored = (values - float(values.mean())) / (spread if spread > 1e-8 else 1.0)
        intensities = np.clip(0.5 + z_scored / Z_SCORE_SPAN, 0.0, 1.0).astype(np.float32)
        key = hashlib.sha1(self.cache_tag.encode() + intensities.tobytes()).hexdigest()
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        with torch.inference_mode():
            features = patch_features(torch.as_tensor(intensities, device=self.device)[None, None], self.kernels)
        features = features[0].float().cpu().clone()
        self.encoder_work.add(1, time.perf_counter() - started)
        self.cache.put(key, features)
        return features

    def decode(self, features: torch.Tensor, points: np.ndarray, labels: np.ndarray,
               previous_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """``points`` (B, N, 3) cube voxel coordinates (i, j, k), ``labels`` (B, N) 1/0 → logits (B, 32, 32, 32)
        and predicted IoU (B,). ``previous_logits`` (B, 32³): its positive cells join the prototype."""
        points_t = torch.as_tensor(np.asarray(points, dtype=np.float32), device=self.device)
        labels_t = torch.as_tensor(np.asarray(labels), device=self.device)
        if points_t.dim() != 3 or points_t.shape[-1] != 3 or labels_t.shape != points_t.shape[:2]:
            raise ValueError(f"points must be (B, N, 3) with labels (B, N); got {tuple(points_t.shape)} and "
                             f"{tuple(labels_t.shape)}")
        grid_shape = tuple(features.shape[-3:])
        with torch.inference_mode():
            seeds, negatives = point_cells(points_t, labels_t, grid_shape)
            previous = None
            if previous_logits is not None:
                pooled = F.adaptive_avg_pool3d(torch.as_tensor(previous_logits, device=self.device)[:, None].gt(0)
                                               .float(), grid_shape)[:, 0]
                previous = pooled > 0.5
            batch_features = features.to(self.device)[None].expand(len(points_t), *features.shape)
            cells, iou = grow_regions(batch_features, seeds, torch.ones_like(seeds), negatives, self.threshold,
                                      previous)
            logits = region_logits(cells, self.cube_size)
        return logits.float().cpu(), iou.float().cpu().numpy()


#: the registry's names for these backends
PATCH_MODELS = {PatchSlices.name: PatchSlices, PatchCubes.name: PatchCubes}
