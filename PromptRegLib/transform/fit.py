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

from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..errors import Cancelled
from ..core.image import Image, tidy_direction
from ..core.lengths import pixel_scale
from .metrics import folding_fraction
from ..core.grid import Grid


@dataclass
class FitOptions:
    transform: str = "deformable"          # "affine" or "deformable"
    control_spacing_mm: tuple[float, ...] = (60.0, 30.0)  # coarse → fine control grids
    bending_weight: float = 10.0            # λ on bending energy (dimensionless: scaled by the control spacing²)
    max_iterations: int = 300
    tolerance: float = 1e-4                 # stop when the loss improves less than this over 20 iterations
    working_voxels: int = 150_000           # fixed grid is downsampled to about this many voxels
    learning_rate_mm: float = 1.0
    max_rotation_deg: float = 30.0          # larger rotations only when the pairs' centroids demand them
    feature_weight: float = 2.0             # weight of the dense feature term (1 − mean cosine); 0: ROI pairs only
    feature_affine: bool = True             # the feature term also refines the affine stage
    descriptor_weight: float = 2.0          # weight of the MIND-SSC term (1 − mean correlation), deformable stage

    @property
    def uses_descriptors(self) -> bool:
        """Whether the fit would use MIND-SSC descriptors (only the deformable stage does): compute them only then."""
        return self.descriptor_weight > 0 and self.transform == "deformable"


@dataclass
class FittedTransform:
    """``moving = affine_matrix @ fixed + affine_offset + displacement(fixed)`` in LPS mm."""

    affine_matrix: np.ndarray
    affine_offset: np.ndarray
    control_displacement: torch.Tensor | None   # (d, *grid) in mm over the fixed index domain, or None
    fixed_reference: Image
    report: dict = field(default_factory=dict)

    def displacement_on(self, reference: Image) -> np.ndarray:
        """Total displacement φ(x) − x (numpy order grid, last axis d, LPS mm) on a grid sharing the fixed domain."""
        points = grid_points_lps(reference)
        moved = points @ self.affine_matrix.T + self.affine_offset
        if self.control_displacement is not None:
            moved = moved + upsample_field(self.control_displacement, reference.array.shape).numpy().reshape(
                -1, reference.dimension)
        return (moved - points).reshape(*reference.array.shape, reference.dimension)

    def control_grid(self) -> tuple[sitk.Image, np.ndarray]:
        """The control grid's geometry (one control point beyond the fixed domain on each side) and the total
        displacement at its points, (*grid, d) numpy order, LPS mm."""
        reference = self.fixed_reference
        dimension = reference.dimension
        size = np.array(reference.size, dtype=float)
        grid = np.array(self.control_displacement.shape[1:][::-1]) if self.control_displacement is not None \
            else np.full(dimension, 2)
        step_index = np.where(size > 1, (size - 1) / np.maximum(grid - 1, 1), 1.0)  # fixed index units per step
        padded = grid + 2
        index_axes = [(np.arange(n) - 1) * h for n, h in zip(padded, step_index)]  # ITK order
        mesh = np.stack(np.meshgrid(*index_axes[::-1], indexing="ij"), axis=-1)[..., ::-1]  # numpy order grid
        points = reference.index_to_lps(mesh.reshape(-1, dimension))
        displacement = points @ self.affine_matrix.T + self.affine_offset - points
        if self.control_displacement is not None:
            inner = self.control_displacement.movedim(0, -1).numpy()
            edge = np.pad(inner, [(1, 1)] * dimension + [(0, 0)], mode="edge")  # nearest inner point outside
            displacement = displacement + edge.reshape(-1, dimension)
        image = sitk.GetImageFromArray(displacement.reshape(*padded[::-1], dimension).astype(np.float64),
                                       isVector=True)
        image.SetOrigin(reference.index_to_lps(-step_index[None])[0].tolist())
        image.SetSpacing((step_index * reference.spacing).tolist())
        image.SetDirection(reference.direction.ravel().tolist())
        return tidy_direction(image), displacement

    def to_sitk(self) -> sitk.Transform:
        """The whole transform, fixed → moving (LPS), as compact as it is exact: the affine alone, or a
        displacement field on the control grid (linear interpolation between control points reproduces the
        affine exactly and the deformation as fitted), never a field on the full fixed grid."""
        if self.control_displacement is None:
            return self.affine_sitk()
        field_image, _ = self.control_grid()
        return sitk.DisplacementFieldTransform(field_image)

    @classmethod
    def read(cls, affine_path, transform_path, fixed: Image) -> "FittedTransform":
        """A fit written as ``affine.tfm`` and ``transform.h5`` (:meth:`affine_sitk`, :meth:`to_sitk`) on ``fixed``."""
        affine = sitk.AffineTransform(sitk.ReadTransform(str(affine_path)))
        dimension = affine.GetDimension()
        matrix = np.array(affine.GetMatrix()).reshape(dimension, dimension)
        centre = np.array(affine.GetCenter())
        offset = np.array(affine.GetTranslation()) + centre - matrix @ centre
        whole = sitk.ReadTransform(str(transform_path))
        if whole.GetName() != "DisplacementFieldTransform":
            return cls(matrix, offset, None, fixed)
        field = sitk.DisplacementFieldTransform(whole).GetDisplacementField()
        values = sitk.GetArrayFromImage(field)[(slice(1, -1),) * dimension]  # the control points inside the padding
        index = np.stack(np.meshgrid(*[np.arange(1, n - 1) for n in field.GetSize()[::-1]], indexing="ij"),
                         axis=-1)[..., ::-1].reshape(-1, dimension)
        points = np.array([field.TransformContinuousIndexToPhysicalPoint(i.astype(float).tolist()) for i in index])
        control = values.reshape(-1, dimension) - (points @ matrix.T + offset - points)
        return cls(matrix, offset, torch.as_tensor(control.reshape(*values.shape[:-1], dimension),
                                                   dtype=torch.float32).movedim(-1, 0), fixed)

    def affine_sitk(self) -> sitk.AffineTransform:
        dimension = len(self.affine_offset)
        transform = sitk.AffineTransform(dimension)
        transform.SetMatrix(self.affine_matrix.ravel().tolist())
        transform.SetTranslation(self.affine_offset.tolist())
        return transform


