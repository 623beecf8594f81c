"""A fitted transform (fixed → moving, LPS mm): affine plus a displacement on a control grid, its files and its
Jacobian."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..core.image import Image, tidy_direction


@dataclass
class FittedTransform:
    """``moving = affine_matrix @ fixed + affine_offset + displacement(fixed)`` in LPS mm."""

    affine_matrix: np.ndarray
    affine_offset: np.ndarray
    control_displacement: torch.Tensor | None   # (d, *grid) in mm over the fixed index domain, or None
    fixed_reference: Image
    report: dict = field(default_factory=dict)
    jacobian: np.ndarray | None = None          # det(∂φ/∂x) on jacobian_reference(), where it was computed

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


#: the Jacobian determinant is evaluated on the fixed domain resampled to about this many voxels
JACOBIAN_VOXELS = 1_000_000


def jacobian_determinant(transform: FittedTransform, voxels: int = JACOBIAN_VOXELS) -> np.ndarray:
    """det(∂φ/∂x) of the transform itself on the fixed domain at about ``voxels`` voxels (the fixed grid when it
    is smaller; numpy order); ≤ 0 means folding."""
    return _jacobian_on(transform, working_reference(transform.fixed_reference, voxels))


def jacobian_image(transform: FittedTransform, voxels: int = JACOBIAN_VOXELS) -> sitk.Image:
    """:func:`jacobian_determinant` as a float32 image with its grid's geometry (the file ``jacobian.nrrd``)."""
    reference = working_reference(transform.fixed_reference, voxels)
    held = transform.jacobian if transform.jacobian is not None and transform.jacobian.shape == reference.array.shape \
        else None  # computed once by the fit (folding checks), not again for the file
    values = held if held is not None else _jacobian_on(transform, reference)
    return reference.with_array(values.astype(np.float32)).sitk_image


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
