"""Prompt → ROI: a click (or box) on one slice becomes a mask, propagated slice by slice through a volume.

Box-only models (LiteMedSAM) turn a click into a *box search*: boxes of several physical sizes centred
on the click are decoded, each box is re-fitted (twice) to its own mask, and the mask kept contains the
click, fits its box, scores the highest predicted IoU and, among ties, covers the whole object.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .errors import PromptError
from .features import pooled_feature
from .volume import SliceStack

#: half-widths (mm) of the boxes tried around a click
BOX_HALF_SIZES_MM = (8.0, 15.0, 25.0, 40.0, 60.0, 90.0, 130.0)


@dataclass
class ROI:
    """A region in one image: ``mask`` (K, R, C) on the stack grid, its per-slice predicted IoU, and the prompt."""

    mask: np.ndarray
    slice_iou: dict[int, float]
    seed_slice: int
    seed_box_xy: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def iou(self) -> float:
        return float(np.mean(list(self.slice_iou.values()))) if self.slice_iou else 0.0

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Bounding box (x0, y0, x1, y1) in pixel indices of a 2D mask, or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=float)


def expand_box(box: np.ndarray, shape: tuple[int, int], fraction: float = 0.1, minimum_px: float = 2.0) -> np.ndarray:
    """Grow a box by ``fraction`` of its size (at least ``minimum_px``) on each side, clipped to the slice."""
    width, height = box[2] - box[0], box[3] - box[1]
    margin = np.maximum(minimum_px, fraction * np.array([width, height]))
    grown = box + np.array([-margin[0], -margin[1], margin[0], margin[1]])
    return np.clip(grown, 0, [shape[1] - 1, shape[0] - 1, shape[1] - 1, shape[0] - 1])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0 + 1) * max(0.0, y1 - y0 + 1)
    area = lambda box: (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    return float(inter / (area(a) + area(b) - inter))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 1.0


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """One solid region: the largest connected component, holes filled.

    SAM-family masks carry specks and holes. A registration ROI is one solid region; what sits in a hole
    (the lungs inside the body) is its own ROI, layered above in the label map.
    """
    if not mask.any():
        return mask
    components = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))))
    largest = (components == np.argmax(np.bincount(components.ravel())[1:]) + 1).astype(np.uint8)
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(largest))).astype(bool)


def decode_boxes(stack: SliceStack, slice_indices: list[int], boxes_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode one box per entry on the given slices; returns cleaned masks (B, R, C) and predicted IoU (B,)."""
    if len(slice_indices) == 0:
        return np.zeros((0,) + stack.shape[1:], dtype=bool), np.zeros(0)
    logits, iou = stack.model.decode(stack.embeddings(slice_indices), boxes_xy=np.asarray(boxes_xy, dtype=float))
    return np.array([clean_mask(mask) for mask in (logits > 0).numpy()]), iou


def refit(stack: SliceStack, slice_indices: list[int], masks: np.ndarray, iou: np.ndarray):
    """Decode again with each mask's own (slightly grown) box: pulls a box towards the object it cuts."""
    boxes = [mask_box(m) for m in masks]
    keep = [i for i, b in enumerate(boxes) if b is not None]
    new_boxes = np.zeros((len(masks), 4))
    for i in keep:
        new_boxes[i] = expand_box(boxes[i], masks.shape[1:])
    refit_masks, refit_iou = decode_boxes(stack, [slice_indices[i] for i in keep], new_boxes[keep])
    masks, iou = masks.copy(), iou.copy()
    masks[keep], iou[keep] = refit_masks, refit_iou
    return masks, iou, new_boxes


