"""Inverse prompting: ROI X on the fixed view → Prompt Y on the moving view → ROI Y. Written once for any view.

1. Prototypes of ROI X (inside) and of a band just outside it (``ring_mm`` wide), from the fixed view.
2. Contrast map over the moving view: similarity to the inside minus similarity to the band, weighted by a
   broad spatial prior (σ ``search_radius_mm``) around where ROI X is expected (identity or the current
   affine estimate). A windowed view (cubes) moves its window once if the peak sits at its edge.
3. Primary prompts: at the best separate peaks, prompts sized like ROI X (auxiliary re-fits inside the view);
   the candidate whose region resembles ROI X most (prototype cosine × predicted IoU) wins and is grown.
4. Quality kept with the pair: predicted IoUs, peak and its margin over the best separate peak, size ratio
   (largest cross-section, mm²), prototype cosine, and a cycle check (ROI Y inverted back must land within
   ``cycle_tolerance_mm`` of ROI X).

A Prompt Y the user gives (:func:`prompt_pair`) skips 2–3 and the cycle check: ROI Y is prompted there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.regions import dilate_mm, ring
from ..views.base import ROI, View, empty_roi


@dataclass
class AffinePrior:
    """Where to look: moving point ≈ ``matrix @ fixed point + offset`` (LPS mm)."""

    matrix: np.ndarray
    offset: np.ndarray

    @classmethod
    def identity(cls, dimension: int) -> "AffinePrior":
        return cls(np.eye(dimension), np.zeros(dimension))

    def forward(self, points: np.ndarray) -> np.ndarray:
        return np.atleast_2d(points) @ self.matrix.T + self.offset

    def inverse(self) -> "AffinePrior":
        inverse_matrix = np.linalg.inv(self.matrix)
        return AffinePrior(inverse_matrix, -inverse_matrix @ self.offset)


@dataclass
class InverseOptions:
    search_radius_mm: float = 60.0   # σ of the spatial prior
    candidates: int = 3              # separate similarity peaks tried
    ring_mm: float = 9.0             # width of the background band around a region
    cycle_tolerance_mm: float = 6.0  # the cycle peak may land this close to ROI X
    expected_candidate: bool = True   # also prompt where the prior maps ROI X (across modalities the similarity
                                     # peaks may all miss; the choice weighs agreement with the prior)


@dataclass
class InverseResult:
    roi_y: ROI
    quality: dict = field(default_factory=dict)


def contrast_search(source: View, mask: np.ndarray, target: View, expected_lps: np.ndarray,
                    options: InverseOptions) -> tuple[np.ndarray, np.ndarray, object]:
    """(contrast, prior-weighted contrast, window) of a source region over the target view.

    Contrast = similarity to the region's prototype − similarity to its surrounding band; the weighted map
    is the contrast shifted to be positive times a Gaussian prior around ``expected_lps``.
    """
    prototypes = [source.prototype(mask)]
    band = ring(mask, source.spacing_mm, options.ring_mm * source.unit_mm)
    if band.any():
        prototypes.append(source.prototype(band))
    window = target.search_window(expected_lps)
    for attempt in range(2):
        maps = target.similarity(prototypes, window)  # -inf outside the window, in every map
        score = maps[0] - np.where(np.isfinite(maps[1]), maps[1], 0.0) if len(maps) > 1 else maps[0]
        finite = np.isfinite(score)
        floor = score[finite].min() if finite.any() else 0.0
        distance2 = ((target.points_lps() - expected_lps.astype(np.float32)) ** 2).sum(axis=-1)
        prior = np.exp(-distance2 / (2.0 * (options.search_radius_mm * target.unit_mm) ** 2))
        weighted = np.where(finite, (score - floor) * prior, -np.inf)
        peak = np.unravel_index(int(np.argmax(weighted)), weighted.shape)
        if attempt == 0 and target.near_window_edge(window, peak):
            window = target.search_window(target.voxel_to_lps(np.array([peak]))[0])
            continue
        break
    return score, weighted, window


def separate_peaks(score: np.ndarray, count: int, exclusion_voxels: np.ndarray) -> list[tuple[int, int, int]]:
    """Up to ``count`` maxima, each at least ``exclusion_voxels`` (per axis) from the previous ones."""
    work = score.copy()
    peaks = []
    for _ in range(count):
        peak = np.unravel_index(int(np.argmax(work)), work.shape)
        if not np.isfinite(work[peak]) or work[peak] <= 0:
            break
        peaks.append(tuple(int(v) for v in peak))
        low = [max(0, p - int(e)) for p, e in zip(peak, exclusion_voxels)]
        high = [p + int(e) + 1 for p, e in zip(peak, exclusion_voxels)]
        work[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = -np.inf
    return peaks


def _exclusion_voxels(target: View, half_extent_mm: np.ndarray) -> np.ndarray:
    """Peaks closer than ROI X's half extent (in-plane) or an eighth of the view (across K) are one peak."""
    spacing = np.where(np.isfinite(target.spacing_mm), target.spacing_mm, 1.0)
    across = max(1.0, target.shape[0] / 8)
    return np.array([max(across, half_extent_mm[0] / spacing[0]),
                     *np.maximum(1.0, half_extent_mm[1:] / spacing[1:])])


