"""Scores of one cohort row from its optional columns: Dice per label, TRE against a truth transform, landmark TRE."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ...core.image import Image, ras_to_lps, read_image
from ...errors import InputImageError


def _read_labels(path: str) -> sitk.Image:
    return sitk.Cast(sitk.Round(read_image(path).sitk_image), sitk.sitkUInt16)


def _read_points_lps(path: str, dimension: int) -> np.ndarray:
    from ...io.points import read_markups

    return np.array([ras_to_lps(p)[:dimension] for p in read_markups(path)]).reshape(-1, dimension)


def score_row(scoring: dict[str, str], fixed: Image, transform: sitk.Transform | None) -> dict:
    """Scores of a fixed → moving ``transform`` (``None``: the identity, i.e. before registration):
    ``dice`` {label: Dice} and ``dice_mean`` from ``fixed_labels`` + ``moving_labels``; ``tre_mm`` against the
    ``truth`` transform at the fixed labels' voxels (without labels, at the fixed image's voxels);
    ``tre_landmarks_mm`` between ``fixed_landmarks`` mapped through the transform and ``moving_landmarks``."""
    from ...transform.metrics import (
        dice_per_label,
        labelled_points,
        target_registration_error,
        transform_points,
        warp_labels,
    )

    row: dict = {}
    fixed_labels = None
    if scoring.get("fixed_labels") and scoring.get("moving_labels"):
        fixed_labels = _read_labels(scoring["fixed_labels"])
        warped = warp_labels(_read_labels(scoring["moving_labels"]), fixed_labels, transform)
        dice = dice_per_label(sitk.GetArrayViewFromImage(fixed_labels), warped)
        row["dice"] = {str(k): v for k, v in dice.items()}
        row["dice_mean"] = float(np.nanmean(list(dice.values()))) if dice else None
    if scoring.get("truth"):
        try:
            truth = sitk.ReadTransform(scoring["truth"])
        except RuntimeError:
            raise InputImageError(f"{scoring['truth']}: cannot be read as an ITK transform.") from None
        where = fixed_labels if fixed_labels is not None else sitk.Cast(fixed.sitk_image * 0 + 1, sitk.sitkUInt8)
        points = labelled_points(where, max_points=5000)
        row["tre_mm"] = float(target_registration_error(transform, truth, points).mean())
    if scoring.get("fixed_landmarks") and scoring.get("moving_landmarks"):
        fixed_points = _read_points_lps(scoring["fixed_landmarks"], fixed.dimension)
        moving_points = _read_points_lps(scoring["moving_landmarks"], fixed.dimension)
        if len(fixed_points) != len(moving_points) or len(fixed_points) == 0:
            raise InputImageError(f"{scoring['fixed_landmarks']} and {scoring['moving_landmarks']} must hold the same "
                                  f"number of points (they hold {len(fixed_points)} and {len(moving_points)}).")
        mapped = fixed_points if transform is None else transform_points(transform, fixed_points)
        row["tre_landmarks_mm"] = float(np.linalg.norm(mapped - moving_points, axis=1).mean())
    return row
