"""Working grids: the geometry a model sees an image on, chosen in physical terms, and resampling onto it.

A :class:`Grid` is an image geometry without data (origin, spacing, direction, size, LPS millimetres, ITK
index order). Working grids have a *canonical* direction: their axes are signed LPS axes chosen by the kind
of view (slices along one physical axis, cubes in the model's orientation), never by how an image happened
to be stored, so two images of one body stored with flipped or permuted axes are seen the same way.
Numpy arrays on a grid are in reverse index order (``array[k, j, i]``), as everywhere in the library.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

#: Canonical orientation of slices along each LPS axis, as LPS directions of (column, row, slice): the axes of a
#: RAS+ volume (MONAI's ``Orientationd("RAS")``, nibabel's canonical), sliced as numpy slices such an array —
#: axial slices with columns towards R and rows towards A, coronal (R, S), sagittal (A, S).
SLICE_AXES_LPS = {
    2: np.array([[-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]]).T,  # axial: columns +R, rows +A, slices +S
    1: np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]).T,  # coronal: columns +R, rows +S, slices +A
    0: np.array([[0, -1.0, 0], [0, 0, 1.0], [-1.0, 0, 0]]).T,  # sagittal: columns +A, rows +S, slices +R
}
AXIS_NAMES = {0: "sagittal (L)", 1: "coronal (P)", 2: "axial (S)"}


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid in physical space: ``lps = origin + direction @ (spacing * index)`` (ITK index order)."""

    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    size: tuple[int, ...]

    @classmethod
    def of(cls, image) -> "Grid":
        """The geometry of a SimpleITK image, or of anything holding one as ``sitk_image`` (an ``Image``)."""
        image = getattr(image, "sitk_image", image)
        d = image.GetDimension()
        return cls(np.array(image.GetOrigin(), dtype=float), np.array(image.GetSpacing(), dtype=float),
                   np.array(image.GetDirection(), dtype=float).reshape(d, d), tuple(image.GetSize()))

    @property
    def dimension(self) -> int:
        return len(self.size)

    @property
    def shape(self) -> tuple[int, ...]:
        """Numpy shape (k, j, i)."""
        return tuple(self.size[::-1])

    @property
    def voxel_volume(self) -> float:
        return float(np.prod(self.spacing))

    def index_to_lps(self, index: np.ndarray) -> np.ndarray:
        """Continuous ITK indices (N, d) → LPS millimetres (N, d)."""
        return np.atleast_2d(np.asarray(index, dtype=float)) @ (self.direction * self.spacing).T + self.origin

    def lps_to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """LPS millimetres (N, d) → continuous ITK indices (N, d)."""
        inverse = np.linalg.inv(self.direction * self.spacing)
        return (np.atleast_2d(np.asarray(points_lps, dtype=float)) - self.origin) @ inverse.T

    def numpy_index_to_lps(self, numpy_index: np.ndarray) -> np.ndarray:
        """Continuous numpy-order indices (N, d) → LPS (N, d)."""
        return self.index_to_lps(np.atleast_2d(numpy_index)[:, ::-1])

    def lps_to_numpy_index(self, points_lps: np.ndarray) -> np.ndarray:
        return self.lps_to_index(points_lps)[:, ::-1]

    def contains(self, points_lps: np.ndarray, margin_voxels: float = 0.5) -> np.ndarray:
        """True for each point (N, d) inside the grid: within ``margin_voxels`` of the outer voxel centres — 0.5,
        the default, is the grid's box (its voxels' outer edges); 0 where linear interpolation has data on every
        side."""
        index = self.lps_to_index(points_lps)
        return np.all((index >= -margin_voxels) & (index <= np.array(self.size) - 1 + margin_voxels), axis=1)

    def same_geometry(self, other: "Grid", tolerance: float = 1e-6) -> bool:
        """Whether ``other`` has this grid's size, origin, spacing and direction (within ``tolerance``)."""
        return (self.size == other.size and np.allclose(self.origin, other.origin, atol=tolerance)
                and np.allclose(self.spacing, other.spacing, atol=tolerance)
                and np.allclose(self.direction, other.direction, atol=tolerance))

    def points_lps(self) -> np.ndarray:
        """LPS position of every voxel, numpy order with a trailing axis: (*shape, d), float32."""
        axes = [np.arange(n, dtype=np.float32) for n in self.shape]
        numpy_index = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        matrix = (self.direction * self.spacing)[:, ::-1].astype(np.float32)  # columns in numpy order
        return numpy_index @ matrix.T + self.origin.astype(np.float32)

    def corners_lps(self) -> np.ndarray:
        """The 2^d outer corners (voxel edges, not centres) in LPS, (2^d, d)."""
        low, high = -0.5 * np.ones(self.dimension), np.array(self.size, dtype=float) - 0.5
        corners = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(self.dimension, -1).T
        return self.index_to_lps(corners)

    def normalised_map(self) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix, offset)`` taking LPS (N, d) to ``grid_sample`` coordinates (``align_corners=True``, ITK index
        order): ``lps @ matrix.T + offset`` is -1 at the first voxel centre and +1 at the last along each axis."""
        inverse = np.linalg.inv(self.direction * self.spacing)
        scale = 2.0 / np.maximum(np.array(self.size, dtype=float) - 1, 1)
        return inverse * scale[:, None], -inverse @ self.origin * scale - 1.0

    def reference(self) -> sitk.Image:
        """A one-voxel image carrying this geometry (for SimpleITK calls that need one; size set separately)."""
        image = sitk.Image([1] * self.dimension, sitk.sitkUInt8)
        image.SetOrigin(self.origin.tolist())
        image.SetSpacing(self.spacing.tolist())
        image.SetDirection(self.direction.ravel().tolist())
        return image

    def image(self, array: np.ndarray) -> sitk.Image:
        """``array`` (numpy order, this grid's shape) as a SimpleITK image with this geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetOrigin(self.origin.tolist())
        image.SetSpacing(self.spacing.tolist())
        image.SetDirection(self.direction.ravel().tolist())
        return image


def covering_grid(image_grid: Grid, direction: np.ndarray, spacing: np.ndarray, minimum_size=None) -> Grid:
    """The grid of the given direction and spacing that covers ``image_grid``'s physical bounding box (at least
    ``minimum_size`` voxels per axis, centred on it)."""
    corners = image_grid.corners_lps() @ direction  # coordinates along the new axes (direction is orthonormal)
    low, high = corners.min(0), corners.max(0)
    size = np.maximum(1, np.ceil((high - low) / spacing - 1e-6)).astype(int)
    if minimum_size is not None:
        size = np.maximum(size, np.asarray(minimum_size, dtype=int))
    centre = (low + high) / 2
    first = centre - (size - 1) / 2 * spacing  # voxel centres spread symmetrically about the box's centre
    return Grid(direction @ first, np.asarray(spacing, dtype=float), direction, tuple(int(n) for n in size))


def nearest_lps_axis(vector: np.ndarray) -> int:
    return int(np.argmax(np.abs(vector)))


def slicing_axis_lps(image_grid: Grid) -> int:
    """The LPS axis closest to the image's slice axis: a single-slice axis, else the coarsest storage axis.

    Ties go to the last storage axis (k), so an isotropic axial volume is sliced axially.
    """
    size = np.array(image_grid.size)
    spacing = np.where(size == 1, np.inf, image_grid.spacing)
    storage_axis = image_grid.dimension - 1 - int(np.argmax(spacing[::-1]))
    return nearest_lps_axis(image_grid.direction[:, storage_axis])


def spacing_along(image_grid: Grid, direction_lps: np.ndarray) -> float:
    """Storage sampling distance along a physical direction: the spacing of the storage axis closest to it."""
    alignment = np.abs(image_grid.direction.T @ direction_lps)
    return float(image_grid.spacing[int(np.argmax(alignment))])


def resample_onto(image: sitk.Image, grid: Grid, default: float, interpolator=sitk.sitkLinear,
                  antialias: bool = True) -> np.ndarray:
    """``image`` sampled at every voxel of ``grid`` (float32, numpy order); outside gets ``default``.

    With ``antialias`` the image is first blurred where the grid is coarser than the storage (a Gaussian of
    σ = ½·sqrt(working² − storage²) mm along each storage axis), so the result hardly depends on how finely
    the image was stored.
    """
    source = sitk.Cast(image, sitk.sitkFloat32) if image.GetPixelID() != sitk.sitkFloat32 else image
    if antialias:
        storage = Grid.of(source)
        working = np.array([spacing_along(grid, storage.direction[:, a]) for a in range(storage.dimension)])
        sigma = 0.5 * np.sqrt(np.clip(working ** 2 - storage.spacing ** 2, 0.0, None))
        sigma = np.where((working > 1.2 * storage.spacing) & (np.array(storage.size) > 1), sigma, 0.0)
        source = _blur_axes(source, sigma)
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputOrigin(grid.origin.tolist())
    resampler.SetOutputSpacing(grid.spacing.tolist())
    resampler.SetOutputDirection(grid.direction.ravel().tolist())
    resampler.SetSize([int(n) for n in grid.size])
    resampler.SetInterpolator(interpolator)
    resampler.SetDefaultPixelValue(float(default))
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampler.Execute(source))


