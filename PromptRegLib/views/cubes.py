"""Cube views for native-3D models (SAM-Med3D): cubes at the model's spacing, in the model's orientation.

Regions live on a working grid whose axes are parallel to the model's cube axes (``model.cube_axes_lps``:
column a is the LPS direction of cube array axis a), at the model's spacing (coarser for very large images).
A cube is a ``cube_size``³ crop at ``model.spacing_mm`` centred on a point (snapped to a lattice so nearby
requests share one encoding), sampled from the original image by SimpleITK; every map between cube voxels,
working voxels and LPS millimetres goes through :class:`~PromptRegLib.core.grid.Grid`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.grid import Grid, covering_grid, resample_onto
from ..core.image import Image
from ..core.regions import clean_mask
from ..errors import Cancelled, InputImageError, PromptError
from .base import ROI, Seed, View
from .slices import intensity_window, windowed

#: cube orientation for models that do not say (``model.cube_axes_lps``): RAS+, as the public SAM-Med3D inference
DEFAULT_CUBE_AXES_LPS = np.diag([-1.0, -1.0, 1.0])
#: fraction of the half cube beyond which a peak makes the search window move to it
SLIDE_BEYOND = 0.625
MAX_WORKING_VOXELS = 4_000_000


@dataclass(eq=False)
class Cube:
    """One encoded cube: its grid (numpy order = cube array order) and features (C, g, g, g)."""

    grid: Grid
    features: torch.Tensor


class CubeView(View):
    """An image seen by a native-3D model through cubes."""

    def __init__(self, image: Image, model, cancel=None):
        if image.dimension != 3:
            raise InputImageError(f"{model.name} is a 3D model; {image.source} is 2D — use litemedsam or a SAM "
                                  "variant for 2D images.")
        self.image, self.model, self.cancel = image, model, cancel
        axes = np.asarray(getattr(model, "cube_axes_lps", DEFAULT_CUBE_AXES_LPS), dtype=float)
        self.direction = axes[:, ::-1]  # ITK (i, j, k) = cube array axes (2, 1, 0)
        image_grid = Grid.of(image)
        volume = float(np.prod(np.ptp(image_grid.corners_lps() @ self.direction, axis=0)))
        spacing = max(float(model.spacing_mm), (volume / MAX_WORKING_VOXELS) ** (1 / 3))
        self.grid = covering_grid(image_grid, self.direction, np.full(3, spacing))
        self.window = intensity_window(image.array)
        self.intensities01 = resample_onto(windowed(image, self.window), self.grid, 0.0)
        self._cubes: dict[tuple, Cube] = {}

    @property
    def encoded(self) -> int:
        return len(self._cubes)

    # --- cubes ------------------------------------------------------------------------------------------
    def cube_at(self, centre_lps: np.ndarray) -> Cube:
        """The cube centred on (a lattice point near) ``centre_lps``, encoded once."""
        step = float(self.model.spacing_mm)
        size = int(self.model.cube_size)
        lattice = np.round(self.direction.T @ np.asarray(centre_lps, dtype=float) / step)
        key = tuple(int(v) for v in lattice)
        if key not in self._cubes:
            if self.cancel and self.cancel():
                raise Cancelled("registration cancelled")
            centre = self.direction @ (lattice * step)
            origin = centre - self.direction @ np.full(3, (size - 1) / 2 * step)
            grid = Grid(origin, np.full(3, step), self.direction, (size,) * 3)
            values = resample_onto(self.image.sitk_image, grid, 0.0)  # the public inference pads with 0
            self._cubes[key] = Cube(grid, self.model.encode(values))
        return self._cubes[key]

    def _cube_coordinates(self, cube: Cube) -> tuple[tuple[slice, ...], np.ndarray]:
        """The working-grid box the cube covers, and each of its voxels' cube array coordinates (*box, 3)."""
        corners = self.lps_to_voxel(cube.grid.corners_lps())
        low = np.clip(np.floor(corners.min(0)), 0, np.array(self.shape) - 1).astype(int)
        high = np.clip(np.ceil(corners.max(0)) + 1, 0, np.array(self.shape)).astype(int)
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
        axes = [np.arange(s.start, s.stop, dtype=float) for s in box]
        voxels = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        coordinates = cube.grid.lps_to_numpy_index(self.voxel_to_lps(voxels))
        return box, coordinates.reshape(*[s.stop - s.start for s in box], 3)

    def _sample_cube_field(self, cube: Cube, field: torch.Tensor, cell_centred: bool, outside: float) -> np.ndarray:
        """A field over the cube (P, *g) → values at working voxels (P, K, R, C); ``outside`` beyond the cube.

        ``cell_centred``: the field's samples sit at cell centres (feature grids); else at cube voxel centres.
        """
        size = cube.grid.size[0]
        result = np.full((field.shape[0], *self.shape), outside, dtype=np.float32)
        box, coordinates = self._cube_coordinates(cube)
        if any(s.stop <= s.start for s in box):
            return result
        if cell_centred:
            normalised = 2.0 * (coordinates + 0.5) / size - 1.0
        else:
            normalised = 2.0 * coordinates / (size - 1) - 1.0
        grid = torch.as_tensor(normalised[..., ::-1].copy(), dtype=torch.float32)[None]  # (x, y, z) = axes (2, 1, 0)
        sampled = F.grid_sample(field[None].float(), grid, mode="bilinear", padding_mode="border",
                                align_corners=not cell_centred)[0].numpy()
        inside = np.all((coordinates >= -0.5) & (coordinates <= size - 0.5), axis=-1)
        result[(slice(None), *box)] = np.where(inside[None], sampled, outside)
        return result

    # --- features ---------------------------------------------------------------------------------------
    def prototype(self, mask: np.ndarray) -> torch.Tensor:
        """Unit features of the cube at the region's centroid, weighted by the region's voxels in each cell."""
        if not mask.any():
            raise ValueError("empty region has no prototype")
        cube = self.cube_at(self.centroid_lps(mask))
        cells = cube.features.shape[-1]
        coordinates = cube.grid.lps_to_numpy_index(self.voxel_to_lps(np.argwhere(mask).astype(float)))
        cell = np.floor((coordinates + 0.5) / cube.grid.size[0] * cells).astype(int)
        inside = np.all((cell >= 0) & (cell < cells), axis=1)
        flat = np.ravel_multi_index(cell[inside].T, (cells,) * 3)
        weights = torch.as_tensor(np.bincount(flat, minlength=cells ** 3), dtype=torch.float32).reshape((cells,) * 3)
        if float(weights.sum()) == 0:
            raise ValueError("region lies outside its cube")
        return F.normalize((F.normalize(cube.features.float(), dim=0) * weights).sum(dim=(1, 2, 3)), dim=0)

    def similarity(self, prototypes, window=None) -> np.ndarray:
        cube = window if window is not None else self.cube_at(self.image.physical_center())
        maps = torch.einsum("pc,cdhw->pdhw", torch.stack(list(prototypes)), F.normalize(cube.features.float(), dim=0))
        return self._sample_cube_field(cube, maps, cell_centred=True, outside=-np.inf)

    def search_window(self, expected_lps):
        return self.cube_at(expected_lps)

    def near_window_edge(self, window, voxel) -> bool:
        coordinates = window.grid.lps_to_numpy_index(self.voxel_to_lps(np.array([voxel], dtype=float)))[0]
        half = (window.grid.size[0] - 1) / 2
        return bool(np.abs(coordinates - half).max() > SLIDE_BEYOND * half)

    # --- decoding -------------------------------------------------------------------------------------
    def _decode(self, cube: Cube, points_lps: np.ndarray, previous_logits=None):
        points = cube.grid.lps_to_numpy_index(points_lps)[:, None]
        return self.model.decode(cube.features, points, np.ones((len(points), 1)), previous_logits)

    def _mask(self, cube: Cube, logits: torch.Tensor) -> np.ndarray:
        values = self._sample_cube_field(cube, logits[None], cell_centred=False, outside=-20.0)[0]
        return clean_mask(values > 0)

    def _seed(self, cube: Cube, logits: torch.Tensor, iou: float, prompt_lps: np.ndarray) -> Seed:
        k = int(np.clip(round(self.lps_to_voxel(prompt_lps[None])[0, 0]), 0, self.shape[0] - 1))
        return Seed(self._mask(cube, logits), float(iou), np.asarray(prompt_lps, dtype=float), k, (cube, logits))

    def seed_from_point(self, point_lps, other_windows: bool = True) -> Seed:
        point_lps = self.check_prompt(point_lps)
        cube = self.cube_at(point_lps)
        logits, iou = self._decode(cube, point_lps[None])
        return self._seed(cube, logits[0], iou[0], point_lps)

    def seed_from_box(self, corners_lps):
        raise PromptError(f"{self.model.name} takes point prompts only; give --prompt points instead of boxes.")

    def seeds_at(self, peaks, half_extent_mm, score, window=None) -> list[Seed]:
        """A positive point at each peak, moved below cell size to the centre of mass of the score around it."""
        cube = window if window is not None else self.cube_at(self.voxel_to_lps(np.array([peaks[0]]))[0])
        cell_voxels = max(1, int(round(cube.grid.spacing[0] * cube.grid.size[0] / cube.features.shape[-1]
                                       / self.grid.spacing[0])))
        points = self.voxel_to_lps(np.array([_refine_peak(score, p, cell_voxels) for p in peaks]))
        logits, iou = self._decode(cube, points)
        return [self._seed(cube, lg, s, p) for lg, s, p in zip(logits, iou, points)]

    def seed_sized_at(self, point_lps, half_extent_mm) -> Seed:
        """A positive point, as for a peak (SAM-Med3D takes no box; the region's size is the model's to find)."""
        return self.seed_from_point(point_lps)

    def grow(self, seeds, k_ranges=None) -> list[ROI]:
        """Each seed refined once with its own mask as the mask prompt (the auxiliary prompt), when that helps."""
        rois = []
        for seed in seeds:
            cube, logits = seed.state
            refined, refined_iou = self._decode(cube, seed.prompt_lps[None], logits[None])
            mask, iou = seed.mask, seed.iou
            if refined_iou[0] > seed.iou:
                refined_mask = self._mask(cube, refined[0])
                if refined_mask.any():
                    mask, iou = refined_mask, float(refined_iou[0])
            rois.append(ROI(mask, iou, seed.prompt_lps, seed.slice_index, {"native_3d": True}))
        return rois


def _refine_peak(weighted: np.ndarray, peak: tuple[int, int, int], radius: int) -> np.ndarray:
    """Sub-cell position of a peak: the centre of mass of the score above 70 % of the peak within ``radius``."""
    low = [max(0, p - radius) for p in peak]
    high = [min(n, p + radius + 1) for p, n in zip(peak, weighted.shape)]
    window = weighted[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
    mass = np.clip(np.nan_to_num(window, neginf=0.0) - 0.7 * weighted[peak], 0.0, None)
    if mass.sum() <= 0:
        return np.array(peak, dtype=float)
    coordinates = np.indices(window.shape).reshape(3, -1) + np.array(low)[:, None]
    return (coordinates * mass.ravel()).sum(axis=1) / mass.sum()
