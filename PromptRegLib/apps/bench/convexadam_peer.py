"""ConvexAdam as a bench peer: Siebert & Heinrich's MIND-SSC features, coupled convex optimisation, then Adam.

PyPI ``convexadam`` 0.2.0 (import name ``convexAdam``; Apache-2.0, pure torch), installed without its
dependencies (``pip install --no-deps convexadam==0.2.0`` plus ``nibabel`` and ``scipy``, which it imports:
scipy is not in its declared requirements, scikit-learn is declared but never imported).

Conventions of ``convexAdam.convex_adam_MIND.convex_adam_pt`` (read in its 0.2.0 source, with
``convexAdam.apply_convex.apply_convex`` for the direction of the field):

* two arrays of one shape on ONE voxel grid; the function is agnostic to index order, and its own CLI
  (``convex_adam``, via nibabel) feeds X,Y,Z arrays, as we do here (SimpleITK's numpy z,y,x array transposed);
* it returns an (X, Y, Z, 3) float array: component ``c`` is the displacement along array axis ``c``, in voxels,
  from a FIXED voxel to the MOVING voxel that matches it — ``apply_convex`` warps with
  ``moving(i + disp[i])``: a pull-back field, fixed → moving, the direction the bench scores;
* it does no intensity preprocessing of its own (MIND-SSC is invariant to a global gain and offset); sizes not a
  multiple of ``grid_sp`` and ``grid_sp_adam`` are floored on the coarse grids, then stretched back.

Two things it leaves to the caller that we do here: sizes are padded (edge values) to a multiple of both grid
spacings, and the Adam stage's unit is corrected — it samples the moving features at ``grid0 + disp / ((n-1)/2)``
with ``align_corners=False``, i.e. at ``i + disp * n / (n - 1)`` voxels of its n-voxel grid, but returns ``disp``;
the field is scaled back by ``n / (n - 1)`` per axis (:data:`CORRECT_ADAM_UNIT`), so it says where its own cost
was evaluated (a 4 % shortfall on a 24-voxel grid, under 1 % on a 128-voxel one).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import SimpleITK as sitk

from ...errors import InputImageError
from .cases import Case
from .peers import _read_for_peer

#: below this minimum an image is taken for CT in Hounsfield units (air is −1000 HU; MR and photographs are ≥ 0)
CT_MINIMUM_HU = -500.0

#: the soft-tissue window CT is clipped to, as for ConvexAdam on abdomen MR/CT (the package itself clips nothing):
#: air (−1000) and bone (> 1000) edges would otherwise dominate MIND-SSC's patch distances over the soft-tissue
#: contrast that MR shares with CT
CT_WINDOW_HU = (-450.0, 450.0)

#: ConvexAdam's defaults (``convex_adam_pt``), the Learn2Reg MIND setting
MIND_R, MIND_D, LAMBDA_WEIGHT, GRID_SP, DISP_HW, GRID_SP_ADAM = 1, 2, 1.25, 6, 4, 2

#: Adam iterations: its default (80), and fewer for ``quick``
ADAM_ITERATIONS, QUICK_ADAM_ITERATIONS = 80, 40

#: scale the returned field by n / (n − 1) per axis (see the module docstring); False: ConvexAdam's raw output
CORRECT_ADAM_UNIT = True


def prepare_intensities(image: sitk.Image) -> sitk.Image:
    """float32 copy of ``image``; clipped to :data:`CT_WINDOW_HU` when it looks like CT in HU (minimum below
    :data:`CT_MINIMUM_HU`)."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    if float(sitk.GetArrayViewFromImage(image).min()) < CT_MINIMUM_HU:
        image = sitk.Clamp(image, sitk.sitkFloat32, *CT_WINDOW_HU)
    return image


def normalise(array: np.ndarray) -> np.ndarray:
    """Rescaled to [0, 1] (zeros for a constant image), float32."""
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return scaled.astype(np.float32)


