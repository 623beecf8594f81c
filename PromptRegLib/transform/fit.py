"""Paired ROIs → a dense transform mapping fixed points to moving points (LPS mm).

Every mask comes with its own geometry (an :class:`~PromptRegLib.core.image.Image`: a view's working grid, or the
image's own grid), and every correspondence is physical: centroids and the corners of each region's bounding box
along the LPS axes, never points matched by array index.

Stages (all in physical units, spacing- and direction-aware):
1. closed-form affine: weighted ridge least squares between ROI centroids and LPS box corners (one pair gives a
   shift only; a rotation beyond ``max_rotation_deg`` is kept only when the centroids demand it);
2. affine refinement on the mean per-pair soft Dice;
3. deformable: a displacement on a coarse control grid (upsampled linearly to the image), optimised with
   Adam on (1 − mean per-pair soft Dice) + λ·bending energy, coarse to fine, stopping on convergence.
The mean of per-pair Dice (not one pooled Dice) lets small structures count. Given the model's features of both
images (:class:`~PromptRegLib.transform.features.FeaturePair`), stages 2 and 3 also minimise ``feature_weight`` × (1 − mean
feature cosine) over the fixed anatomy (dense refinement, :mod:`PromptRegLib.transform.features`), and ``descriptor_weight`` ×
(1 − mean correlation) of the images' MIND-SSC descriptors (:mod:`PromptRegLib.transform.mind`), which see edges at image
resolution where the features see organs — in the deformable stage only: edges capture a few millimetres, and on
an affine still to be placed they pull towards whichever edge is nearest.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..core.affine import plausible_affine, rotation_angle_deg
from ..core.grid import sample_on_grid
from ..core.image import Image
from ..core.lengths import pixel_scale
from ..core.progress import Progress, ignore, span
from ..errors import Cancelled
from .affine import initial_affine
from .discrete import cost_volume, coupled_convex, discrete_geometry
from .features import FeatureLoss
from .field import (
    FittedTransform,
    grid_points_lps,
    jacobian_determinant,
    upsample_field,
    working_reference,
)
from .losses import PairLoss, as_mask_image, bending_energy
from .metrics import folding_fraction

#: the kinds of transform a fit can produce
TRANSFORMS = ("affine", "deformable")


@dataclass
class FitOptions:
    transform: str = "deformable"          # one of TRANSFORMS
    control_spacing_mm: tuple[float, ...] = (60.0, 30.0)  # coarse → fine control grids
    bending_weight: float = 10.0            # λ on bending energy (dimensionless: scaled by the control spacing²)
    max_iterations: int = 300
    tolerance: float = 1e-4                 # stop when the loss improves less than this over 20 iterations
    working_voxels: int = 150_000           # fixed grid is downsampled to about this many voxels
    coarse_voxels: int = 20_000             # the affine and every control level but the finest on this many (0: all
                                            # on working_voxels): a step's cost follows the points it samples
    finest_lbfgs_iterations: int = 20       # the finest control level by L-BFGS, at most this many (0: Adam as
                                            # the others): started near its optimum, it needs few steps
    learning_rate_mm: float = 1.0
    max_rotation_deg: float = 30.0          # larger rotations only when the pairs' centroids demand them
    feature_weight: float = 2.0             # weight of the dense feature term (1 − mean cosine); 0: ROI pairs only
    feature_affine: bool = True             # the feature term also refines the affine stage
    descriptor_weight: float = 2.0          # weight of the MIND-SSC term (1 − mean correlation), deformable stage
    discrete_radius_mm: float = 0.0         # the discrete first step searches displacements this far (0: off)
    discrete_cell_mm: float = 8.0           # … for cells of about this size (transform/discrete.py)

    @property
    def uses_descriptors(self) -> bool:
        """Whether the fit would use MIND-SSC descriptors (only the deformable stage does): compute them only then."""
        return self.descriptor_weight > 0 and self.transform == "deformable"


#: below this mean MIND correlation at the affine the images share too little structure at image resolution: two
#: stains of a lung slide 0.04; where the term helps 0.15 (CT-MR) to 0.77 (CT) (Analysis/dense_refinement_sweep.py)
MIN_DESCRIPTOR_CORRELATION = 0.1
#: a fitted field folding more of the fixed domain than this is stiffened (folding explains disagreeing ROIs)
MAX_FOLDING = 0.001


#: the optimiser stops once the loss improved less than ``tolerance`` over this many iterations …
CONVERGENCE_WINDOW = 20
#: … and not before this many (Adam's first steps are noisy)
MIN_ITERATIONS = 40
#: the affine refinement may turn this much beyond the closed form's rotation before it is refused as implausible
ROTATION_SLACK_DEG = 5.0


def _lbfgs(parameters, closure, iterations: int, cancel, progress: Progress, stage: str) -> int:
    """L-BFGS with a strong-Wolfe line search on ``closure()``, at most ``iterations`` steps; returns the function
    evaluations made."""
    # the line search evaluates more often than it steps: count evaluations against torch's default bound (one line
    # search may still pass it: the count shown stops there)
    max_evaluations = iterations * 5 // 4
    optimiser = torch.optim.LBFGS(parameters, lr=1.0, max_iter=iterations, max_eval=max_evaluations, history_size=10,
                                  tolerance_grad=1e-6, tolerance_change=1e-6, line_search_fn="strong_wolfe")
    evaluations = []

    def evaluate():
        if cancel and cancel():
            raise Cancelled("registration cancelled")
        progress(stage, None, min(len(evaluations), max_evaluations), max_evaluations, "evaluations")
        optimiser.zero_grad()
        loss = closure()
        loss.backward()
        evaluations.append(float(loss.detach()))
        return loss

    optimiser.step(evaluate)
    return len(evaluations)


def _optimise(parameters, closure, options: FitOptions, cancel, progress: Progress = ignore,
              stage: str = "fitting", lbfgs_iterations: int = 0) -> int:
    """Adam on ``closure()`` until it converges (see :data:`CONVERGENCE_WINDOW`), or L-BFGS for at most
    ``lbfgs_iterations``; returns the iterations (evaluations) run."""
    if lbfgs_iterations:
        return _lbfgs(parameters, closure, lbfgs_iterations, cancel, progress, stage)
    optimiser = torch.optim.Adam(parameters, lr=options.learning_rate_mm)
    history: list[float] = []
    for iteration in range(options.max_iterations):
        if cancel and cancel():
            raise Cancelled("registration cancelled")
        if iteration % 10 == 0:
            progress(stage, iteration / options.max_iterations, iteration, options.max_iterations, "iterations")
        optimiser.zero_grad()
        loss = closure()
        loss.backward()
        optimiser.step()
        history.append(float(loss.detach()))
        if iteration >= MIN_ITERATIONS and history[-CONVERGENCE_WINDOW - 1] - history[-1] < options.tolerance:
            break
    return len(history)


def _channels(objective: Objective, features, moved_points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """(fixed, moving, weights): the objective's terms as channels on the working grid (C, *shape) — the ROI pairs
    (each scaled so a small region weighs like a large one), the features and MIND-SSC (unit vectors, so their
    squared differences are 2 − 2·cosine) — the moving ones sampled at ``moved_points``; zero off the fixed
    anatomy, which the discrete step then leaves to its neighbours."""
    options, shape = objective.options, objective.reference.array.shape
    pairs = objective.pairs
    size = pairs.fixed_soft.mean(1).clamp_min(1e-4).sqrt()[:, None]
    fixed, moving = [pairs.fixed_soft / size], [pairs.moving_at(moved_points) / size]
    weights = [pairs.weights.sqrt() * np.sqrt(len(pairs.weights))]
    anatomy = torch.ones(pairs.fixed_soft.shape[1])
    for values, weight in ((features, options.feature_weight),
                           (features.descriptors if features is not None and objective.descriptors else None,
                            options.descriptor_weight)):
        if values is None or weight <= 0:
            continue
        fixed.append(F.normalize(sample_on_grid(values.fixed, values.fixed_grid, objective.points), dim=0))
        moving.append(F.normalize(sample_on_grid(values.moving, values.moving_grid, moved_points), dim=0))
        weights.append(torch.full((len(fixed[-1]),), float(np.sqrt(weight / 2))))
    if features is not None and objective.features is not None:
        anatomy = objective.features.anatomy.float()
    stack = lambda parts: (torch.cat(parts) * anatomy).reshape(-1, *shape)  # noqa: E731
    return stack(fixed), stack(moving), torch.cat(weights)


def discrete_start(objective: Objective, features, affine_points: torch.Tensor, matrix: np.ndarray,
                   report: dict) -> torch.Tensor:
    """A displacement field (d, *cells) in LPS mm on the moving side, from the discrete search over the combined
    channels (:mod:`.discrete`), for the deformable fit to start from: it catches local shifts of tens of mm that a
    gradient fit started at the affine misses. Cells of about ``discrete_cell_mm`` along each axis (coarser where
    the cost volume would outgrow its memory budget, :func:`~.discrete.discrete_geometry`), offsets within about
    ``discrete_radius_mm`` along each; a shift Δ of the fixed grid is the moving displacement A·Δ."""
    options, reference = objective.options, objective.reference
    fixed, moving, weights = _channels(objective, features, affine_points)
    spacing_numpy = reference.spacing[::-1]
    geometry = discrete_geometry(fixed.shape[1:], spacing_numpy, options.discrete_cell_mm,
                                 options.discrete_radius_mm)
    cost, offsets = cost_volume(fixed, moving, geometry.cell_voxels, geometry.radius_cells, weights)
    cells = coupled_convex(cost, offsets)                                  # (d, *cells), numpy-order axes, cells
    cell_voxels = torch.tensor(geometry.cell_voxels, dtype=torch.float32).view(-1, *[1] * reference.dimension)
    step_index = (cells * cell_voxels).flip(0).reshape(reference.dimension, -1).T.numpy()  # ITK order, voxels
    shift = step_index @ (reference.direction * reference.spacing).T @ matrix.T            # A · Δ, LPS mm
    cell_mm = geometry.cell_mm(spacing_numpy)[::-1]                                        # ITK order
    report["discrete_step"] = {"cell_mm": cell_mm,
                               "radius_mm": [r * c for r, c in zip(geometry.radius_cells[::-1], cell_mm)],
                               "offsets": geometry.offsets, "cells": int(np.prod(geometry.cells)),
                               "mean_shift_mm": float(np.linalg.norm(shift, axis=1).mean())}
    return torch.as_tensor(shift.T.reshape(reference.dimension, *cells.shape[1:]), dtype=torch.float32)


class Objective:
    """What the fit minimises at the moved positions of the working grid's voxels (fixed → moving, LPS mm):
    1 − mean per-pair soft Dice, plus ``feature_weight`` × (1 − feature cosine) and ``descriptor_weight`` ×
    (1 − MIND correlation) where the features are given."""

    def __init__(self, fixed: Image, moving: Image, fixed_masks: list[Image], moving_masks: list[Image],
                 weights: np.ndarray, options: FitOptions, features=None):
        self.options = options
        self.reference = working_reference(fixed, options.working_voxels)
        self.pairs = PairLoss(fixed_masks, moving_masks, weights, self.reference)
        self.points = self.pairs.points
        self.features = self.descriptors = None
        if features is not None and options.feature_weight > 0:
            self.features = FeatureLoss(features, self.reference, self.points)
            if features.descriptors is not None and options.descriptor_weight > 0:
                self.descriptors = FeatureLoss(features.descriptors, self.reference, self.points)

    def __call__(self, moved_points: torch.Tensor, with_features: bool = True,
                 with_descriptors: bool = True) -> torch.Tensor:
        loss = self.pairs.loss(moved_points)
        if self.features is not None and with_features:
            loss = loss + self.options.feature_weight * self.features.loss(moved_points)
        if self.descriptors is not None and with_descriptors:
            loss = loss + self.options.descriptor_weight * self.descriptors.loss(moved_points)
        return loss

    def describe(self, moved_points: torch.Tensor, stage: str, report: dict) -> None:
        """Each term's value at ``moved_points`` into ``report`` (``dice_<stage>``, ``feature_cosine_<stage>``…)."""
        report[f"dice_{stage}"] = self.pairs.dice(moved_points).tolist()
        if self.features is not None:
            report[f"feature_cosine_{stage}"] = float(self.features.cosine(moved_points))
        if self.descriptors is not None:
            report[f"descriptor_correlation_{stage}"] = float(self.descriptors.cosine(moved_points))

    def drop_unshared_descriptors(self, affine_points: torch.Tensor, report: dict) -> None:
        """Stop using MIND where the images share too little structure at this scale: it would align noise."""
        if self.descriptors is None:
            return
        correlation = float(self.descriptors.cosine(affine_points))
        report["descriptor_correlation_affine"] = correlation
        if correlation < MIN_DESCRIPTOR_CORRELATION:
            self.descriptors = None
            report["descriptor_term"] = (f"dropped: correlation {correlation:.3f} at the affine < "
                                         f"{MIN_DESCRIPTOR_CORRELATION}")