def expected_half_extent(fixed: View, moving: View, half_extent_mm: np.ndarray, prior: AffinePrior) -> np.ndarray:
    """A region's half extent along the fixed view's (K, R, C) as the prior expects it along the moving view's:
    a quarter turn swaps rows and columns, so a prompt sized like ROI X is turned with it."""
    dimension = fixed.image.dimension
    along = np.abs(moving.grid.direction.T @ prior.matrix @ fixed.grid.direction)  # ITK index axes, |turn|
    turned = along @ np.asarray(half_extent_mm, dtype=float)[::-1][:dimension]
    return turned[::-1] if dimension == 3 else np.array([0.0, turned[1], turned[0]])


def _voxel_of(view: View, point_lps: np.ndarray) -> tuple[int, ...]:
    """The view's voxel (k, r, c) nearest an LPS point, clipped to the view."""
    voxel = np.round(view.lps_to_voxel(np.asarray(point_lps, dtype=float)[None])[0]).astype(int)
    return tuple(int(v) for v in np.clip(voxel, 0, np.array(view.shape) - 1))


def agreement_with_prior(target: View, seeds: list, expected_lps: np.ndarray, options: InverseOptions) -> np.ndarray:
    """How well each candidate region sits where the prior expects it: a Gaussian of its centroid's distance from
    ``expected_lps`` (σ the search radius) — the consistency with the pairs already found that decides between
    candidates that resemble ROI X alike."""
    sigma = options.search_radius_mm * target.unit_mm
    distances = np.array([np.linalg.norm(target.centroid_lps(s.mask) - expected_lps) if s.mask.any() else np.inf
                          for s in seeds])
    return np.exp(-distances ** 2 / (2 * sigma ** 2))


def cycle_check(source: View, roi_x: ROI, target: View, roi_y: ROI, prior: AffinePrior,
                options: InverseOptions) -> tuple[bool, float]:
    """Invert ROI Y back into the fixed view: does the best (prior-weighted) peak land on (a grown) ROI X?"""
    expected = prior.inverse().forward(target.centroid_lps(roi_y.mask))[0]
    _, weighted, _ = contrast_search(target, roi_y.mask, source, expected, options)
    peak = np.unravel_index(int(np.argmax(weighted)), weighted.shape)
    grown = dilate_mm(roi_x.mask, source.spacing_mm, options.cycle_tolerance_mm * source.unit_mm)
    peak_lps = source.voxel_to_lps(np.array([peak]))[0]
    return bool(grown[peak]), float(np.linalg.norm(peak_lps - source.centroid_lps(roi_x.mask)))


