"""The affine a fit starts from: closed form from the ROI pairs' physical centroids and box corners."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..core.affine import (
    closed_form_affine,
    plausible_affine,
    rigid_from_centroids,
    rotation_angle_deg,
    rotation_demanded,
)
from ..core.image import Image


def box_corner_points(mask: Image, frame: np.ndarray | None = None) -> np.ndarray:
    """Physical centroid and the corners of the mask's bounding box along the LPS axes, (1 + 2^d, d) — or along the
    axes of ``frame`` (a rotation: its columns), for regions turned by it.

    Corner n is the same physical corner in any image, however it is stored (min/max per LPS axis)."""
    points = mask.index_to_lps(np.argwhere(np.asarray(mask.array) > 0.5)[:, ::-1].astype(float))
    frame = np.eye(points.shape[1]) if frame is None else frame
    turned = points @ frame
    low, high = turned.min(0), turned.max(0)
    corners = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(len(low), -1).T @ frame.T
    return np.vstack([points.mean(0), corners])


def _scaled(mask: Image, factor: float) -> Image:
    """``mask`` with its physical geometry (origin and spacing) multiplied by ``factor`` about the LPS origin."""
    image = sitk.Image(mask.sitk_image)
    image.SetOrigin([float(v) * factor for v in mask.origin])
    image.SetSpacing([float(v) * factor for v in mask.spacing])
    return Image(image, mask.source)


def initial_affine(fixed_masks: list[Image], moving_masks: list[Image], weights: np.ndarray,
                   max_rotation_deg: float = 30.0, turn: np.ndarray | None = None,
                   scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, str]:
    """Closed-form affine from physical centroids and box corners, and how it was settled.

    One pair gives a shift. The pairs' centres first give a rotation (:func:`rigid_from_centroids`), kept when it
    exceeds ``max_rotation_deg`` only if the centres demand it (a patient turned on their side): the moving regions'
    boxes are then taken along the turned axes, so box corners still correspond. A mirror, a squash or a rotation
    beyond ``max_rotation_deg`` that the centres do not demand means inconsistent pairs: the mean shift is kept.
    ``turn``: a rotation found before prompting (:mod:`PromptRegLib.prompting.orientation`), the start when the
    pairs are too few to fix one themselves. ``scale``: moving mm per fixed mm expected before any pair (photographs
    of other pixel sizes, :func:`~PromptRegLib.core.lengths.pixel_scale`): the moving points are judged divided by it."""
    if scale != 1.0:
        matrix, offset, how = initial_affine(fixed_masks, [_scaled(m, 1.0 / scale) for m in moving_masks], weights,
                                             max_rotation_deg, turn)
        return scale * matrix, scale * offset, f"{how}, scaled by the pixel sizes ({scale:.3g})"
    fixed_points = [box_corner_points(m) for m in fixed_masks]
    dimension = fixed_points[0].shape[1]
    fixed_centres = np.array([f[0] for f in fixed_points])
    moving_centres = np.array([box_corner_points(m)[0] for m in moving_masks])
    frame, turned = (np.eye(dimension), None) if turn is None else (turn, "turned as the features agree")
    shift = np.average(moving_centres - fixed_centres @ frame.T, axis=0, weights=weights)
    if len(fixed_masks) == 1:
        return frame, shift, "shift (one pair)" + (f", {turned}" if turned else "")
    rotation, rotation_offset = rigid_from_centroids(fixed_centres, moving_centres, weights)
    if rotation_angle_deg(rotation) > max_rotation_deg and rotation_demanded(fixed_centres, moving_centres, weights,
                                                                             rotation, rotation_offset):
        frame, turned = rotation, "turned by the pairs' centres"
    moving_points = [box_corner_points(m, frame) for m in moving_masks]
    stacked_fixed, stacked_moving = np.vstack(fixed_points), np.vstack(moving_points)
    point_weights = np.repeat(weights, len(fixed_points[0]))
    matrix, offset = closed_form_affine(stacked_fixed, stacked_moving, point_weights, reference=frame)
    if not plausible_affine(matrix):
        return frame, shift, "shift (affine implausible)"
    if rotation_angle_deg(matrix) > max_rotation_deg and not turned:
        return frame, shift, "shift (rotation not demanded by the pairs)"
    return matrix, offset, f"affine ({turned})" if turned else "affine"
