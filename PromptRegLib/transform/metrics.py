"""Measures of a registration: Dice per label, target registration error, folding."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..core.image import Image


def dice_per_label(fixed_labels: np.ndarray, warped_labels: np.ndarray, label_values=None) -> dict[int, float]:
    """Dice of each label value (default: every non-zero value present in the fixed labels)."""
    values = np.unique(fixed_labels[fixed_labels > 0]) if label_values is None else label_values
    scores = {}
    for value in values:
        a, b = fixed_labels == value, warped_labels == value
        total = a.sum() + b.sum()
        scores[int(value)] = float(2 * np.logical_and(a, b).sum() / total) if total else float("nan")
    return scores


def warp_labels(moving_labels: sitk.Image, fixed_reference: sitk.Image, transform: sitk.Transform | None) -> np.ndarray:
    """Moving labels sampled on the fixed grid through a fixed → moving transform (nearest neighbour)."""
    transform = transform if transform is not None else sitk.Transform(fixed_reference.GetDimension(), sitk.sitkIdentity)
    warped = sitk.Resample(moving_labels, fixed_reference, transform, sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(warped)


def transform_points(transform: sitk.Transform, points_lps: np.ndarray) -> np.ndarray:
    return np.array([transform.TransformPoint([float(v) for v in p]) for p in points_lps])


def target_registration_error(result: sitk.Transform | None, truth: sitk.Transform, points_lps: np.ndarray) -> np.ndarray:
    """‖result(p) − truth(p)‖ in mm for fixed points p (both map fixed → moving); identity if result is None."""
    predicted = points_lps if result is None else transform_points(result, points_lps)
    return np.linalg.norm(predicted - transform_points(truth, points_lps), axis=1)


def labelled_points(labels: Image | sitk.Image, step: int = 1, max_points: int = 20000, seed: int = 0) -> np.ndarray:
    """LPS positions of labelled (non-zero) voxels, subsampled reproducibly to at most ``max_points``."""
    image = labels if isinstance(labels, Image) else Image(labels)
    index = np.argwhere(np.asarray(image.array) > 0)[::step]
    if len(index) > max_points:
        index = index[np.random.default_rng(seed).choice(len(index), max_points, replace=False)]
    return image.index_to_lps(index[:, ::-1].astype(float))


def folding_fraction(jacobian_determinant: np.ndarray, where: np.ndarray | None = None) -> float:
    """The share of voxels (of ``where``, default all) whose Jacobian determinant is ≤ 0: the field folds there."""
    values = jacobian_determinant if where is None else jacobian_determinant[where]
    return float(np.mean(values <= 0)) if values.size else 0.0


def sdlogj(jacobian_determinant: np.ndarray, where: np.ndarray | None = None) -> float:
    """The standard deviation of log J over ``where`` (default all), J clipped at 1e-9: how unevenly the field
    stretches and squeezes (Learn2Reg's SDlogJ; 0 for an affine)."""
    values = jacobian_determinant if where is None else jacobian_determinant[where]
    return float(np.std(np.log(np.clip(values, 1e-9, None)))) if values.size else 0.0


def registered_dice(fixed: Image, moving: Image, fixed_masks: list[np.ndarray], moving_masks: list[np.ndarray],
                    transform: sitk.Transform, reference: Image) -> list[float | None]:
    """Dice of each ROI X with its ROI Y carried onto the fixed image by ``transform`` (fixed → moving), both
    sampled on ``reference`` (a grid over the fixed domain; linear, inside at ≥ 0.5); None where a mask is empty."""
    scores = []
    for fixed_mask, moving_mask in zip(fixed_masks, moving_masks):
        if not np.any(fixed_mask) or not np.any(moving_mask):
            scores.append(None)
            continue
        sampled = []
        for mask, image, through in ((fixed_mask, fixed, None), (moving_mask, moving, transform)):
            values = sitk.GetImageFromArray(np.asarray(mask, dtype=np.float32))
            values.CopyInformation(image.sitk_image)
            through = through or sitk.Transform(fixed.dimension, sitk.sitkIdentity)
            sampled.append(sitk.GetArrayViewFromImage(
                sitk.Resample(values, reference.sitk_image, through, sitk.sitkLinear, 0.0)) >= 0.5)
        total = sampled[0].sum() + sampled[1].sum()
        scores.append(float(2 * np.logical_and(*sampled).sum() / total) if total else None)
    return scores