#: below this mean MIND correlation at the affine the images share too little structure at image resolution: two
#: stains of a lung slide 0.04; where the term helps 0.15 (CT-MR) to 0.77 (CT) (Analysis/dense_refinement_sweep.py)
MIN_DESCRIPTOR_CORRELATION = 0.1


def grid_points_lps(image: Image) -> np.ndarray:
    """LPS positions of every voxel, (N, d), in numpy (C) order of the voxels."""
    shape = image.array.shape
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    numpy_index = np.stack([g.ravel() for g in grids], axis=1)
    return image.index_to_lps(numpy_index[:, ::-1])


def upsample_field(control: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Control displacements (d, *grid) → (*shape, d), linear, corners aligned with the image's corners."""
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    dense = F.interpolate(control[None], size=tuple(shape), mode=mode, align_corners=True)[0]
    return dense.movedim(0, -1)


def working_reference(fixed: Image, voxels: int) -> Image:
    """The fixed image's domain on a grid of about ``voxels`` voxels, as isotropic as possible (never finer)."""
    size = np.array(fixed.size, dtype=float)
    extent = (size - 1) * fixed.spacing
    low, high = float(fixed.spacing.min()), float(extent.max())
    for _ in range(50):  # bisect the target spacing
        target = (low + high) / 2
        count = np.prod(np.maximum(2, np.round(extent / np.maximum(fixed.spacing, target)) + 1))
        low, high = (target, high) if count > voxels else (low, target)
    new_size = np.minimum(size, np.maximum(2, np.round(extent / np.maximum(fixed.spacing, high)) + 1)).astype(int)
    new_spacing = np.where(new_size > 1, extent / np.maximum(new_size - 1, 1), fixed.spacing)
    reference = sitk.Image([int(n) for n in new_size], sitk.sitkFloat32)
    reference.SetSpacing(new_spacing.tolist())
    reference.SetOrigin(fixed.origin.tolist())
    reference.SetDirection(fixed.direction.ravel().tolist())
    return Image(reference, fixed.source)


def as_mask_image(mask: np.ndarray | Image, domain: Image) -> Image:
    """A mask with its geometry: an :class:`Image` as given, or a numpy mask on ``domain``'s grid."""
    if isinstance(mask, Image):
        return Image(sitk.Cast(mask.sitk_image, sitk.sitkFloat32), mask.source)
    return domain.with_array(np.asarray(mask, dtype=np.float32))


def soft_mask(mask: Image) -> np.ndarray:
    """A mask blurred by a Gaussian of one voxel spacing along each axis (numpy order, float32); axes of fewer
    than 4 voxels (a thin slab; ITK's recursive filter needs 4) stay sharp."""
    image = mask.sitk_image
    for axis, (spacing, size) in enumerate(zip(mask.spacing, mask.size)):
        if size >= 4:
            blur = sitk.RecursiveGaussianImageFilter()
            blur.SetDirection(axis)
            blur.SetSigma(float(spacing))
            image = blur.Execute(image)
    return sitk.GetArrayFromImage(image)


def resample_onto(values: np.ndarray, source: Image, reference: Image) -> np.ndarray:
    """Values on ``source``'s grid, resampled linearly on ``reference``'s grid (0 outside)."""
    image = source.with_array(values.astype(np.float32)).sitk_image
    return sitk.GetArrayFromImage(sitk.Resample(image, reference.sitk_image, sitk.Transform(), sitk.sitkLinear, 0.0))


def closed_form_affine(fixed_points: np.ndarray, moving_points: np.ndarray, weights: np.ndarray,
                       ridge: float = 1e-3, reference: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares ``moving ≈ A fixed + t`` pulled towards A = ``reference`` (ridge; the identity by
    default), so few points stay sane."""
    dimension = fixed_points.shape[1]
    w = weights / weights.sum()
    fixed_mean = (w[:, None] * fixed_points).sum(0)
    moving_mean = (w[:, None] * moving_points).sum(0)
    x = fixed_points - fixed_mean
    y = moving_points - moving_mean
    scale = max((w * (x ** 2).sum(1)).sum(), 1e-9)
    pull = np.eye(dimension) if reference is None else reference
    covariance = (w[:, None] * x).T @ x + ridge * scale * np.eye(dimension)
    cross = (w[:, None] * y).T @ x + ridge * scale * pull
    matrix = cross @ np.linalg.inv(covariance)
    return matrix, moving_mean - matrix @ fixed_mean


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """The angle of the rotation in an affine's polar decomposition (degrees)."""
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    if len(rotation) == 2:
        return float(np.degrees(abs(np.arctan2(rotation[1, 0], rotation[0, 0]))))
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))))