def segment_click(stack: SliceStack, slice_index: int, point_rc: np.ndarray,
                  half_sizes_mm=BOX_HALF_SIZES_MM, ambiguity_tolerance: float = 0.01, refits: int = 2,
                  min_box_fit: float = 0.5) -> tuple[np.ndarray, float, np.ndarray, dict]:
    """The region a click points at on one slice: (mask (R, C), predicted IoU, box, choice details).

    A candidate scores its predicted IoU; it must contain the click and roughly fill its (re-fitted) box.
    """
    rows, cols = stack.shape[1:]
    row, col = float(point_rc[0]), float(point_rc[1])
    spacing_r, spacing_c = stack.pixel_spacing
    boxes = []
    for half in half_sizes_mm:
        half_r, half_c = max(2.0, half / spacing_r), max(2.0, half / spacing_c)
        box = np.array([col - half_c, row - half_r, col + half_c, row + half_r])
        boxes.append(np.clip(box, 0, [cols - 1, rows - 1, cols - 1, rows - 1]))
    boxes = np.unique(np.round(np.array(boxes), 1), axis=0)
    indices = [slice_index] * len(boxes)
    masks, iou = decode_boxes(stack, indices, boxes)
    for _ in range(refits):
        masks, iou, fitted_boxes = refit(stack, indices, masks, iou)
    r, c = int(round(row)), int(round(col))
    scores = np.full(len(masks), -1.0)
    for i, mask in enumerate(masks):
        box = mask_box(mask)
        if box is not None and mask[r, c]:
            fits_box = box_iou(fitted_boxes[i], expand_box(box, masks.shape[1:])) >= min_box_fit
            scores[i] = iou[i] if fits_box else -0.5
    # SAM's granularity ambiguity: among near-best candidates, the whole object (largest mask) wins
    near_best = np.flatnonzero(scores >= scores.max() - ambiguity_tolerance)
    best = int(near_best[np.argmax(masks[near_best].sum(axis=(1, 2)))])
    details = {"candidates": int(len(masks)), "contains_click": bool(scores[best] >= 0), "score": float(scores[best])}
    return masks[best], float(iou[best]), fitted_boxes[best], details


def next_box(mask: np.ndarray, previous_box: np.ndarray, margin: float, max_shrink: float) -> np.ndarray:
    """The prompt box for the next slice: the mask's grown box, shrinking at most ``max_shrink`` per side."""
    box = expand_box(mask_box(mask), mask.shape, margin)
    step = max_shrink * np.array([previous_box[2] - previous_box[0], previous_box[3] - previous_box[1]] * 2)
    inward_limit = previous_box + np.array([1, 1, -1, -1]) * step
    return np.array([min(box[0], inward_limit[0]), min(box[1], inward_limit[1]),
                     max(box[2], inward_limit[2]), max(box[3], inward_limit[3])])


def propagate(stack: SliceStack, seeds: list[tuple[int, np.ndarray]], min_iou: float = 0.5,
              min_overlap: float = 0.3, min_step_similarity: float = 0.85, min_seed_similarity: float = 0.6,
              slice_ranges: list[tuple[int, int]] | None = None, progress=None,
              refit_steps: bool = True, box_margin: float = 0.1, max_shrink: float = 0.05) -> list[tuple[np.ndarray, dict[int, float]]]:
    """Grow seed masks (slice, mask (R, C)) slice by slice in both directions, all seeds decoded together.

    Each next slice is prompted with the previous mask's grown box (each side moving inwards by at most
    ``max_shrink`` of the previous box, so one partial answer cannot collapse the region), and with ``refit_steps`` once more with the box of that answer, keeping the answer with the
    better predicted IoU less a penalty for jumping in size. A seed stops where its mask vanishes, its
    predicted IoU drops below ``min_iou``, it stops overlapping the previous mask, its slice range ends, or
    its region's features stop resembling the previous slice's (``min_step_similarity``) or the seed's
    (``min_seed_similarity``) — the check that keeps a lung from running on into the liver.
    """
    depth = stack.shape[0]
    volumes = [np.zeros(stack.shape, dtype=bool) for _ in seeds]
    ious: list[dict[int, float]] = [{} for _ in seeds]
    seed_features = []
    for i, (k, mask) in enumerate(seeds):
        volumes[i][k] = mask
        seed_features.append(pooled_feature(stack.embeddings([k])[0], mask) if mask.any() else None)
    ranges = slice_ranges or [(0, depth - 1)] * len(seeds)
    steps = 0
    for direction in (1, -1):
        # per seed: (slice, mask, feature, next prompt box)
        active = {i: (k, mask, seed_features[i], expand_box(mask_box(mask), mask.shape, box_margin))
                  for i, (k, mask) in enumerate(seeds) if mask.any()}
        while active:
            items = [(i, k + direction, *state) for i, (k, *state) in active.items()
                     if ranges[i][0] <= k + direction <= ranges[i][1]]
            if not items:
                break
            slice_indices = [item[1] for item in items]
            previous_areas = np.array([item[2].sum() for item in items], dtype=float)
            masks, iou = decode_boxes(stack, slice_indices, np.array([item[4] for item in items]))
            if refit_steps:  # keep the answer that scores well without jumping in size
                refit_masks, refit_iou, _ = refit(stack, slice_indices, masks, iou)
                size_penalty = lambda m: 0.5 * np.abs(np.log((m.sum(axis=(1, 2)) + 1) / previous_areas))
                better = refit_iou - size_penalty(refit_masks) > iou - size_penalty(masks)
                masks[better], iou[better] = refit_masks[better], refit_iou[better]
            active = {}
            for (i, k, previous, previous_feature, previous_box), mask, score, embedding in zip(
                    items, masks, iou, stack.embeddings(slice_indices)):
                area = mask.sum()
                if area < 4 or score < min_iou or np.logical_and(mask, previous).sum() < min_overlap * area:
                    continue
                feature = pooled_feature(embedding, mask)
                if (float(feature @ previous_feature) < min_step_similarity
                        or float(feature @ seed_features[i]) < min_seed_similarity):
                    continue
                volumes[i][k] = mask
                ious[i][k] = float(score)
                active[i] = (k, mask, feature, next_box(mask, previous_box, box_margin, max_shrink))
            steps += 1
            if progress:
                progress(steps)
    return list(zip(volumes, ious))