def inverse_prompt(fixed: View, moving: View, roi_x: ROI, prior: AffinePrior,
                   options: InverseOptions | None = None) -> InverseResult:
    """Find ROI Y on the moving view corresponding to ROI X on the fixed view (see module doc)."""
    options = options or InverseOptions()
    p_x = fixed.prototype(roi_x.mask)
    expected = prior.forward(fixed.centroid_lps(roi_x.mask))[0]
    score, weighted, window = contrast_search(fixed, roi_x.mask, moving, expected, options)
    half_extent = expected_half_extent(fixed, moving, fixed.half_extent_mm(roi_x.mask), prior)
    peaks = separate_peaks(weighted, options.candidates, _exclusion_voxels(moving, half_extent))
    quality = {"iou_x": roi_x.iou, "candidates": len(peaks)}
    if not peaks:
        quality.update(iou_y=0.0, prototype_cosine=-1.0, size_ratio=0.0, cycle_ok=False,
                       cycle_distance_mm=float("inf"))
        return InverseResult(empty_roi(moving, expected), quality)
    seeds = moving.seeds_at(peaks, half_extent, weighted, window)
    if options.expected_candidate:
        seeds += [s for s in [moving.seed_at_expected(expected, half_extent)] if s is not None]
    resemblance = np.array([float(moving.prototype(s.mask) @ p_x) if s.mask.any() else -1.0 for s in seeds])
    choice = int(np.argmax(resemblance * np.array([s.iou for s in seeds])
                           * agreement_with_prior(moving, seeds, expected, options)))
    roi_y = moving.grow([seeds[choice]])[0]

    # the candidate's own peak, or for the prior's candidate the score where it was prompted
    at = peaks[choice] if choice < len(peaks) else _voxel_of(moving, seeds[choice].prompt_lps)
    quality.update(iou_y=roi_y.iou, peak=float(score[at]), chosen_candidate=choice,
                   chosen="similarity peak" if choice < len(peaks) else "where the prior maps ROI X",
                   resemblance=float(resemblance[choice]))
    outside = ~roi_y.mask & np.isfinite(score)
    quality["peak_margin"] = float(score[at] - (score[outside].max() if outside.any() else -1.0))
    quality.update(region_quality(fixed, moving, roi_x, roi_y))
    if roi_y.mask.any():
        quality["cycle_ok"], quality["cycle_distance_mm"] = cycle_check(fixed, roi_x, moving, roi_y, prior, options)
    else:
        quality.update(cycle_ok=False, cycle_distance_mm=float("inf"))
    return InverseResult(roi_y, quality)


def region_quality(fixed: View, moving: View, roi_x: ROI, roi_y: ROI) -> dict:
    """How alike two corresponding regions are: predicted IoUs, prototype cosine, size and volume ratios."""
    quality = {"iou_x": roi_x.iou, "iou_y": roi_y.iou}
    if not roi_y.mask.any() or not roi_x.mask.any():
        return {**quality, "prototype_cosine": -1.0, "size_ratio": 0.0}
    quality["prototype_cosine"] = float(moving.prototype(roi_y.mask) @ fixed.prototype(roi_x.mask))
    # largest cross-sections (mm²): unlike volumes, not cut short by a thinner slab in one image; both as the fixed
    # view measures (photographs of other pixel sizes: see make_views)
    scale = moving.unit_mm / fixed.unit_mm
    section = moving.largest_section_mm2(roi_y.mask) / scale ** 2
    quality["size_ratio"] = section / max(fixed.largest_section_mm2(roi_x.mask), 1e-9)
    quality["volume_ratio"] = moving.volume_mm3(roi_y.mask) / scale ** fixed.image.dimension / max(
        fixed.volume_mm3(roi_x.mask), 1e-9)
    return quality


def prompt_pair(fixed: View, moving: View, roi_x: ROI, prompt_y_lps: np.ndarray) -> InverseResult:
    """ROI Y from a Prompt Y the user gave for ROI X (no search, no cycle check: the user says they correspond).

    The prompt is sized like ROI X, as inverse prompting prompts a peak, and grown; decoder work only."""
    half_extent = fixed.half_extent_mm(roi_x.mask) * moving.unit_mm / fixed.unit_mm
    seed = moving.seed_sized_at(np.asarray(prompt_y_lps, dtype=float), half_extent)
    roi_y = moving.grow([seed])[0]
    quality = {**region_quality(fixed, moving, roi_x, roi_y), "prompt_y": "user"}
    return InverseResult(roi_y, quality)