def plausible_affine(matrix: np.ndarray, scale_range: tuple[float, float] = (0.67, 1.5),
                     max_rotation_deg: float = 180.0) -> bool:
    """No reflection, every principal scale within ``scale_range`` (anatomy is not squashed or mirrored), and
    a rotation of at most ``max_rotation_deg``."""
    scales = np.linalg.svd(matrix, compute_uv=False)
    return bool(np.linalg.det(matrix) > 0 and scales.min() >= scale_range[0] and scales.max() <= scale_range[1]
                and rotation_angle_deg(matrix) <= max_rotation_deg)


def rigid_from_centroids(fixed_centroids: np.ndarray, moving_centroids: np.ndarray,
                         weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The proper rotation and shift that best map the fixed centroids onto the moving ones (weighted Kabsch)."""
    w = weights / weights.sum()
    fixed_mean, moving_mean = w @ fixed_centroids, w @ moving_centroids
    u, _, vt = np.linalg.svd(((fixed_centroids - fixed_mean) * w[:, None]).T @ (moving_centroids - moving_mean))
    signs = np.ones(len(fixed_mean))
    signs[-1] = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0  # a rotation, never a mirror
    rotation = vt.T @ np.diag(signs) @ u.T
    return rotation, moving_mean - rotation @ fixed_mean


def rotation_demanded(fixed_centroids: np.ndarray, moving_centroids: np.ndarray, weights: np.ndarray,
                      matrix: np.ndarray, offset: np.ndarray) -> bool:
    """Whether the pairs' centroids need the rotation: at least d + 1 pairs (d points always lie in one plane, and
    turning that plane over maps two mirror-image neighbours onto each other exactly), and ``matrix``, ``offset``
    explain them with less than a quarter of the residual of the best shift."""
    if len(fixed_centroids) <= fixed_centroids.shape[1]:
        return False
    w = weights / weights.sum()
    shift = (w[:, None] * (moving_centroids - fixed_centroids)).sum(0)
    shift_residual = (w * ((fixed_centroids + shift - moving_centroids) ** 2).sum(1)).sum()
    affine_residual = (w * ((fixed_centroids @ matrix.T + offset - moving_centroids) ** 2).sum(1)).sum()
    return bool(affine_residual < 0.25 * shift_residual)


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


class _PairLoss:
    """Mean per-pair soft Dice between fixed masks and moving masks sampled through φ.

    Fixed masks may lie on any grids; they are resampled on the working ``reference``. Moving masks share one
    grid and are sampled there through φ."""

    def __init__(self, fixed_masks: list[Image], moving_masks: list[Image], weights: np.ndarray, reference: Image):
        self.reference = reference
        self.dimension = reference.dimension
        self.points = torch.as_tensor(grid_points_lps(reference), dtype=torch.float32)
        # Masks blurred by one voxel along each axis: gradients beyond the boundary, and a Dice that varies
        # smoothly with sub-voxel shifts (binary masks sampled linearly snap to whole slices).
        self.fixed_soft = torch.as_tensor(np.stack([resample_onto(soft_mask(m), m, reference) for m in fixed_masks]),
                                          dtype=torch.float32).reshape(len(fixed_masks), -1)
        moving = moving_masks[0]
        if any(m.size != moving.size or not np.allclose(m.index_to_lps_matrix, moving.index_to_lps_matrix)
               for m in moving_masks):
            raise ValueError("moving masks must share one grid")
        self.moving_soft = torch.as_tensor(np.stack([soft_mask(m) for m in moving_masks]), dtype=torch.float32)[None]
        matrix, offset = Grid.of(moving).normalised_map()
        self.to_normalised = torch.as_tensor(matrix, dtype=torch.float32)
        self.normalised_offset = torch.as_tensor(offset, dtype=torch.float32)
        self.weights = torch.as_tensor(weights / weights.sum(), dtype=torch.float32)

    def dice(self, moved_points: torch.Tensor) -> torch.Tensor:
        """Per-pair soft Dice (P,) for moving positions (N, d) of the reference voxels."""
        grid = moved_points @ self.to_normalised.T + self.normalised_offset
        grid = grid.reshape(1, *([1] * (self.dimension - 1)), -1, self.dimension)
        sampled = F.grid_sample(self.moving_soft, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        warped = sampled.reshape(self.fixed_soft.shape)
        overlap = (warped * self.fixed_soft).sum(1)
        return 2 * overlap / (warped.sum(1) + self.fixed_soft.sum(1)).clamp_min(1e-6)

    def loss(self, moved_points: torch.Tensor) -> torch.Tensor:
        return 1.0 - (self.weights * self.dice(moved_points)).sum()


def bending_energy(dense: torch.Tensor, spacing_mm: np.ndarray) -> torch.Tensor:
    """Mean squared second derivatives (mm⁻¹ per mm of displacement) of a field (*shape, d) on a grid."""
    energy = dense.new_zeros(())
    spatial = dense.dim() - 1
    for axis in range(spatial):
        if dense.shape[axis] < 3:
            continue
        h = float(spacing_mm[axis])
        second = (dense.narrow(axis, 2, dense.shape[axis] - 2) - 2 * dense.narrow(axis, 1, dense.shape[axis] - 2)
                  + dense.narrow(axis, 0, dense.shape[axis] - 2)) / h ** 2
        energy = energy + (second ** 2).mean()
    return energy


def _optimise(parameters, closure, options: FitOptions, cancel) -> tuple[int, float]:
    optimiser = torch.optim.Adam(parameters, lr=options.learning_rate_mm)
    history: list[float] = []
    for iteration in range(options.max_iterations):
        if cancel and cancel():
            raise Cancelled("registration cancelled")
        optimiser.zero_grad()
        loss = closure()
        loss.backward()
        optimiser.step()
        history.append(float(loss.detach()))
        if iteration >= 40 and history[-21] - history[-1] < options.tolerance:
            break
    return len(history), history[-1]


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


def fit_transform(fixed: Image, moving: Image, fixed_masks: list[np.ndarray | Image],
                  moving_masks: list[np.ndarray | Image], weights: np.ndarray | None = None,
                  options: FitOptions | None = None, cancel=None, features=None,
                  turn: np.ndarray | None = None, start: FittedTransform | None = None) -> FittedTransform:
    """Fit the transform mapping fixed points to moving points so each moving ROI lands on its fixed ROI.

    ``fixed`` gives the domain the transform is defined on (the fixed image's grid); masks are Images with their
    own geometry, or numpy masks on ``fixed``'s / ``moving``'s grid. ``features`` (a
    :class:`~PromptRegLib.transform.features.FeaturePair`) adds the dense feature term, weighted by ``options.feature_weight``;
    ``turn`` starts the affine from a rotation found before prompting (see :func:`initial_affine`); ``start`` (the
    transform being corrected, one pair changed) starts the affine there and the finest control level from its
    field, skipping the coarse levels."""
    options = options or FitOptions()
    weights = np.ones(len(fixed_masks)) if weights is None else np.asarray(weights, dtype=float)
    fixed_masks = [as_mask_image(m, fixed) for m in fixed_masks]
    moving_masks = [as_mask_image(m, moving) for m in moving_masks]
    if start is not None:
        matrix, offset, how = start.affine_matrix, start.affine_offset, "warm start (the transform being corrected)"
    else:
        matrix, offset, how = initial_affine(fixed_masks, moving_masks, weights, options.max_rotation_deg, turn,
                                             pixel_scale(fixed, moving))
    initial_matrix, initial_offset = matrix, offset

    reference = working_reference(fixed, options.working_voxels)
    pair_loss = _PairLoss(fixed_masks, moving_masks, weights, reference)
    points = pair_loss.points
    feature_loss = descriptor_loss = None
    if features is not None and options.feature_weight > 0:
        from .features import FeatureLoss
        feature_loss = FeatureLoss(features, reference, points)
        if features.descriptors is not None and options.descriptor_weight > 0:
            descriptor_loss = FeatureLoss(features.descriptors, reference, points)

    def objective(moved_points, with_features: bool = True, with_descriptors: bool = True):
        loss = pair_loss.loss(moved_points)
        if feature_loss is not None and with_features:
            loss = loss + options.feature_weight * feature_loss.loss(moved_points)
        if descriptor_loss is not None and with_descriptors:
            loss = loss + options.descriptor_weight * descriptor_loss.loss(moved_points)
        return loss

    report = {"dice_identity": pair_loss.dice(points).tolist(), "initial_affine": how}
    matrix_t = torch.tensor(matrix, dtype=torch.float32)
    offset_t = torch.tensor(offset, dtype=torch.float32)
    report["dice_closed_form"] = pair_loss.dice(points @ matrix_t.T + offset_t).tolist()
    # parameters in millimetres of motion: A = A0 + M / extent, about the grid's centre
    centre = points.mean(0)
    extent = float(np.ptp(points.numpy(), axis=0).max())
    matrix_step = torch.zeros_like(matrix_t, requires_grad=True)
    shift = torch.zeros_like(offset_t, requires_grad=True)

    def affine(at_points):
        return (at_points - centre) @ (matrix_t + matrix_step / extent).T + centre @ matrix_t.T + offset_t + shift

    iterations, _ = _optimise([matrix_step, shift], lambda: objective(affine(points), options.feature_affine, False),
                              options, cancel)
    matrix = (matrix_t + matrix_step / extent).detach().numpy().astype(float)
    offset = (affine(torch.zeros(1, fixed.dimension))[0]).detach().numpy().astype(float)
    if len(fixed_masks) == 1 or not plausible_affine(matrix / pixel_scale(fixed, moving), max_rotation_deg=max(
            options.max_rotation_deg, rotation_angle_deg(initial_matrix) + 5.0)):
        # one pair fixes no rotation or scale; Dice alone can squash space onto one pair: keep the start
        matrix, offset = initial_matrix, initial_offset
        report["affine_refinement_refused"] = True
    affine_points = torch.as_tensor(grid_points_lps(reference) @ matrix.T + offset, dtype=torch.float32)
    report.update(dice_affine=pair_loss.dice(affine_points).tolist(), affine_iterations=iterations)
    if feature_loss is not None:
        report["feature_cosine_identity"] = float(feature_loss.cosine(points))
        report["feature_cosine_affine"] = float(feature_loss.cosine(affine_points))
    if descriptor_loss is not None:
        report["descriptor_correlation_affine"] = float(descriptor_loss.cosine(affine_points))
        if report["descriptor_correlation_affine"] < MIN_DESCRIPTOR_CORRELATION:
            descriptor_loss = None  # the images share too little structure at this scale: it would align noise
            report["descriptor_term"] = (f"dropped: correlation {report['descriptor_correlation_affine']:.3f} at the "
                                         f"affine < {MIN_DESCRIPTOR_CORRELATION}")

    control = None
    if options.transform == "deformable":
        shape = reference.array.shape
        reference_spacing = reference.spacing[::-1]
        extent_mm = (np.array(shape) - 1) * reference_spacing
        report["deformable_iterations"] = []
        levels = options.control_spacing_mm
        if start is not None and start.control_displacement is not None:
            control, levels = start.control_displacement, levels[-1:]
        for spacing_mm in levels:
            grid = tuple(int(max(2, np.ceil(e / spacing_mm) + 1)) for e in extent_mm)
            initial = (F.interpolate(control[None], size=grid, mode="bilinear" if len(grid) == 2 else "trilinear",
                                     align_corners=True)[0] if control is not None
                       else torch.zeros(fixed.dimension, *grid))
            control_t = initial.clone().requires_grad_(True)

            def closure():
                field = upsample_field(control_t, shape)
                return (objective(affine_points + field.reshape(-1, fixed.dimension))
                        + options.bending_weight * bending_energy(field, reference_spacing) * spacing_mm ** 2)

            iterations, _ = _optimise([control_t], closure, options, cancel)
            report["deformable_iterations"].append(iterations)
            control = control_t.detach()
        dense = upsample_field(control, shape).reshape(-1, fixed.dimension)
        report["dice_deformable"] = pair_loss.dice(affine_points + dense).tolist()
        if feature_loss is not None:
            report["feature_cosine_deformable"] = float(feature_loss.cosine(affine_points + dense))
        if descriptor_loss is not None:
            report["descriptor_correlation_deformable"] = float(descriptor_loss.cosine(affine_points + dense))
    return FittedTransform(matrix, offset, control, fixed, report)


def fit_without_folding(fixed: Image, moving: Image, fixed_masks, moving_masks, weights, options: FitOptions,
                        cancel=None, max_folding: float = 0.001, max_stiffening: int = 2, features=None, turn=None,
                        start=None):
    """:func:`fit_transform`, stiffened ×10 while the field folds more than ``max_folding`` and at last affine: a
    folding field explains disagreeing ROIs, not anatomy. Returns the transform, its folding fraction and the
    options that produced it."""
    for attempt in range(max_stiffening + 1):
        transform = fit_transform(fixed, moving, fixed_masks, moving_masks, weights, options, cancel=cancel,
                                  features=features, turn=turn, start=start)
        folding = folding_fraction(jacobian_determinant(transform))
        if folding <= max_folding or options.transform == "affine":
            break
        options = replace(options, bending_weight=options.bending_weight * 10) if attempt < max_stiffening - 1 \
            else replace(options, transform="affine")
    return transform, folding, options


#: the Jacobian determinant is evaluated on the fixed domain resampled to about this many voxels
JACOBIAN_VOXELS = 1_000_000


def jacobian_determinant(transform: FittedTransform, voxels: int = JACOBIAN_VOXELS) -> np.ndarray:
    """det(∂φ/∂x) of the transform itself on the fixed domain at about ``voxels`` voxels (the fixed grid when it
    is smaller; numpy order); ≤ 0 means folding."""
    return _jacobian_on(transform, working_reference(transform.fixed_reference, voxels))


def jacobian_image(transform: FittedTransform, voxels: int = JACOBIAN_VOXELS) -> sitk.Image:
    """:func:`jacobian_determinant` as a float32 image with its grid's geometry (the file ``jacobian.nrrd``)."""
    reference = working_reference(transform.fixed_reference, voxels)
    return reference.with_array(_jacobian_on(transform, reference).astype(np.float32)).sitk_image


def _jacobian_on(transform: FittedTransform, reference: Image) -> np.ndarray:
    displacement = transform.displacement_on(reference)
    dimension = reference.dimension
    index_to_physical = reference.direction @ np.diag(reference.spacing)
    # ∂φ/∂(numpy index) via finite differences of φ = x + d
    gradients = []
    for component in range(dimension):
        phi = displacement[..., component]
        grads = np.gradient(phi, axis=tuple(range(dimension))) if dimension > 1 else [np.gradient(phi)]
        gradients.append(np.stack(grads[::-1], axis=-1))  # back to ITK index order
    jac_index = np.stack(gradients, axis=-2) + index_to_physical  # ∂φ/∂index = ∂d/∂index + ∂x/∂index
    return np.linalg.det(jac_index) / np.linalg.det(index_to_physical)