def xyz_array(image: sitk.Image) -> np.ndarray:
    """A 3D image's voxels indexed X, Y, Z (SimpleITK's numpy z, y, x array transposed)."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def padded_shape(shape, multiple: int, minimum: int) -> tuple[int, ...]:
    """Each size rounded up to a multiple of ``multiple``, and at least ``minimum``."""
    return tuple(max(minimum, multiple * math.ceil(n / multiple)) for n in shape)


def field_to_transform(field_xyz: np.ndarray, fixed: sitk.Image,
                       initial: sitk.Transform | None = None) -> sitk.Transform:
    """ConvexAdam's (X, Y, Z, 3) voxel displacement on ``fixed``'s grid (fixed voxel → moving voxel, components
    along the index axes) as a SimpleITK transform of physical (LPS mm) points, fixed → moving: a
    ``DisplacementFieldTransform`` on the fixed grid with u(p) = D · diag(spacing) · d(index of p), applied first,
    then ``initial`` (the transform the moving image was resampled with onto the fixed grid), so
    T(p) = initial(p + u(p))."""
    field_xyz = np.asarray(field_xyz, dtype=np.float64)
    size = tuple(fixed.GetSize())
    if field_xyz.shape != size + (3,):
        raise ValueError(f"displacement field of shape {field_xyz.shape} does not fit the fixed grid {size}")
    direction = np.array(fixed.GetDirection()).reshape(3, 3)
    physical = (field_xyz * np.array(fixed.GetSpacing())) @ direction.T      # mm, LPS, still X, Y, Z indexed
    displacement = sitk.GetImageFromArray(np.ascontiguousarray(physical.transpose(2, 1, 0, 3)), isVector=True)
    displacement.CopyInformation(fixed)
    field_transform = sitk.DisplacementFieldTransform(displacement)
    if initial is None:
        return field_transform
    return sitk.CompositeTransform([initial, field_transform])   # the last one listed is applied first


def convexadam_field(fixed_xyz: np.ndarray, moving_xyz: np.ndarray, iterations: int) -> np.ndarray:
    """ConvexAdam (CPU, float32, its MIND defaults) on two normalised X, Y, Z arrays of one grid: the (X, Y, Z, 3)
    voxel field, fixed voxel → moving voxel, after edge padding to its grid spacings (cropped back) and the Adam
    unit correction (:data:`CORRECT_ADAM_UNIT`)."""
    import torch
    with warnings.catch_warnings():  # its modules call warnings.filterwarnings("ignore") on import
        from convexAdam.convex_adam_MIND import convex_adam_pt

    multiple = GRID_SP * GRID_SP_ADAM // math.gcd(GRID_SP, GRID_SP_ADAM)
    shape = fixed_xyz.shape
    padded = padded_shape(shape, multiple, 2 * GRID_SP)   # its coarse grid needs two cells (it divides by n − 1)
    pad = [(0, p - n) for n, p in zip(shape, padded)]
    fixed_t = torch.from_numpy(np.pad(fixed_xyz, pad, mode="edge").astype(np.float32))
    moving_t = torch.from_numpy(np.pad(moving_xyz, pad, mode="edge").astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # grid_sample's align_corners notice, raised inside it
        field = convex_adam_pt(fixed_t, moving_t, mind_r=MIND_R, mind_d=MIND_D, lambda_weight=LAMBDA_WEIGHT,
                               grid_sp=GRID_SP, disp_hw=DISP_HW, selected_niter=iterations,
                               grid_sp_adam=GRID_SP_ADAM, ic=True, dtype=torch.float32,
                               device=torch.device("cpu"))
    field = np.asarray(field, dtype=np.float64)[: shape[0], : shape[1], : shape[2]]
    if CORRECT_ADAM_UNIT and LAMBDA_WEIGHT > 0:
        n = np.array(padded) // GRID_SP_ADAM
        field = field * (n / (n - 1))
    return field


def _convexadam(case: Case, quick: bool, progress) -> tuple[sitk.Transform, dict]:
    """ConvexAdam (MIND-SSC + coupled convex + Adam, its defaults; 40 Adam iterations when ``quick``): the moving
    image resampled onto the fixed grid after the geometric-centre alignment the other peers get, CT clipped to
    its soft-tissue window, both rescaled to [0, 1]; 3D only."""

    fixed = prepare_intensities(_read_for_peer(case.path(case.fixed)))
    moving = prepare_intensities(_read_for_peer(case.path(case.moving)))
    if fixed.GetDimension() != 3 or moving.GetDimension() != 3:
        raise InputImageError(f"ConvexAdam registers 3D volumes only; case {case.name!r} is 2D (its average "
                              "pooling over 6-voxel cells cannot run on a one-slice volume).")
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    outside = float(sitk.GetArrayViewFromImage(moving).min())
    moving_on_fixed = sitk.Resample(moving, fixed, initial, sitk.sitkLinear, outside, sitk.sitkFloat32)
    progress("MIND-SSC, convex, Adam", 0.0)
    field = convexadam_field(normalise(xyz_array(fixed)), normalise(xyz_array(moving_on_fixed)),
                             QUICK_ADAM_ITERATIONS if quick else ADAM_ITERATIONS)
    progress("displacement field", 0.95)
    return field_to_transform(field, fixed, initial), {}
