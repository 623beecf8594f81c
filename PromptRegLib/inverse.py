"""Inverse prompting: ROI X on the fixed image → Prompt Y on the moving image → ROI Y.

1. Prototypes of ROI X (inside) and of a ring just outside it, from the fixed image's feature grid.
2. Contrast map over the moving image: similarity to the inside minus similarity to the ring, weighted by
   a broad spatial prior around where ROI X is expected (identity or the current affine estimate).
3. Primary prompt: for each of the best separate peaks, a box of ROI X's physical size centred on the
   high-similarity region around the peak, re-fitted to its own answer (auxiliary prompts). The candidate
   whose ROI resembles ROI X most (prototype cosine × predicted IoU) wins and is propagated through a volume.
4. Quality kept with the pair: predicted IoUs, peak and its margin over the best separate peak, size
   ratio (largest cross-section, mm²), prototype cosine, and a cycle check (ROI Y inverted back must land inside ROI X).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .features import pooled_feature, prototype, ring, similarity_volume
from .segment import ROI, decode_boxes, mask_box, propagate, refit
from .volume import SliceStack


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
    refits: int = 2                  # auxiliary box re-fits per candidate
    cycle_tolerance_px: int = 2      # the cycle peak may land this close to ROI X


@dataclass
class InverseResult:
    roi_y: ROI
    prompt_y_stack: np.ndarray       # (slice, row, column) of the primary prompt's centre
    quality: dict = field(default_factory=dict)


def stack_points_lps(stack: SliceStack) -> np.ndarray:
    """Physical (LPS) position of every stack voxel, (K, R, C, d)."""
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in stack.shape], indexing="ij")
    stack_index = np.stack([g.ravel() for g in grids], axis=1)
    points = stack.image.index_to_lps(stack.stack_index_to_image(stack_index))
    return points.reshape(*stack.shape, -1)


def centroid_lps(stack: SliceStack, mask_stack: np.ndarray) -> np.ndarray:
    index = np.argwhere(mask_stack).mean(axis=0)
    return stack.image.index_to_lps(stack.stack_index_to_image(index[None]))[0]


def volume_mm3(stack: SliceStack, mask_stack: np.ndarray) -> float:
    return float(mask_stack.sum() * np.prod(stack.stack_spacing()))


def largest_section_mm2(stack: SliceStack, mask_stack: np.ndarray) -> float:
    return float(mask_stack.sum(axis=(1, 2)).max() * np.prod(stack.pixel_spacing))


def contrast_map(source: SliceStack, mask_stack: np.ndarray, target: SliceStack) -> np.ndarray:
    """Similarity of every target voxel to the region's prototype minus that to its surrounding ring."""
    inside = prototype(source, mask_stack)
    outside_mask = ring(mask_stack)
    score = similarity_volume(target, inside)
    if outside_mask.any():
        score = score - similarity_volume(target, prototype(source, outside_mask))
    return score


def prior_weight(target_points_lps: np.ndarray, expected_lps: np.ndarray, sigma_mm: float) -> np.ndarray:
    distance2 = ((target_points_lps - expected_lps) ** 2).sum(axis=-1)
    return np.exp(-distance2 / (2.0 * sigma_mm ** 2))


def separate_peaks(score: np.ndarray, count: int, exclusion_px: np.ndarray) -> list[tuple[int, int, int]]:
    """Up to ``count`` maxima, each at least ``exclusion_px`` (per stack axis) from the previous ones."""
    work = score.copy()
    peaks = []
    for _ in range(count):
        peak = np.unravel_index(int(np.argmax(work)), work.shape)
        if not np.isfinite(work[peak]) or work[peak] <= 0:
            break
        peaks.append(tuple(int(v) for v in peak))
        low = [max(0, p - int(e)) for p, e in zip(peak, exclusion_px)]
        high = [p + int(e) + 1 for p, e in zip(peak, exclusion_px)]
        work[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = -np.inf
    return peaks


def _region_centre(score_slice: np.ndarray, peak_rc: tuple[int, int]) -> np.ndarray:
    """Centre (row, col) of the connected high-score region (≥ 70 % of the peak) that holds the peak."""
    high = (score_slice >= 0.7 * score_slice[peak_rc]).astype(np.uint8)
    components = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(high)))
    region = components == components[peak_rc]
    weights = np.where(region, score_slice, 0.0)
    rows, cols = np.indices(score_slice.shape)
    return np.array([(rows * weights).sum(), (cols * weights).sum()]) / weights.sum()


def _extent_px(source: SliceStack, roi_x: ROI, target: SliceStack) -> np.ndarray:
    """ROI X's in-plane half-extent on its seed slice, in target pixels (rows, cols)."""
    box = mask_box(roi_x.mask[roi_x.seed_slice])
    half_mm = np.array([box[3] - box[1] + 1, box[2] - box[0] + 1]) / 2 * np.array(source.pixel_spacing)
    return half_mm / np.array(target.pixel_spacing)


