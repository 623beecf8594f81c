"""The view interface: an image as a model sees it, with exact maps to physical space.

A view resamples its image onto a working grid (see :mod:`.grid`), encodes what is visited (lazily, through
the model's cache) and turns prompts into regions. Everything the prompting layer needs is here, in
physical terms: regions are boolean masks on the view's grid, shaped (K, R, C) (a 2D image has K = 1);
points cross the boundary in LPS millimetres. Slice stacks (2D models) and cubes (native-3D models) are two
implementations; inverse prompting, gates and pairs are written once against this interface.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.grid import Grid, resample_mask
from ..core.image import Image, require_inside
from ..core.progress import Progress, ignore
from ..errors import PromptError


@dataclass
class Seed:
    """A candidate region before it is grown: ``mask`` on the view grid, predicted IoU, and its prompt."""

    mask: np.ndarray
    iou: float
    prompt_lps: np.ndarray
    slice_index: int
    state: object = None      # the view's own record of how it was decoded (a box, a cube and its logits)
    window: int = 0           # which of the view's intensity windows the model saw it in (SliceView.windows)


@dataclass
class ROI:
    """A region in one image: ``mask`` (K, R, C) on the view grid, its predicted IoU and its prompt."""

    mask: np.ndarray
    iou: float
    prompt_lps: np.ndarray
    seed_slice: int
    info: dict = field(default_factory=dict)

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())


def empty_roi(view: "View", prompt_lps: np.ndarray) -> ROI:
    return ROI(np.zeros(view.shape, dtype=bool), 0.0, np.asarray(prompt_lps, dtype=float), view.shape[0] // 2)


class View(ABC):
    """An image seen by a model on a working grid (``grid``; numpy arrays (K, R, C))."""

    image: Image
    grid: Grid
    intensities01: np.ndarray       # (K, R, C) float32 in [0, 1], the model's view of the image
    window: tuple[float, float]     # intensity window mapped to [0, 1]
    unit_mm: float = 1.0            # this view's mm per fixed-view mm (photographs of other pixel sizes: make_views)
    progress: Progress = staticmethod(ignore)  # told how encoding proceeds (core.progress)

    # --- geometry, shared -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return self.intensities01.shape

    @property
    def spacing_mm(self) -> np.ndarray:
        """Millimetres per voxel step along (K, R, C); inf along K for a 2D image."""
        spacing = list(self.grid.spacing[::-1])
        return np.array(spacing if len(spacing) == 3 else [np.inf, *spacing])

    def voxel_to_lps(self, voxels: np.ndarray) -> np.ndarray:
        """Continuous (k, r, c) voxel coordinates (N, 3) → LPS (N, d)."""
        voxels = np.atleast_2d(np.asarray(voxels, dtype=float))
        return self.grid.numpy_index_to_lps(voxels if self.grid.dimension == 3 else voxels[:, 1:])

    def lps_to_voxel(self, points_lps: np.ndarray) -> np.ndarray:
        """LPS (N, d) → continuous (k, r, c) voxel coordinates (N, 3)."""
        index = self.grid.lps_to_numpy_index(np.atleast_2d(points_lps))
        return index if self.grid.dimension == 3 else np.concatenate([np.zeros((len(index), 1)), index], axis=1)

    def points_lps(self) -> np.ndarray:
        """LPS position of every voxel, (K, R, C, d) float32 (computed once)."""
        if getattr(self, "_points_lps", None) is None:
            points = self.grid.points_lps()
            self._points_lps = points if self.grid.dimension == 3 else points[None]
        return self._points_lps

    def centroid_lps(self, mask: np.ndarray) -> np.ndarray:
        return self.voxel_to_lps(np.argwhere(mask).mean(axis=0)[None])[0]

    def volume_mm3(self, mask: np.ndarray) -> float:
        return float(mask.sum() * self.grid.voxel_volume)

    def largest_section_mm2(self, mask: np.ndarray) -> float:
        """Largest cross-section across K (the slicing axis for slice views), in mm²."""
        return float(mask.sum(axis=(1, 2)).max() * self.spacing_mm[1] * self.spacing_mm[2])

    def half_extent_mm(self, mask: np.ndarray) -> np.ndarray:
        """Half the region's extent along (K, R, C) in mm (a 2D image: 0 along K)."""
        voxels = np.argwhere(mask)
        extent = (voxels.max(0) - voxels.min(0) + 1) * np.where(np.isfinite(self.spacing_mm), self.spacing_mm, 0)
        return extent / 2.0

    def check_prompt(self, point_lps: np.ndarray) -> np.ndarray:
        """The prompt as an LPS point of this image's dimension; :class:`PromptError` if it lies outside."""
        point = np.asarray(point_lps, dtype=float).ravel()
        if point.size == 3 and self.image.dimension == 2:
            point = point[:2]
        if point.size != self.image.dimension:
            raise PromptError(f"prompt {_plain(point)} has {point.size} coordinates but {self.image.source} is "
                              f"{self.image.dimension}D.")
        require_inside(self.image, point)
        return point

    def _on_grid(self, mask: np.ndarray) -> np.ndarray:
        return mask if self.grid.dimension == 3 else mask[0]

    def to_image_mask(self, mask: np.ndarray) -> np.ndarray:
        """A region on the view grid → a boolean mask on the original image grid (numpy order)."""
        return resample_mask(self._on_grid(mask), self.grid, Grid.of(self.image))

    def from_image_mask(self, image_mask: np.ndarray) -> np.ndarray:
        """A boolean mask on the original image grid (numpy order) → a region on the view grid (K, R, C)."""
        mask = resample_mask(np.asarray(image_mask, dtype=bool), Grid.of(self.image), self.grid)
        return mask if self.grid.dimension == 3 else mask[None]

    def mask_image(self, mask: np.ndarray) -> Image:
        """A region as a float32 :class:`Image` on the working grid (its geometry travels with it)."""
        return Image(self.grid.image(self._on_grid(mask).astype(np.float32)), self.image.source)

    # --- windows: where a similarity map is computed ---------------------------------------------------
    def search_window(self, expected_lps: np.ndarray):
        """Where to compute similarity for a search around ``expected_lps`` (None: the whole view)."""
        return None

    def near_window_edge(self, window, voxel: tuple[int, int, int]) -> bool:
        """Whether a peak at ``voxel`` lies so close to the window's edge that the window should move."""
        return False

    def warp_stability(self, roi: ROI, warps: int, rng: np.random.Generator, options) -> float | None:
        """Mean Dice of ROI X with its re-segmentation under small random warps (None: not supported)."""
        return None

    def feature_volume(self) -> tuple[torch.Tensor, Grid] | None:
        """The model's unit-normalised features over the whole image, (C, *grid shape), on a grid in physical
        space, for dense refinement (None: this view cannot provide them)."""
        return None

    # --- the model --------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def encoded(self) -> int:
        """How many slices or cubes this view has encoded (cache hits included)."""

    @abstractmethod
    def prototype(self, mask: np.ndarray) -> torch.Tensor:
        """Unit feature prototype (C,) of a region (mask (K, R, C))."""

    @abstractmethod
    def similarity(self, prototypes: list[torch.Tensor], window=None) -> np.ndarray:
        """Cosine similarity of each prototype with the features at every voxel, (P, K, R, C); voxels
        outside ``window`` (or outside the image) are -inf."""

    @abstractmethod
    def seed_from_point(self, point_lps: np.ndarray, other_windows: bool = True) -> Seed:
        """The region a click points at (one slice for slice views, the region for cubes)."""

    @abstractmethod
    def seed_from_box(self, corners_lps: np.ndarray) -> tuple[Seed, tuple[int, int]]:
        """The region inside a box given by two opposite LPS corners, and the K range the box spans."""

    @abstractmethod
    def seeds_at(self, peaks: list[tuple[int, int, int]], half_extent_mm: np.ndarray, score: np.ndarray,
                 window=None) -> list[Seed]:
        """Candidate regions prompted at similarity peaks (voxels), sized like a region of ``half_extent_mm``
        (along K, R, C), using the weighted ``score`` map (K, R, C) to centre each prompt."""

    @abstractmethod
    def seed_sized_at(self, point_lps: np.ndarray, half_extent_mm: np.ndarray) -> Seed:
        """The region at a point given as corresponding to another region (a user's Prompt Y), prompted as inverse
        prompting prompts a peak: sized like a region of ``half_extent_mm`` (along K, R, C)."""

    def seed_at_expected(self, point_lps: np.ndarray, half_extent_mm: np.ndarray) -> Seed | None:
        """The region where a mapping expects another region (inverse prompting's candidate beside the similarity
        peaks), prompted like a peak; None where the point lies outside the image."""
        if not self.image.contains(np.asarray(point_lps, dtype=float)[None])[0]:
            return None
        return self.seed_sized_at(point_lps, half_extent_mm)

    @abstractmethod
    def grow(self, seeds: list[Seed], k_ranges: list[tuple[int, int]] | None = None) -> list[ROI]:
        """Complete seeds into regions (slice views propagate through slices; cubes refine once)."""


def _plain(values) -> tuple:
    """Numbers as plain rounded floats for messages (never numpy reprs)."""
    return tuple(round(float(v), 1) for v in np.ravel(values))