def _refine_affine(objective: Objective, matrix: np.ndarray, offset: np.ndarray, cancel,
                   progress: Progress) -> tuple[np.ndarray, np.ndarray, int]:
    """The affine refined on the objective (features only where ``feature_affine``; never MIND), its parameters in
    millimetres of motion about the working grid's centre (A = A0 + M / extent), so one learning rate suits both."""
    options, points = objective.options, objective.points
    matrix_t = torch.tensor(matrix, dtype=torch.float32)
    offset_t = torch.tensor(offset, dtype=torch.float32)
    centre = points.mean(0)
    extent = float(np.ptp(points.numpy(), axis=0).max())
    matrix_step = torch.zeros_like(matrix_t, requires_grad=True)
    shift = torch.zeros_like(offset_t, requires_grad=True)

    def affine(at_points):
        return (at_points - centre) @ (matrix_t + matrix_step / extent).T + centre @ matrix_t.T + offset_t + shift

    iterations = _optimise([matrix_step, shift], lambda: objective(affine(points), options.feature_affine, False),
                           options, cancel, progress, "fitting the affine")
    refined = (matrix_t + matrix_step / extent).detach().numpy().astype(float)
    return refined, affine(torch.zeros(1, len(offset)))[0].detach().numpy().astype(float), iterations


