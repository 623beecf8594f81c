"""A large turn between the two images (a patient prone against supine, or on their side), found before prompting.

Inverse prompting looks for ROI Y around where a spatial prior expects ROI X (σ 60 mm). Turned by 90° about the
body's long axis, every structure lies 100 mm or more from that guess and mirror-image neighbours (the two lungs)
look alike, so the search pairs the wrong regions. Before any prompt is inverted, the model's own features of the
two images (the dense refinement's, :mod:`PromptRegLib.transform.features`) are compared over the fixed anatomy under quarter
turns about the slicing axis through the two anatomies' centres; a turn that agrees clearly better than both the
current prior and the unturned centre alignment becomes the prior. The fit then starts from the pairs' centres (:func:`PromptRegLib.transform.affine.initial_affine`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.grid import sample_on_grid
from ..views.base import View
from ..views.foreground import foreground_mask
from .inverse import AffinePrior

TURNS_DEG = (90.0, 180.0, 270.0)   # tried besides the current prior
MIN_GAIN = 0.03                    # a turn replaces the prior only when its mean feature cosine is this much higher
SAMPLES = 8000                     # fixed-anatomy points compared


def turn_matrix(dimension: int, axis: int, degrees: float) -> np.ndarray:
    """A rotation by ``degrees`` about LPS axis ``axis`` (3D), or in the plane (2D)."""
    angle = np.deg2rad(degrees)
    plane = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    if dimension == 2:
        return plane
    matrix = np.eye(3)
    others = [a for a in range(3) if a != axis]
    matrix[np.ix_(others, others)] = plane
    return matrix


def _anatomy_points(view: View) -> np.ndarray:
    return view.voxel_to_lps(np.argwhere(foreground_mask(view)).astype(float))


def orientation_prior(fixed: View, moving: View, prior: AffinePrior, features) -> tuple[AffinePrior, dict]:
    """``prior``, or a quarter turn about the slicing axis that the model's features (a
    :class:`~PromptRegLib.transform.features.FeaturePair`) agree with clearly better; and what was compared, for the report."""
    if features is None:
        return prior, {"searched": False}
    rng = np.random.default_rng(0)
    fixed_points, moving_points = _anatomy_points(fixed), _anatomy_points(moving)
    if len(fixed_points) == 0 or len(moving_points) == 0:
        return prior, {"searched": False}
    fixed_centre, moving_centre = fixed_points.mean(0), moving_points.mean(0)
    points = fixed_points[rng.choice(len(fixed_points), min(SAMPLES, len(fixed_points)), replace=False)]
    points_t = torch.as_tensor(points, dtype=torch.float32)
    fixed_values = F.normalize(sample_on_grid(features.fixed, features.fixed_grid, points_t), dim=0)
    moving_values = torch.cat([features.moving, torch.ones(1, *features.moving.shape[1:])])

    def agreement(candidate: AffinePrior) -> float:
        sampled = sample_on_grid(moving_values, features.moving_grid, torch.as_tensor(candidate.forward(points),
                                                                               dtype=torch.float32))
        return float(((fixed_values * F.normalize(sampled[:-1], dim=0)).sum(0) * sampled[-1].clamp(0, 1)).mean())

    dimension = fixed.image.dimension
    axis = getattr(fixed, "axis_lps", 2)
    # the turns are about the anatomies' centres: so is the unturned reference, besides the prior itself
    scale = moving.unit_mm / fixed.unit_mm  # photographs of other pixel sizes (see make_views)
    centred = AffinePrior(scale * np.eye(dimension), moving_centre - scale * fixed_centre)
    scores = {0.0: max(agreement(prior), agreement(centred))}
    candidates = {}
    for degrees in TURNS_DEG:
        turn = scale * turn_matrix(dimension, axis, degrees)
        candidates[degrees] = AffinePrior(turn, moving_centre - turn @ fixed_centre)
        scores[degrees] = agreement(candidates[degrees])
    best = max(scores, key=scores.get)
    report = {"searched": True, "cosine_by_turn_deg": {str(int(k)): round(v, 4) for k, v in scores.items()},
              "turn_deg": 0.0, "axis_lps": int(axis)}
    if best != 0.0 and scores[best] > scores[0.0] + MIN_GAIN:
        report["turn_deg"] = best
        return candidates[best], report
    return prior, report


def found_turn(report: dict, dimension: int) -> np.ndarray | None:
    """The turn a registration's report says was found (its ``orientation``), as a matrix; None if none."""
    orientation = report.get("orientation") or {}
    if not orientation.get("turn_deg"):
        return None
    return turn_matrix(dimension, orientation.get("axis_lps", 2), orientation["turn_deg"])
