"""Regions on a view's grid: boolean masks (K, R, C), their boxes, overlaps and physical dilation."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F


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
    area = lambda box: (box[2] - box[0] + 1) * (box[3] - box[1] + 1)  # noqa: E731
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


def dilate_mm(mask: np.ndarray, spacing_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    """A (K, R, C) mask grown by ``radius_mm`` along each axis (box neighbourhood; an axis whose spacing
    exceeds the radius is not grown). A box maximum is separable: one 1D pass per axis, O(voxels × radius)."""
    radius = [int(np.floor(radius_mm / s)) if np.isfinite(s) else 0 for s in spacing_mm]
    if not any(radius):
        return mask.copy()
    grown = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    for axis, r in enumerate(radius):
        if r:
            kernel = [2 * r + 1 if a == axis else 1 for a in range(3)]
            grown = F.max_pool3d(grown, kernel, stride=1, padding=[r if a == axis else 0 for a in range(3)])
    return grown[0, 0].numpy() > 0


def ring(mask: np.ndarray, spacing_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """The band just outside a region, ``width_mm`` wide."""
    return dilate_mm(mask, spacing_mm, width_mm) & ~mask


def interpolate_masks(near: np.ndarray, far: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` masks (R, C) between two slices' masks, nearest ``near`` first: shape-based interpolation — the
    signed distance maps (pixels) blended linearly, inside where negative — so a region shrinks or shifts smoothly
    between the slices instead of switching at the midpoint."""
    if count <= 0:
        return []
    distances = [sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(sitk.GetImageFromArray(m.astype(np.uint8)),
                                                                     insideIsPositive=False, squaredDistance=False,
                                                                     useImageSpacing=False))
                 if m.any() else None for m in (near, far)]
    if distances[0] is None or distances[1] is None:  # one side empty: the other's mask, shrinking no further
        kept = near if distances[0] is not None else far
        return [kept.copy() for _ in range(count)]
    return [((1 - t) * distances[0] + t * distances[1]) < 0 for t in np.arange(1, count + 1) / (count + 1)]