def prompt_to_stack(stack: SliceStack, point_lps: np.ndarray) -> np.ndarray:
    """A physical point (LPS mm) → stack index (slice, row, column); raises if it lies outside the image."""
    image = stack.image
    point = np.asarray(point_lps, dtype=float).ravel()
    if point.size == 3 and image.dimension == 2:
        point = point[:2]
    if point.size != image.dimension:
        raise PromptError(f"prompt {tuple(point)} has {point.size} coordinates but {image.source} is "
                          f"{image.dimension}D.")
    index = image.lps_to_index(point[None])
    if not image.contains_index(index)[0]:
        ras = point.copy()
        ras[:2] *= -1
        raise PromptError(f"prompt at RAS {tuple(np.round(ras, 1))} mm lies outside {image.source} "
                          f"(index {tuple(np.round(index[0], 1))}, size {image.size}).")
    return stack.image_index_to_stack(index)[0]


def segment_points(stack: SliceStack, points_lps: list[np.ndarray], progress=None) -> list[ROI]:
    """One ROI per physical click: box search on the click's slice, then propagation through the volume."""
    seeds, rois = [], []
    for point in points_lps:
        k, row, col = prompt_to_stack(stack, point)
        k = int(round(k))
        mask, iou, box, details = segment_click(stack, k, np.array([row, col]))
        seeds.append((k, mask))
        rois.append(ROI(np.zeros(stack.shape, dtype=bool), {k: iou}, k, box, details))
    if stack.shape[0] > 1:
        for roi, (volume, ious) in zip(rois, propagate(stack, seeds, progress=progress)):
            roi.mask = volume
            roi.slice_iou.update(ious)
    else:
        for roi, (_, mask) in zip(rois, seeds):
            roi.mask[0] = mask
    return rois


def segment_boxes(stack: SliceStack, boxes_lps: list[np.ndarray], progress=None) -> list[ROI]:
    """One ROI per box given by two opposite physical corners; propagation stays inside the box's slices."""
    seeds, ranges, rois = [], [], []
    for corners in boxes_lps:
        corners = np.asarray(corners, dtype=float).reshape(2, -1)
        a, b = prompt_to_stack(stack, corners[0]), prompt_to_stack(stack, corners[1])
        low, high = np.minimum(a, b), np.maximum(a, b)
        k = int(round((low[0] + high[0]) / 2))
        box = np.array([low[2], low[1], high[2], high[1]])
        masks, iou = decode_boxes(stack, [k], box[None])
        seeds.append((k, masks[0]))
        ranges.append((int(np.ceil(low[0] - 0.5)), int(np.floor(high[0] + 0.5))))
        rois.append(ROI(np.zeros(stack.shape, dtype=bool), {k: float(iou[0])}, k, box, {"box": True}))
    if stack.shape[0] > 1:
        for roi, (volume, ious) in zip(rois, propagate(stack, seeds, slice_ranges=ranges, progress=progress)):
            roi.mask = volume
            roi.slice_iou.update(ious)
    else:
        for roi, (_, mask) in zip(rois, seeds):
            roi.mask[0] = mask
    return rois
