"""Slice views for 2D models: an image resampled into a stack of canonically oriented slices.

The working grid (see :mod:`.grid`) slices along one LPS axis — chosen from the fixed image, the same for
the moving image — with square in-plane pixels, the same for both images (the larger field of view fills the
model's input, so the model sees both bodies at one physical scale), and slices no closer than ``slice_spacing_mm`` (never finer than the image's own sampling along that axis). Only
slices that prompts, searches and propagation visit are encoded, each once, through the model's cache.

Box-only models (LiteMedSAM) turn a click into a *box search*: boxes of several physical sizes centred on the
click are decoded, each box is re-fitted (twice) to its own mask, and the mask kept contains the click, fits
its box, scores the highest predicted IoU and, among ties, covers the whole object. A region grows slice by
slice from its seed (:meth:`SliceView.grow`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..core.grid import (
    SLICE_AXES_LPS,
    Grid,
    covering_grid,
    resample_onto,
    spacing_along,
)
from ..core.image import Image
from ..core.regions import box_iou, clean_mask, dice, expand_box, interpolate_masks, mask_box
from ..errors import Cancelled
from ..models.base import Embedding, PromptableSegmenter
from .base import ROI, Seed, View

#: half-widths (mm) of the boxes tried around a click
BOX_HALF_SIZES_MM = (8.0, 15.0, 25.0, 40.0, 60.0, 90.0, 130.0)


@dataclass
class SliceOptions:
    slice_spacing_mm: float = 5.0        # working slices at least this far apart (coarser storage stays coarser)
    box_half_sizes_mm: tuple[float, ...] = BOX_HALF_SIZES_MM
    min_iou: float = 0.5                 # propagation stops below this predicted IoU …
    min_overlap: float = 0.3             # … or when a slice's mask overlaps the previous one less than this
    min_step_similarity: float = 0.85    # … or its features stop resembling the previous slice's
    min_seed_similarity: float = 0.6     # … or the seed's
    box_margin: float = 0.1
    max_shrink: float = 0.05
    encode_spacing_mm: float = 0.0       # encoded slices this far apart at most (0: every working slice); see
                                         # SliceView.lattice
    window_per_click: bool = True        # a click on a CT in HU also tries the soft-tissue window (SliceView.windows)
    window_margin: float = 0.02          # … which must beat the default window's predicted IoU by this much


def _lattice_step(grid: Grid, encode_spacing_mm: float) -> int:
    """Working slices between encoded ones: as many as fit in ``encode_spacing_mm`` (1 in 2D or when it is 0)."""
    if grid.dimension == 2 or encode_spacing_mm <= 0:
        return 1
    return max(1, int(np.floor(encode_spacing_mm / float(grid.spacing[2]) + 1e-6)))


def intensity_window(array: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> tuple[float, float]:
    """Robust [low, high] for mapping to [0, 1].

    A padding value at the minimum (CT's -3024) is ignored, and for CT in Hounsfield units the window
    starts at air (-1024 HU), so lungs keep their contrast.
    """
    everything = np.asarray(array, dtype=np.float32).ravel()
    values = everything[:: everything.size // 1_000_000] if everything.size > 2_000_000 else everything
    minimum = values.min()
    if np.mean(values == minimum) > 0.01:
        values = values[values > minimum]
    low, high = np.percentile(values, [low_percentile, high_percentile])
    if minimum < -1000 and high < 4000:  # CT in Hounsfield units: nothing below air is anatomy
        low = max(low, -1024.0)
    if high <= low:  # few distinct values (masks, phantoms): the full range
        low, high = float(everything.min()), float(everything.max())
    return float(low), float(high)


#: the abdominal soft-tissue window (HU) MedSAM's own preprocessing uses for CT: from air, the organs of the abdomen
#: have almost no contrast for the model (five organ clicks on the abdomen CT: ROI X Dice 0.87/0.41/0.56/0.50/0.25
#: from air, 0.94/0.85/0.86/0.89/0.10 in this window; docs/benchmark.md)
SOFT_TISSUE_WINDOW_HU = (-160.0, 240.0)


def ct_in_hounsfield(array: np.ndarray, window: tuple[float, float]) -> bool:
    """Whether an image is a CT in Hounsfield units (its window starts at air, :func:`intensity_window`)."""
    return window[0] == -1024.0 or (float(np.min(array)) < -1000.0 and window[1] < 4000.0 and window[0] < -500.0)


def windowed(image: Image, window: tuple[float, float]) -> sitk.Image:
    """The image mapped to [0, 1] through ``window`` (clipped), float32 — before any resampling, so padding
    far below the window (CT's -3024) never bleeds into the anatomy's edge. One filter, so one full-resolution
    copy is made (a chain of arithmetic held two: 490 MB on a clinical CT grid)."""
    low, high = window
    source = image.sitk_image
    if source.GetPixelID() != sitk.sitkFloat32:
        source = sitk.Cast(source, sitk.sitkFloat32)
    return sitk.IntensityWindowing(source, low, high, 0.0, 1.0)


def in_plane_extent_mm(image_grid: Grid, axis_lps: int) -> float:
    """The longer side (mm) of the image's bounding box across slices along ``axis_lps`` (2D: in its plane)."""
    direction = np.eye(2) if image_grid.dimension == 2 else SLICE_AXES_LPS[axis_lps]
    return float(np.ptp(image_grid.corners_lps() @ direction, axis=0)[:2].max())


def slice_grid(image_grid: Grid, axis_lps: int, input_size: int, slice_spacing_mm: float,
               pixel_mm: float | None = None) -> Grid:
    """The working grid of a slice view: canonical axes for slicing along ``axis_lps`` (ignored in 2D), square
    pixels of ``pixel_mm`` (default: the image's longer side over the model's input size), and the longer
    in-plane side padded to the input size so the model sees it at exactly that scale."""
    pixel = pixel_mm or in_plane_extent_mm(image_grid, axis_lps) / input_size
    if image_grid.dimension == 2:
        grid = covering_grid(image_grid, np.eye(2), np.array([pixel, pixel]))
        long_side = int(np.argmax(grid.size))
        return covering_grid(image_grid, np.eye(2), np.array([pixel, pixel]),
                             [input_size if a == long_side else 1 for a in range(2)])
    direction = SLICE_AXES_LPS[axis_lps]
    between_slices = max(spacing_along(image_grid, direction[:, 2]), slice_spacing_mm)
    spacing = np.array([pixel, pixel, between_slices])
    grid = covering_grid(image_grid, direction, spacing)
    long_side = int(np.argmax(grid.size[:2]))
    return covering_grid(image_grid, direction, spacing, [input_size if a == long_side else 1 for a in range(3)])


class SliceView(View):
    """An image as a stack of slices for a 2D promptable model (LiteMedSAM, SAM)."""

    def __init__(self, image: Image, model: PromptableSegmenter, axis_lps: int,
                 options: SliceOptions | None = None, cancel=None, pixel_mm: float | None = None):
        self.image, self.model, self.axis_lps = image, model, axis_lps
        self.options = options or SliceOptions()
        self.cancel = cancel
        self.grid = slice_grid(Grid.of(image), axis_lps, model.input_size, self.options.slice_spacing_mm, pixel_mm)
        self.window = intensity_window(image.array)
        self.intensities01 = self._resampled(self.window)
        #: the intensity windows a click's region may be seen in: the image's own (index 0, which every feature
        #: map, similarity and dense term uses), and for a CT in HU the soft-tissue window too
        self.windows = [self.window] + ([SOFT_TISSUE_WINDOW_HU] if self.options.window_per_click
                                        and ct_in_hounsfield(image.array, self.window) else [])
        self._windowed = {0: self.intensities01}
        self._window_embeddings: dict[tuple[int, int], Embedding] = {}
        self.pixel_spacing = (float(self.grid.spacing[0]), float(self.grid.spacing[0]))
        self._embeddings: dict[int, Embedding] = {}
        self.lattice_step = _lattice_step(self.grid, self.options.encode_spacing_mm)
        self._lattice = set(range(0, self.shape[0], self.lattice_step))

    def _resampled(self, window: tuple[float, float]) -> np.ndarray:
        """The image through ``window`` on the working grid, (K, R, C) in [0, 1]."""
        values = resample_onto(windowed(self.image, window), self.grid, 0.0)
        return values[None] if self.grid.dimension == 2 else values

    def windowed_embeddings(self, slice_indices, windows) -> list[Embedding]:
        """Embeddings of the given slices, each in its window (index into :attr:`windows`; 0: :meth:`embeddings`).
        A slice in another window is encoded exactly where it is asked for (it is decoded there)."""
        result = {}
        default = [(n, k) for n, (k, w) in enumerate(zip(slice_indices, windows)) if w == 0]
        for (n, _), embedding in zip(default, self.embeddings([k for _, k in default])):
            result[n] = embedding
        for n, (k, w) in enumerate(zip(slice_indices, windows)):
            if w == 0:
                continue
            if (w, k) not in self._window_embeddings:
                if self.cancel and self.cancel():
                    raise Cancelled("registration cancelled")
                if w not in self._windowed:
                    self._windowed[w] = self._resampled(self.windows[w])
                self._window_embeddings[(w, k)] = self.model.encode([self._windowed[w][k]], self.pixel_spacing)[0]
            result[n] = self._window_embeddings[(w, k)]
        return [result[n] for n in range(len(slice_indices))]

    # --- the encoding policy ------------------------------------------------------------------------
    @property
    def lattice(self) -> list[int]:
        """The slices this view encodes: every ``lattice_step``-th working slice (``encode_spacing_mm`` apart at
        most) and every slice a click was made on. Between them a slice's features are the linear interpolation
        of its two lattice neighbours' (as Gu et al., arXiv 2507.11569, interpolate SAM features for registration),
        and regions grow from lattice slice to lattice slice with their masks interpolated in between."""
        return sorted(self._lattice)

    def add_to_lattice(self, k: int) -> None:
        """Encode slice ``k`` itself from now on (a click's slice: what the user pointed at is seen exactly)."""
        self._lattice.add(int(k))

    def _neighbours(self, k: int) -> tuple[int, int]:
        """The lattice slices around ``k`` (``k`` twice when it is one; the nearest one twice past either end)."""
        lattice = self.lattice
        if k in self._lattice:
            return k, k
        below, above = [j for j in lattice if j < k], [j for j in lattice if j > k]
        low, high = (below[-1] if below else above[0]), (above[0] if above else below[-1])
        return low, high

    def _interpolated(self, k: int) -> Embedding:
        low, high = self._neighbours(k)
        if low == high:
            return self._embeddings[low]
        t = (k - low) / (high - low)
        features = (1 - t) * self._embeddings[low].features + t * self._embeddings[high].features
        return Embedding(features, self._embeddings[low].geometry)

    def lattice_gap(self, k: int, direction: int) -> int:
        """Working slices from lattice slice ``k`` back to the lattice slice before it (``direction``: the way the
        region grew to ``k``)."""
        before = self.next_slice(k, -direction)
        return abs(k - before) if before is not None else 1

    def nearest_lattice_slice(self, k: int) -> int:
        """The lattice slice nearest ``k`` (a similarity peak between lattice slices is decoded on it)."""
        return min(self.lattice, key=lambda j: (abs(j - k), j))

    def next_slice(self, k: int, direction: int) -> int | None:
        """The next lattice slice after ``k`` in ``direction`` (+1 or −1), or None past the end."""
        ahead = [j for j in self.lattice if (j - k) * direction > 0]
        return (min(ahead) if direction > 0 else max(ahead)) if ahead else None

    @property
    def encoded(self) -> int:
        return len(self._embeddings) + len(self._window_embeddings)

    def embeddings(self, slice_indices) -> list[Embedding]:
        """Embeddings of the given slices, encoding (through the model's cache) those not yet held."""
        slice_indices = [int(k) for k in slice_indices]
        todo = sorted({j for k in slice_indices for j in self._neighbours(k) if j not in self._embeddings})
        for done, k in enumerate(todo):
            if self.cancel and self.cancel():
                raise Cancelled("registration cancelled")
            if len(todo) > 1:
                self.progress(f"encoding {Path(self.image.source).name}", None, done, len(todo), "slices")
            self._embeddings[k] = self.model.encode([self.intensities01[k]], self.pixel_spacing)[0]
        return [self._interpolated(k) for k in slice_indices]

    # --- features ---------------------------------------------------------------------------------------
    def _feature_sum(self, embedding: Embedding, mask2d: np.ndarray) -> torch.Tensor:
        weights = embedding.geometry.slice_to_grid(torch.as_tensor(mask2d, dtype=torch.float32),
                                                   embedding.features.shape[-1])
        return (F.normalize(embedding.features.float(), dim=0) * weights).sum(dim=(1, 2))

    def slice_prototype(self, k: int, mask2d: np.ndarray) -> torch.Tensor:
        return F.normalize(self._feature_sum(self.embeddings([k])[0], mask2d), dim=0)

    def prototype(self, mask: np.ndarray) -> torch.Tensor:
        slices = np.flatnonzero(mask.any(axis=(1, 2)))
        if slices.size == 0:
            raise ValueError("empty region has no prototype")
        total = sum(self._feature_sum(e, mask[k]) for k, e in zip(slices, self.embeddings(slices)))
        return F.normalize(total, dim=0)

    def similarity(self, prototypes, window=None) -> np.ndarray:
        """Cosine maps at pixel resolution (sub-cell peaks from bilinear interpolation of the feature grid)."""
        maps = np.full((len(prototypes), *self.shape), -np.inf, dtype=np.float32)
        stacked = torch.stack(list(prototypes))
        for k, embedding in zip(range(self.shape[0]), self.embeddings(range(self.shape[0]))):
            grid = torch.einsum("pc,chw->phw", stacked, F.normalize(embedding.features.float(), dim=0))
            maps[:, k] = embedding.geometry.grid_to_slice(grid).numpy()
        return maps

    def feature_volume(self) -> tuple[torch.Tensor, Grid]:
        """The regular lattice slices' unit-normalised features on the model's feature grid, (C, L, g_r, g_c) (2D:
        (C, g_r, g_c)), and that grid in physical space (cell centres; padding cells left out; ``lattice_step``
        working slices apart). Encodes the slices not yet held. A linear sampler of this grid interpolates between
        lattice slices as :meth:`embeddings` does."""
        regular = list(range(0, self.shape[0], self.lattice_step))
        embeddings = self.embeddings(regular)
        geometry = embeddings[0].geometry
        cell = geometry.input_size / embeddings[0].features.shape[-1]      # model-input pixels per feature cell
        step = cell / geometry.scale_xy                                       # slice pixels per cell, (x, y)
        cols = int(np.ceil(geometry.resized_width / cell))
        rows = int(np.ceil(geometry.resized_height / cell))
        values = torch.empty(embeddings[0].features.shape[0], len(embeddings), rows, cols)  # filled in place:
        for k, embedding in enumerate(embeddings):                                       # one volume in memory
            values[:, k] = F.normalize(embedding.features.float()[:, :rows, :cols], dim=0)
        first = 0.5 * step - 0.5                                              # slice pixel (x, y) of cell 0's centre
        if self.grid.dimension == 2:
            origin = self.grid.index_to_lps(first[None])[0]
            return values[:, 0], Grid(origin, self.grid.spacing * step, self.grid.direction, (cols, rows))
        origin = self.grid.index_to_lps(np.array([[first[0], first[1], 0.0]]))[0]
        spacing = self.grid.spacing * np.array([step[0], step[1], float(self.lattice_step)])
        return values, Grid(origin, spacing, self.grid.direction, (cols, rows, len(regular)))

    # --- decoding -------------------------------------------------------------------------------------
    def decode_boxes(self, slice_indices: list[int], boxes_xy: np.ndarray,
                     windows: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decode one box per entry on the given slices (each in its window, default 0); cleaned masks (B, R, C)
        and predicted IoU (B,)."""
        if len(slice_indices) == 0:
            return np.zeros((0,) + self.shape[1:], dtype=bool), np.zeros(0)
        if self.cancel and self.cancel():  # regions grow through slices encoded long before: cancel here too
            raise Cancelled("registration cancelled")
        windows = windows or [0] * len(slice_indices)
        logits, iou = self.model.decode(self.windowed_embeddings(slice_indices, windows),
                                        boxes_xy=np.asarray(boxes_xy, dtype=float))
        return np.array([clean_mask(mask) for mask in (logits > 0).numpy()]), iou

    def refit(self, slice_indices: list[int], masks: np.ndarray, iou: np.ndarray, windows: list[int] | None = None):
        """Decode again with each mask's own (slightly grown) box: pulls a box towards the object it cuts."""
        boxes = [mask_box(m) for m in masks]
        keep = [i for i, b in enumerate(boxes) if b is not None]
        new_boxes = np.zeros((len(masks), 4))
        for i in keep:
            new_boxes[i] = expand_box(boxes[i], masks.shape[1:])
        windows = windows or [0] * len(slice_indices)
        refit_masks, refit_iou = self.decode_boxes([slice_indices[i] for i in keep], new_boxes[keep],
                                                   [windows[i] for i in keep])
        masks, iou = masks.copy(), iou.copy()
        masks[keep], iou[keep] = refit_masks, refit_iou
        return masks, iou, new_boxes

    def _seed(self, k: int, mask2d: np.ndarray, iou: float, box: np.ndarray, prompt_lps=None, window: int = 0) -> Seed:
        mask = np.zeros(self.shape, dtype=bool)
        mask[k] = mask2d
        if prompt_lps is None:
            prompt_lps = self.voxel_to_lps(np.array([[k, (box[1] + box[3]) / 2, (box[0] + box[2]) / 2]]))[0]
        return Seed(mask, float(iou), np.asarray(prompt_lps, dtype=float), k, box, window)

    def seed_from_point(self, point_lps, other_windows: bool = True) -> Seed:
        """The box search at a click (module doc), in each of :attr:`windows` (``other_windows`` False: the default
        one only): another window's region replaces the default window's only when the model scores it
        ``window_margin`` higher (the window then follows the structure clicked: an organ in soft tissue, a lung
        from air)."""
        point_lps = self.check_prompt(point_lps)
        k, row, col = self.lps_to_voxel(point_lps[None])[0]
        k = int(np.clip(round(k), 0, self.shape[0] - 1))
        self.add_to_lattice(k)
        best = None
        for window in range(len(self.windows) if other_windows else 1):
            mask, iou, box, score = self._box_search(k, row, col, window)
            margin = self.options.window_margin if window > 0 else 0.0
            if best is None or score > best[3] + margin:
                best = (mask, iou, box, score, window)
        mask, iou, box, _, window = best
        return self._seed(k, mask, iou, box, point_lps, window)

    def _box_search(self, k: int, row: float, col: float, window: int, ambiguity_tolerance: float = 0.01,
                    refits: int = 2, min_box_fit: float = 0.5) -> tuple[np.ndarray, float, np.ndarray, float]:
        """(mask, predicted IoU, box, score) of the best box around a click at (row, col) on slice ``k``."""
        rows, cols = self.shape[1:]
        boxes = []
        for half in self.options.box_half_sizes_mm:
            half_px = max(2.0, half / self.pixel_spacing[0])
            box = np.array([col - half_px, row - half_px, col + half_px, row + half_px])
            boxes.append(np.clip(box, 0, [cols - 1, rows - 1, cols - 1, rows - 1]))
        boxes = np.unique(np.round(np.array(boxes), 1), axis=0)
        indices, windows = [k] * len(boxes), [window] * len(boxes)
        masks, iou = self.decode_boxes(indices, boxes, windows)
        fitted_boxes = boxes
        for _ in range(refits):
            masks, iou, fitted_boxes = self.refit(indices, masks, iou, windows)
        r, c = int(np.clip(round(row), 0, rows - 1)), int(np.clip(round(col), 0, cols - 1))
        scores = np.full(len(masks), -1.0)
        for i, mask in enumerate(masks):
            box = mask_box(mask)
            if box is not None and mask[r, c]:
                fits_box = box_iou(fitted_boxes[i], expand_box(box, masks.shape[1:])) >= min_box_fit
                scores[i] = iou[i] if fits_box else -0.5
        # SAM's granularity ambiguity: among near-best candidates, the whole object (largest mask) wins
        near_best = np.flatnonzero(scores >= scores.max() - ambiguity_tolerance)
        best = int(near_best[np.argmax(masks[near_best].sum(axis=(1, 2)))])
        return masks[best], float(iou[best]), fitted_boxes[best], float(scores[best])

    def seed_from_box(self, corners_lps) -> tuple[Seed, tuple[int, int]]:
        corners = np.asarray(corners_lps, dtype=float).reshape(2, -1)
        a, b = self.lps_to_voxel(self.check_prompt(corners[0])[None])[0], \
            self.lps_to_voxel(self.check_prompt(corners[1])[None])[0]
        low, high = np.minimum(a, b), np.maximum(a, b)
        k = int(np.clip(round((low[0] + high[0]) / 2), 0, self.shape[0] - 1))
        self.add_to_lattice(k)
        box = np.array([low[2], low[1], high[2], high[1]])
        masks, iou = self.decode_boxes([k], box[None])
        k_range = (max(0, int(np.ceil(low[0] - 0.5))), min(self.shape[0] - 1, int(np.floor(high[0] + 0.5))))
        return self._seed(k, masks[0], iou[0], box, corners.mean(0)), k_range

    def seeds_at(self, peaks, half_extent_mm, score, window=None, refits: int = 2) -> list[Seed]:
        """A box of the region's in-plane size centred on each peak's high-score area, re-fitted twice."""
        centres = [_region_centre(score[k], (r, c)) for k, r, c in peaks]
        return self._sized_seeds([self.nearest_lattice_slice(int(k)) for k, _, _ in peaks], centres, half_extent_mm,
                                 refits)

    def seed_at_expected(self, point_lps, half_extent_mm) -> Seed | None:
        """As the base class says, decoded on the lattice slice nearest the point (no slice is encoded for it)."""
        if not self.image.contains(np.asarray(point_lps, dtype=float)[None])[0]:
            return None
        k, row, col = self.lps_to_voxel(np.asarray(point_lps, dtype=float)[None])[0]
        k = self.nearest_lattice_slice(int(np.clip(round(k), 0, self.shape[0] - 1)))
        seed = self._sized_seeds([k], [np.array([row, col])], half_extent_mm)[0]
        seed.prompt_lps = np.asarray(point_lps, dtype=float)[: self.image.dimension]
        return seed

    def seed_sized_at(self, point_lps, half_extent_mm) -> Seed:
        k, row, col = self.lps_to_voxel(self.check_prompt(point_lps)[None])[0]
        k = int(np.clip(round(k), 0, self.shape[0] - 1))
        self.add_to_lattice(k)
        seed = self._sized_seeds([k], [np.array([row, col])], half_extent_mm)[0]
        seed.prompt_lps = np.asarray(point_lps, dtype=float)[: self.image.dimension]
        return seed

    def _sized_seeds(self, slices: list[int], centres_rc: list[np.ndarray], half_extent_mm,
                     refits: int = 2) -> list[Seed]:
        """A box of the region's in-plane size centred on each (row, column) centre, re-fitted ``refits`` times."""
        half_px = np.asarray(half_extent_mm[1:], dtype=float) / self.pixel_spacing[0]
        rows, cols = self.shape[1:]
        boxes = [np.clip(np.array([c[1] - half_px[1], c[0] - half_px[0], c[1] + half_px[1], c[0] + half_px[0]]),
                         0, [cols - 1, rows - 1, cols - 1, rows - 1]) for c in centres_rc]
        masks, iou = self.decode_boxes(slices, np.array(boxes))
        for _ in range(refits):
            masks, iou, boxes = self.refit(slices, masks, iou)
        return [self._seed(k, m, s, b) for k, m, s, b in zip(slices, masks, iou, boxes)]

    # --- growing through slices ---------------------------------------------------------------------
    def grow(self, seeds, k_ranges=None) -> list[ROI]:
        """Grow seed masks slice by slice in both directions, all seeds decoded together, on the lattice slices
        (:attr:`lattice`); the slices between two lattice slices get the masks' shape interpolation.

        Each next slice is prompted with the previous mask's grown box (each side moving inwards by at most
        ``max_shrink`` of the previous box, so one partial answer cannot collapse the region), and once more
        with the box of that answer, keeping the answer with the better predicted IoU less a penalty for
        jumping in size. A seed stops where its mask vanishes, its predicted IoU drops below ``min_iou``, it
        stops overlapping the previous mask, its K range ends, or its region's features stop resembling the
        previous slice's or the seed's — the check that keeps a lung from running on into the liver.
        """
        options = self.options
        volumes = [seed.mask.copy() for seed in seeds]
        ious = [{seed.slice_index: seed.iou} for seed in seeds]
        seed_features = [self.slice_prototype(s.slice_index, s.mask[s.slice_index]) if s.mask.any() else None
                         for s in seeds]
        ranges = k_ranges or [(0, self.shape[0] - 1)] * len(seeds)
        steps = 0
        for direction in (1, -1):
            active = {i: (s.slice_index, s.mask[s.slice_index], seed_features[i],
                          expand_box(mask_box(s.mask[s.slice_index]), self.shape[1:], options.box_margin))
                      for i, s in enumerate(seeds) if s.mask.any()}
            while active:
                items = [(i, self.next_slice(k, direction), *state) for i, (k, *state) in active.items()]
                items = [item for item in items
                         if item[1] is not None and ranges[item[0]][0] <= item[1] <= ranges[item[0]][1]]
                if not items:
                    break
                slice_indices = [item[1] for item in items]
                windows = [seeds[item[0]].window for item in items]  # each region in the window it was seen in
                previous_areas = np.array([item[2].sum() for item in items], dtype=float)
                masks, iou = self.decode_boxes(slice_indices, np.array([item[4] for item in items]), windows)
                refit_masks, refit_iou, _ = self.refit(slice_indices, masks, iou, windows)
                size_penalty = lambda m: 0.5 * np.abs(np.log((m.sum(axis=(1, 2)) + 1) / previous_areas))  # noqa: E731
                better = refit_iou - size_penalty(refit_masks) > iou - size_penalty(masks)
                masks[better], iou[better] = refit_masks[better], refit_iou[better]
                active = {}
                for (i, k, previous, previous_feature, previous_box), mask, score in zip(items, masks, iou):
                    area = mask.sum()
                    if area < 4 or score < options.min_iou or \
                            np.logical_and(mask, previous).sum() < options.min_overlap * area:
                        continue
                    feature = self.slice_prototype(k, mask)
                    if (float(feature @ previous_feature) < options.min_step_similarity
                            or float(feature @ seed_features[i]) < options.min_seed_similarity):
                        continue
                    volumes[i][k] = mask
                    between = range(k - direction, k - direction * self.lattice_gap(k, direction), -direction)
                    for j, filled in zip(between, interpolate_masks(mask, previous, len(between))):
                        volumes[i][j] = filled
                    ious[i][k] = float(score)
                    active[i] = (k, mask, feature, _next_box(mask, previous_box, options.box_margin,
                                                             options.max_shrink))
                steps += 1
                self.progress("growing regions through slices", None, min(steps, self.shape[0]), self.shape[0],
                              "slices")
        return [ROI(volume, float(np.mean(list(slice_iou.values()))), seed.prompt_lps, seed.slice_index,
                    {"slices": len(slice_iou), "window": list(self.windows[seed.window])})
                for volume, slice_iou, seed in zip(volumes, ious, seeds)]


    # --- spatial perturbations ---------------------------------------------------------------------
    def warp_stability(self, roi, warps, rng, options) -> float | None:
        """ROI X's seed slice warped by small random affines (``options.warp_*``), re-segmented from the warped
        box and mapped back: the mean Dice with the original seed mask."""
        k = roi.seed_slice
        original = roi.mask[k]
        box = mask_box(original)
        if box is None:
            return 0.0
        scores = []
        for _ in range(warps):
            matrix = _warp_matrix(rng, options, original.shape, self.pixel_spacing[0])
            embedding = self.model.encode([_apply_warp(self.intensities01[k], matrix)], self.pixel_spacing)[0]
            corners = np.array([[box[0], box[1], 1], [box[2], box[1], 1], [box[0], box[3], 1], [box[2], box[3], 1]])
            moved = (matrix @ corners.T)[:2].T
            logits, _ = self.model.decode([embedding], boxes_xy=np.array([[*moved.min(0), *moved.max(0)]]))
            back = _apply_warp((logits[0] > 0).numpy().astype(np.float32), np.linalg.inv(matrix)) > 0.5
            scores.append(dice(back, original))
        return float(np.mean(scores))


def _warp_matrix(rng: np.random.Generator, options, shape: tuple[int, int], pixel_mm: float) -> np.ndarray:
    """A small random affine on pixel indices (x, y), about the slice centre, as a 3×3 matrix."""
    angle = np.deg2rad(rng.uniform(-options.warp_rotation_deg, options.warp_rotation_deg))
    scale = 1.0 + rng.uniform(-options.warp_scale, options.warp_scale)
    shift = rng.uniform(-options.warp_shift_mm, options.warp_shift_mm, size=2) / pixel_mm
    centre = np.array([(shape[1] - 1) / 2, (shape[0] - 1) / 2])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.eye(3)
    matrix[:2, :2] = rotation
    matrix[:2, 2] = centre - rotation @ centre + shift
    return matrix


def _apply_warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Resample a 2D array so that output(p) = input(matrix⁻¹ p) (p as pixel (x, y)), bilinear."""
    rows, cols = image.shape
    inverse = np.linalg.inv(matrix)
    ys, xs = np.mgrid[0:rows, 0:cols].astype(float)
    mapped = (inverse @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)]))[:2]
    grid = np.stack([mapped[0] / max(cols - 1, 1) * 2 - 1, mapped[1] / max(rows - 1, 1) * 2 - 1], axis=-1)
    grid = torch.as_tensor(grid.reshape(1, rows, cols, 2), dtype=torch.float32)
    sampled = F.grid_sample(torch.as_tensor(image, dtype=torch.float32)[None, None], grid, mode="bilinear",
                            padding_mode="zeros", align_corners=True)
    return sampled[0, 0].numpy()


def _next_box(mask: np.ndarray, previous_box: np.ndarray, margin: float, max_shrink: float) -> np.ndarray:
    """The prompt box for the next slice: the mask's grown box, shrinking at most ``max_shrink`` per side."""
    box = expand_box(mask_box(mask), mask.shape, margin)
    step = max_shrink * np.array([previous_box[2] - previous_box[0], previous_box[3] - previous_box[1]] * 2)
    inward_limit = previous_box + np.array([1, 1, -1, -1]) * step
    return np.array([min(box[0], inward_limit[0]), min(box[1], inward_limit[1]),
                     max(box[2], inward_limit[2]), max(box[3], inward_limit[3])])


def _region_centre(score_slice: np.ndarray, peak_rc: tuple[int, int]) -> np.ndarray:
    """Centre (row, col) of the connected high-score region (≥ 70 % of the peak) that holds the peak."""
    finite = np.where(np.isfinite(score_slice), score_slice, 0.0)
    high = (finite >= 0.7 * finite[peak_rc]).astype(np.uint8)
    components = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(high)))
    region = components == components[peak_rc]
    weights = np.where(region, finite, 0.0)
    rows, cols = np.indices(score_slice.shape)
    return np.array([(rows * weights).sum(), (cols * weights).sum()]) / weights.sum()
