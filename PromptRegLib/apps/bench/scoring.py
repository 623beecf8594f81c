"""Scoring a fixed → moving transform on a case: Dice per label, TRE against a truth transform, landmark rTRE."""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import numpy as np
import SimpleITK as sitk

from ...errors import InputImageError
from ...transform.metrics import (
    dice_per_label,
    labelled_points,
    target_registration_error,
    transform_points,
    warp_labels,
)
from .cases import Case, read_2d


def read_homography(path: str) -> np.ndarray:
    """The first 3×3 matrix of an OpenCV FileStorage XML file (e.g. the Oxford affine data's ``H1to3p``)."""
    node = ElementTree.parse(path).getroot().find("*[@type_id='opencv-matrix']")
    if node is None or node.findtext("rows", "").strip() != "3" or node.findtext("cols", "").strip() != "3":
        raise InputImageError(f"{path}: no 3×3 opencv-matrix found.")
    return np.array([float(v) for v in node.findtext("data").split()]).reshape(3, 3)


def landmark_pixels(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Corresponding (fixed, moving) landmark positions in pixels, each (N, 2) as (x = column, y = row)."""
    if case.landmarks_csv:
        table = np.loadtxt(case.path(case.landmarks_csv), delimiter=",", skiprows=1, ndmin=2)
        return table[:, 1:3], table[:, 3:5]
    homography = read_homography(case.path(case.landmarks_homography))
    fixed_size = np.array(read_2d(case.path(case.fixed)).GetSize(), dtype=float)
    moving_size = np.array(read_2d(case.path(case.moving)).GetSize(), dtype=float)
    columns, rows = case.landmark_grid
    inset = 0.05 * (fixed_size - 1)
    xs = np.linspace(inset[0], fixed_size[0] - 1 - inset[0], columns)
    ys = np.linspace(inset[1], fixed_size[1] - 1 - inset[1], rows)
    fixed = np.array([(x, y) for y in ys for x in xs])
    mapped = np.c_[fixed, np.ones(len(fixed))] @ homography.T
    moving = mapped[:, :2] / mapped[:, 2:]
    inside = np.all((moving >= 0) & (moving <= moving_size - 1), axis=1)
    return fixed[inside], moving[inside]


def landmark_errors_px(case: Case, transform: sitk.Transform | None) -> np.ndarray:
    """Per landmark: fixed pixel → fixed physical → transform → moving physical → moving pixel, distance (pixels)
    to the moving landmark. Each image's own spacing, origin and direction apply; ``None`` is the identity."""

    fixed_image, moving_image = read_2d(case.path(case.fixed)), read_2d(case.path(case.moving))
    fixed_px, moving_px = landmark_pixels(case)
    fixed_points = np.array([fixed_image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in fixed_px])
    mapped = fixed_points if transform is None else transform_points(transform, fixed_points)
    mapped_px = np.array([moving_image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in mapped])
    return np.linalg.norm(mapped_px - moving_px, axis=1)


def score(case: Case, transform: sitk.Transform | None) -> dict:
    """Dice per labelled structure, TRE (mm) against a truth transform, and landmark TRE in moving pixels with
    rTRE (TRE / fixed image diagonal, the ANHIR measure) of a fixed → moving transform (``None``: identity)."""

    row: dict = {}
    if case.fixed_labels and case.moving_labels:
        fixed_labels = read_2d(case.path(case.fixed_labels))
        moving_labels = read_2d(case.path(case.moving_labels))
        warped = warp_labels(moving_labels, fixed_labels, transform)
        values = [int(v) for v in case.labels]
        scores = dice_per_label(sitk.GetArrayViewFromImage(fixed_labels), warped, values)
        row["dice"] = {case.labels[str(v)]: scores[v] for v in values}
        row["dice_mean"] = float(np.mean(list(row["dice"].values())))
        if case.truth_transform:
            truth = sitk.ReadTransform(case.path(case.truth_transform))
            points = labelled_points(fixed_labels, max_points=5000)
            row["tre_mm"] = float(target_registration_error(transform, truth, points).mean())
    if case.has_landmarks:
        errors = landmark_errors_px(case, transform)
        diagonal = float(np.linalg.norm(read_2d(case.path(case.fixed)).GetSize()))
        row.update(tre_px=float(errors.mean()), tre_px_median=float(np.median(errors)),
                   rtre=float(errors.mean() / diagonal), rtre_median=float(np.median(errors) / diagonal),
                   landmarks=int(errors.size))
    return row



def roi_dice_per_click(case: Case, result) -> dict:
    """For each click named after a labelled structure: Dice of its ROI X with that label on the fixed image and of
    its ROI Y with that label on the moving image (how well the regions match the structure clicked), and whether
    the pair was used. Clicks are the user pairs "Prompt n" (n − 1 indexes ``prompt_names``)."""
    if not (case.fixed_labels and case.moving_labels and case.prompt_names):
        return {}
    values = {name: int(value) for value, name in case.labels.items()}
    label_images = [sitk.Resample(read_2d(case.path(path)), image.sitk_image, sitk.Transform(),
                                  sitk.sitkNearestNeighbor, 0) for path, image in
                    ((case.fixed_labels, result.fixed_image), (case.moving_labels, result.moving_image))]
    arrays = [sitk.GetArrayViewFromImage(image) for image in label_images]
    scores = {}
    for pair in result.pairs:
        if pair.source != "user" or not pair.name.startswith("Prompt "):
            continue
        index = int(pair.name.split()[1]) - 1
        name = case.prompt_names[index] if index < len(case.prompt_names) else None
        if name not in values:
            continue
        masks = (result.fixed_mask(pair), result.moving_mask(pair))
        dice = [float(2 * np.logical_and(mask, array == values[name]).sum()
                      / max(1, mask.sum() + (array == values[name]).sum())) for mask, array in zip(masks, arrays)]
        scores[name] = {"roi_x": dice[0], "roi_y": dice[1], "used": pair.accepted}
    return scores