def _blur_axes(image: sitk.Image, sigma_mm: np.ndarray) -> sitk.Image:
    """Gaussian blur along only the storage axes with σ > 0 (one axis at a time)."""
    for axis, sigma in enumerate(sigma_mm):
        if sigma > 0:
            blur = sitk.RecursiveGaussianImageFilter()
            blur.SetDirection(axis)
            blur.SetSigma(float(sigma))
            image = blur.Execute(image)
    return image


def resample_mask(mask: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    """A boolean mask on ``source`` seen on ``target`` (linear interpolation of the mask, ≥ 0.5 inside)."""
    values = resample_onto(source.image(mask.astype(np.float32)), target, 0.0, antialias=False)
    return values >= 0.5


def sample_on_grid(values: torch.Tensor, grid: Grid, points_lps: torch.Tensor) -> torch.Tensor:
    """``values`` (c, *grid shape) at LPS points (N, d), linear, 0 outside: (c, N)."""
    matrix, offset = grid.normalised_map()
    dimension = grid.dimension
    coordinates = points_lps @ torch.as_tensor(matrix.T, dtype=torch.float32) + torch.as_tensor(offset,
                                                                                                dtype=torch.float32)
    coordinates = coordinates.reshape(1, *([1] * (dimension - 1)), -1, dimension)
    sampled = F.grid_sample(values[None], coordinates, mode="bilinear", padding_mode="zeros", align_corners=True)
    return sampled.reshape(values.shape[0], -1)