def cycle_check(fixed: SliceStack, moving: SliceStack, roi_x: ROI, roi_y: ROI, prior: AffinePrior,
                fixed_points: np.ndarray, options: InverseOptions) -> tuple[bool, float]:
    """Invert ROI Y back into the fixed image: does the best (prior-weighted) peak land inside ROI X?"""
    score = contrast_map(moving, roi_y.mask, fixed)
    expected = prior.inverse().forward(centroid_lps(moving, roi_y.mask))[0]
    weighted = (score - score.min()) * prior_weight(fixed_points, expected, options.search_radius_mm)
    peak = np.unravel_index(int(np.argmax(weighted)), weighted.shape)
    grown = torch.as_tensor(roi_x.mask, dtype=torch.float32)[:, None]
    width = options.cycle_tolerance_px
    grown = F.max_pool2d(grown, 2 * width + 1, stride=1, padding=width)[:, 0].numpy() > 0
    distance_mm = float(np.linalg.norm(fixed_points[peak] - centroid_lps(fixed, roi_x.mask)))
    return bool(grown[peak]), distance_mm


def inverse_prompt(fixed: SliceStack, moving: SliceStack, roi_x: ROI, prior: AffinePrior,
                   options: InverseOptions | None = None, fixed_points: np.ndarray | None = None,
                   moving_points: np.ndarray | None = None) -> InverseResult:
    """Find ROI Y on the moving image corresponding to ROI X on the fixed image (see module doc)."""
    options = options or InverseOptions()
    fixed_points = stack_points_lps(fixed) if fixed_points is None else fixed_points
    moving_points = stack_points_lps(moving) if moving_points is None else moving_points
    p_x = prototype(fixed, roi_x.mask)
    score = contrast_map(fixed, roi_x.mask, moving)
    expected = prior.forward(centroid_lps(fixed, roi_x.mask))[0]
    weighted = (score - score.min()) * prior_weight(moving_points, expected, options.search_radius_mm)
    half_extent = _extent_px(fixed, roi_x, moving)
    exclusion = np.array([max(1.0, moving.shape[0] / 8), *half_extent])
    peaks = separate_peaks(weighted, options.candidates, exclusion)

    seeds, boxes = [], []
    for k, r, c in peaks:
        centre = _region_centre(weighted[k], (r, c))
        box = np.array([centre[1] - half_extent[1], centre[0] - half_extent[0],
                        centre[1] + half_extent[1], centre[0] + half_extent[0]])
        rows, cols = moving.shape[1:]
        boxes.append(np.clip(box, 0, [cols - 1, rows - 1, cols - 1, rows - 1]))
        seeds.append(k)
    masks, iou = decode_boxes(moving, seeds, np.array(boxes))
    for _ in range(options.refits):
        masks, iou, boxes = refit(moving, seeds, masks, iou)
    resemblance = np.array([float(pooled_feature(e, m) @ p_x) if m.any() else -1.0
                            for e, m in zip(moving.embeddings(seeds), masks)])
    choice = int(np.argmax(resemblance * iou))
    k = seeds[choice]
    roi_y = ROI(np.zeros(moving.shape, dtype=bool), {k: float(iou[choice])}, k, np.asarray(boxes[choice]))
    if moving.shape[0] > 1:
        (volume, ious), = propagate(moving, [(k, masks[choice])])
        roi_y.mask, roi_y.slice_iou = volume, {**roi_y.slice_iou, **ious}
    else:
        roi_y.mask[0] = masks[choice]

    quality = {"iou_x": roi_x.iou, "iou_y": roi_y.iou, "peak": float(score[peaks[choice]]),
               "candidates": len(peaks), "chosen_candidate": choice,
               "resemblance": float(resemblance[choice])}
    outside = ~roi_y.mask
    quality["peak_margin"] = float(score[peaks[choice]] - (score[outside].max() if outside.any() else -1.0))
    if roi_y.mask.any():
        quality["prototype_cosine"] = float(prototype(moving, roi_y.mask) @ p_x)
        # largest cross-sections (mm²): unlike volumes, not cut short by a thinner slab in one image
        quality["size_ratio"] = largest_section_mm2(moving, roi_y.mask) / max(largest_section_mm2(fixed, roi_x.mask),
                                                                              1e-9)
        quality["volume_ratio"] = volume_mm3(moving, roi_y.mask) / max(volume_mm3(fixed, roi_x.mask), 1e-9)
        quality["cycle_ok"], quality["cycle_distance_mm"] = cycle_check(fixed, moving, roi_x, roi_y, prior,
                                                                         fixed_points, options)
    else:
        quality.update(prototype_cosine=-1.0, size_ratio=0.0, cycle_ok=False, cycle_distance_mm=float("inf"))
    centre = np.array([k, (boxes[choice][1] + boxes[choice][3]) / 2, (boxes[choice][0] + boxes[choice][2]) / 2])
    return InverseResult(roi_y, centre, quality)