def _resized(field: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """A field (d, *cells) on a control grid of ``grid`` points (corners aligned): linear where the grid is as fine
    or finer, the cells' means where it is coarser (a sampled point would miss what lies between)."""
    if all(g >= c for g, c in zip(grid, field.shape[1:])):
        return F.interpolate(field[None], size=grid, mode="bilinear" if len(grid) == 2 else "trilinear",
                             align_corners=True)[0]
    return F.adaptive_avg_pool3d(field[None], grid)[0] if len(grid) == 3 else F.adaptive_avg_pool2d(field[None], grid)[0]


def _fit_deformable(objectives: tuple[Objective, Objective], affine: tuple[np.ndarray, np.ndarray],
                    start: FittedTransform | None, cancel, progress: Progress, report: dict,
                    initial: torch.Tensor | None = None) -> torch.Tensor:
    """Control-grid displacements (d, *grid) in mm over the fixed domain, coarse to fine (``control_spacing_mm``),
    each level started from the last (the first from ``initial``, a coarse field (d, *cells), when given) — on the
    coarse objective, the finest level on the fine one; a ``start`` with a field begins at its field on the finest
    level. The field's grid spans the fixed domain whatever the objective's resolution."""
    coarse, fine = objectives
    options = fine.options
    dimension = fine.reference.dimension
    extent_mm = (np.array(fine.reference.array.shape) - 1) * fine.reference.spacing[::-1]
    report["deformable_iterations"] = []
    control, levels = initial, options.control_spacing_mm
    if start is not None and start.control_displacement is not None:
        control, levels = start.control_displacement, levels[-1:]
    for level, spacing_mm in enumerate(levels):
        objective = fine if level == len(levels) - 1 else coarse
        shape, reference_spacing = objective.reference.array.shape, objective.reference.spacing[::-1]
        affine_points = torch.as_tensor(grid_points_lps(objective.reference) @ affine[0].T + affine[1],
                                        dtype=torch.float32)
        grid = tuple(int(max(2, np.ceil(e / spacing_mm) + 1)) for e in extent_mm)
        initial = torch.zeros(dimension, *grid) if control is None else _resized(control, grid)
        control_t = initial.clone().requires_grad_(True)

        def closure(objective=objective, shape=shape, points=affine_points, spacing=reference_spacing, h=spacing_mm):
            field = upsample_field(control_t, shape)
            return (objective(points + field.reshape(-1, dimension))
                    + options.bending_weight * bending_energy(field, spacing) * h ** 2)

        finest = level == len(levels) - 1
        report["deformable_iterations"].append(
            _optimise([control_t], closure, options, cancel, span(progress, level / len(levels),
                                                                  (level + 1) / len(levels)),
                      f"fitting the deformation ({spacing_mm:g} mm)",
                      options.finest_lbfgs_iterations if finest else 0))
        control = control_t.detach()
    return control


def fit_transform(fixed: Image, moving: Image, fixed_masks: list[np.ndarray | Image],
                  moving_masks: list[np.ndarray | Image], weights: np.ndarray | None = None,
                  options: FitOptions | None = None, cancel=None, features=None,
                  turn: np.ndarray | None = None, start: FittedTransform | None = None,
                  progress: Progress = ignore) -> FittedTransform:
    """Fit the transform mapping fixed points to moving points so each moving ROI lands on its fixed ROI.

    ``fixed`` gives the domain the transform is defined on (the fixed image's grid); masks are Images with their
    own geometry, or numpy masks on ``fixed``'s / ``moving``'s grid. ``features`` (a
    :class:`~PromptRegLib.transform.features.FeaturePair`) adds the dense feature term, weighted by
    ``options.feature_weight``; ``turn`` starts the affine from a rotation found before prompting (see
    :func:`~PromptRegLib.transform.affine.initial_affine`); ``start`` (the transform being corrected, one pair
    changed) starts the affine there and the finest control level from its field, skipping the coarse levels."""
    options = options or FitOptions()
    weights = np.ones(len(fixed_masks)) if weights is None else np.asarray(weights, dtype=float)
    fixed_masks = [as_mask_image(m, fixed) for m in fixed_masks]
    moving_masks = [as_mask_image(m, moving) for m in moving_masks]
    if start is not None:
        matrix, offset, how = start.affine_matrix, start.affine_offset, "warm start (the transform being corrected)"
    else:
        matrix, offset, how = initial_affine(fixed_masks, moving_masks, weights, options.max_rotation_deg, turn,
                                             pixel_scale(fixed, moving))
    objective = Objective(fixed, moving, fixed_masks, moving_masks, weights, options, features)
    coarse = objective if not options.coarse_voxels else Objective(
        fixed, moving, fixed_masks, moving_masks, weights, replace(options, working_voxels=options.coarse_voxels),
        features)
    points = objective.points
    report = {"dice_identity": objective.pairs.dice(points).tolist(), "initial_affine": how,
              "dice_closed_form": objective.pairs.dice(
                  points @ torch.tensor(matrix, dtype=torch.float32).T + torch.tensor(offset, dtype=torch.float32)
              ).tolist()}
    refined, refined_offset, report["affine_iterations"] = _refine_affine(coarse, matrix, offset, cancel,
                                                                          span(progress, 0.0, 0.3))
    if len(fixed_masks) > 1 and plausible_affine(refined / pixel_scale(fixed, moving), max_rotation_deg=max(
            options.max_rotation_deg, rotation_angle_deg(matrix) + ROTATION_SLACK_DEG)):
        matrix, offset = refined, refined_offset
    else:  # one pair fixes no rotation or scale; Dice alone can squash space onto one pair: keep the start
        report["affine_refinement_refused"] = True
    affine_points = torch.as_tensor(grid_points_lps(objective.reference) @ matrix.T + offset, dtype=torch.float32)
    report["dice_affine"] = objective.pairs.dice(affine_points).tolist()
    if objective.features is not None:
        report["feature_cosine_identity"] = float(objective.features.cosine(points))
        report["feature_cosine_affine"] = float(objective.features.cosine(affine_points))
    objective.drop_unshared_descriptors(affine_points, report)
    if coarse is not objective:
        coarse.drop_unshared_descriptors(torch.as_tensor(grid_points_lps(coarse.reference) @ matrix.T + offset,
                                                         dtype=torch.float32), {})
    control = None
    if options.transform == "deformable":
        initial = None
        if start is None and options.discrete_radius_mm > 0:
            progress("searching large local displacements", 0.3)
            initial = discrete_start(objective, features, affine_points, matrix, report)
        control = _fit_deformable((coarse, objective), (matrix, offset), start, cancel, span(progress, 0.3, 1.0),
                                  report, initial)
        dense = upsample_field(control, objective.reference.array.shape).reshape(-1, fixed.dimension)
        objective.describe(affine_points + dense, "deformable", report)
    return FittedTransform(matrix, offset, control, fixed, report)


def fit_without_folding(fixed: Image, moving: Image, fixed_masks, moving_masks, weights, options: FitOptions,
                        cancel=None, max_folding: float = MAX_FOLDING, max_stiffening: int = 2, features=None,
                        turn=None, start=None, progress: Progress = ignore):
    """:func:`fit_transform`, stiffened ×10 while the field folds more than ``max_folding`` and at last affine: a
    folding field explains disagreeing ROIs, not anatomy. Returns the transform, its folding fraction and the
    options that produced it."""
    for attempt in range(max_stiffening + 1):
        transform = fit_transform(fixed, moving, fixed_masks, moving_masks, weights, options, cancel=cancel,
                                  features=features, turn=turn, start=start, progress=progress)
        transform.jacobian = jacobian_determinant(transform)
        folding = folding_fraction(transform.jacobian)
        if folding <= max_folding or options.transform == "affine":
            break
        options = replace(options, bending_weight=options.bending_weight * 10) if attempt < max_stiffening - 1 \
            else replace(options, transform="affine")
    return transform, folding, options


