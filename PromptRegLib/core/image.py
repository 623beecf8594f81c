"""Reading images with their physical geometry, and converting between RAS, LPS and voxel indices.

Conventions: physical points are millimetres; RAS at the user boundary (what Slicer shows), LPS inside
(what ITK stores). Continuous indices are in ITK order (i = column, j = row, k = slice); numpy arrays
are in reverse order (``array[k, j, i]``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError, MemoryLimitError, PromptError
from .grid import Grid

#: Refuse inputs above this many voxels (about 4 GB as float32) unless PROMPTREG_MAX_VOXELS says otherwise.
DEFAULT_MAX_VOXELS = 1_000_000_000


#: bytes per input voxel a registration holds at its peak: the float32 image, its windowed copy, the
#: anti-aliased copy being resampled (moving), the warped output and a few ROI masks written on the fixed grid
BYTES_PER_VOXEL = 16
#: the model, the working grids, features and the fit, whatever the image size (measured: 1.2–1.6 GB on the bench)
FIXED_OVERHEAD_BYTES = 1_500_000_000


def available_memory_bytes() -> int | None:
    """Memory the system can still give without swapping (``MemAvailable``), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(*images: "Image") -> None:
    """Raise :class:`MemoryLimitError` (exit 8) before a run that would not fit in the memory available."""
    available = available_memory_bytes()
    voxels = sum(int(np.prod(image.size)) for image in images)
    needed = BYTES_PER_VOXEL * voxels + FIXED_OVERHEAD_BYTES
    if available is not None and needed > available:
        sizes = " and ".join(f"{'×'.join(str(n) for n in image.size)}" for image in images)
        raise MemoryLimitError(f"registering images of {sizes} voxels needs about {needed / 1e9:.1f} GB but "
                               f"{available / 1e9:.1f} GB are available; crop the images to the region of interest "
                               "or resample them to a coarser grid (PromptReg works at 1–5 mm anyway), or close "
                               "other programs.")


def ras_to_lps(points_ras: np.ndarray) -> np.ndarray:
    """Flip the first two axes: RAS millimetres → LPS millimetres (its own inverse). Shape (..., 2|3)."""
    points = np.array(points_ras, dtype=float, copy=True)
    points[..., :2] *= -1.0
    return points


lps_to_ras = ras_to_lps


class Image:
    """A scalar image (2D or 3D) as float32 with its geometry (origin, spacing, direction in LPS)."""

    def __init__(self, sitk_image: sitk.Image, source: str = "<memory>", physical_units: bool | None = None):
        self.sitk_image = sitk_image
        self.source = source
        self.physical_units = physical_units  # None: judged from the file type (see PromptRegLib.core.lengths)
        self._array: np.ndarray | None = None

    @property
    def dimension(self) -> int:
        return self.sitk_image.GetDimension()

    @property
    def size(self) -> tuple[int, ...]:
        """Voxels along i, j(, k) (ITK order)."""
        return tuple(self.sitk_image.GetSize())

    @property
    def spacing(self) -> np.ndarray:
        return np.array(self.sitk_image.GetSpacing(), dtype=float)

    @property
    def origin(self) -> np.ndarray:
        return np.array(self.sitk_image.GetOrigin(), dtype=float)

    @property
    def direction(self) -> np.ndarray:
        d = self.dimension
        return np.array(self.sitk_image.GetDirection(), dtype=float).reshape(d, d)

    @property
    def array(self) -> np.ndarray:
        """Voxel values, numpy order (k, j, i) or (j, i); read-only view."""
        if self._array is None:
            self._array = sitk.GetArrayViewFromImage(self.sitk_image)
        return self._array

    @property
    def grid(self) -> Grid:
        """The image's geometry without its voxels: every index ↔ LPS map of the image is the grid's."""
        return Grid.of(self.sitk_image)

    def index_to_lps(self, index: np.ndarray) -> np.ndarray:
        """Continuous ITK indices (N, d) → LPS millimetres (N, d)."""
        return self.grid.index_to_lps(index)

    def lps_to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """LPS millimetres (N, d) → continuous ITK indices (N, d)."""
        return self.grid.lps_to_index(points_lps)

    def contains(self, points_lps: np.ndarray) -> np.ndarray:
        """True for each LPS point (N, d) inside the image's box (its voxels' outer edges)."""
        return self.grid.contains(points_lps)

    def physical_center(self) -> np.ndarray:
        return self.index_to_lps((np.array(self.size, dtype=float) - 1) / 2)[0]

    def with_array(self, array: np.ndarray) -> "Image":
        """A new image on this grid holding ``array`` (numpy order)."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.CopyInformation(self.sitk_image)
        return Image(image, self.source, self.physical_units)


def require_inside(image: Image, point_lps: np.ndarray, what: str = "prompt") -> None:
    """Raise :class:`PromptError` when an LPS point lies outside ``image`` (the one message for every prompt)."""
    if not image.contains(np.asarray(point_lps, dtype=float)[None])[0]:
        ras = tuple(round(float(v), 1) for v in lps_to_ras(np.asarray(point_lps, dtype=float)))
        raise PromptError(f"{what} at RAS {ras} mm lies outside {image.source} (size {tuple(image.size)}, "
                          f"spacing {tuple(round(float(v), 3) for v in image.spacing)} mm).")


def to_scalar(image: sitk.Image, path: str) -> sitk.Image:
    components = image.GetNumberOfComponentsPerPixel()
    if components == 1:
        return sitk.Cast(image, sitk.sitkFloat32)
    if components in (3, 4):  # RGB(A) photographs and histology: luminance
        channels = [sitk.Cast(sitk.VectorIndexSelectionCast(image, c), sitk.sitkFloat32) for c in range(3)]
        return channels[0] * 0.299 + channels[1] * 0.587 + channels[2] * 0.114
    raise InputImageError(f"{path}: images with {components} components per pixel are not supported; "
                          "give a grayscale or RGB image.")


def tidy_direction(image: sitk.Image) -> sitk.Image:
    """``image``, or a copy of it whose direction cosines below 1e-12 (rounding noise) are exactly zero.

    ITK inverts the direction with an SVD that fails on vanishingly small entries (e.g. 1e-296), and then maps
    points to the wrong voxels; zeroing them moves no voxel by more than 1e-9 mm. A caller's image is never changed.
    """
    direction = np.array(image.GetDirection(), dtype=float)
    noise = (direction != 0) & (np.abs(direction) < 1e-12)
    if not noise.any():
        return image
    direction[noise] = 0.0
    tidied = sitk.Image(image)
    tidied.SetDirection(direction.tolist())
    return tidied


def single_slice_to_2d(image: sitk.Image, path: str) -> sitk.Image:
    """A one-slice 3D volume (what Slicer exports for a 2D image) as a 2D image with its true in-plane geometry.

    The slice must be axial (its normal along S): its in-plane axes then keep their directions, signs included
    (the in-plane rows of the direction matrix, as ``DIRECTIONCOLLAPSETOSUBMATRIX`` keeps them, also when the
    thin axis is not the last). A coronal or sagittal single slice is refused with a clear message.
    """
    size = list(image.GetSize())
    thin = size.index(1) if size[2] != 1 else 2
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    in_plane = [a for a in range(3) if a != thin]
    if abs(direction[2, thin]) < 0.999 or np.abs(direction[2, in_plane]).max() > 1e-3:
        raise InputImageError(f"{path}: a single {'coronal' if abs(direction[1, thin]) > 0.7 else 'oblique or sagittal'}"
                              " slice; PromptReg registers 2D images as axial slices. Give a 3D volume, or the slice "
                              "as a 2D image (PNG, TIFF, 2D NRRD).")
    array = sitk.GetArrayFromImage(image)
    flat = sitk.GetImageFromArray(np.take(array, 0, axis=2 - thin), isVector=image.GetNumberOfComponentsPerPixel() > 1)
    flat.SetOrigin(list(image.GetOrigin())[:2])
    flat.SetSpacing([image.GetSpacing()[a] for a in in_plane])
    flat.SetDirection(direction[:2][:, in_plane].ravel().tolist())
    return flat


def read_stored(path: str | os.PathLike, max_voxels: int | None = None) -> sitk.Image:
    """The image as stored — its own pixel type and channels — with the geometry :func:`read_image` gives it (a
    4D file's first volume, a one-slice volume as 2D, tidied direction). Raises :class:`InputImageError`."""
    path = str(path)
    max_voxels = max_voxels or int(os.environ.get("PROMPTREG_MAX_VOXELS", DEFAULT_MAX_VOXELS))
    if not Path(path).is_file():
        raise InputImageError(f"{path}: no such file.")
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        size = reader.GetSize()
        if len(size) > 3 and any(s > 1 for s in size[3:]):
            raise InputImageError(f"{path}: {len(size)}D image of size {size}; PromptReg registers 2D or 3D "
                                  "images. Extract one time point or channel first.")
        voxels = int(np.prod(size)) * reader.GetNumberOfComponents()
        if voxels > max_voxels:
            raise MemoryLimitError(f"{path}: {voxels} voxels exceed the limit of {max_voxels}; crop or "
                                   "downsample the image, or raise PROMPTREG_MAX_VOXELS.")
        image = reader.Execute()
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise InputImageError(f"{path}: cannot be read as an image ({first_line}).") from None
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    if image.GetDimension() == 3 and 1 in image.GetSize():
        image = single_slice_to_2d(image, path)
    return tidy_direction(image)


def read_image(path: str | os.PathLike, max_voxels: int | None = None) -> Image:
    """Read a 2D or 3D image (NRRD, NIfTI, MHA, PNG, JPEG, TIFF, ...) as float32 and check it is usable.

    A 3D image with a single slice is returned as 2D; RGB(A) becomes its luminance. Raises
    :class:`InputImageError` naming the problem.
    """
    return validate_image(Image(to_scalar(read_stored(path, max_voxels), str(path)), str(path)))


def validate_image(image: Image) -> Image:
    """Raise :class:`InputImageError` for images that cannot be segmented (tiny, non-finite, constant)."""
    if image.dimension not in (2, 3):
        raise InputImageError(f"{image.source}: {image.dimension}D image; PromptReg needs 2D or 3D.")
    if min(image.size[:2]) < 8:
        raise InputImageError(f"{image.source}: image of size {image.size} is too small to segment "
                              "(at least 8×8 pixels per slice).")
    array = image.array
    finite = np.isfinite(array)
    if not finite.all():
        raise InputImageError(f"{image.source}: {int((~finite).sum())} voxels are NaN or infinite; "
                              "fix or mask them before registering.")
    if float(array.max()) == float(array.min()):
        raise InputImageError(f"{image.source}: every voxel has the value {float(array.min())}: the image is "
                              "empty, there is nothing to segment.")
    if np.any(image.spacing <= 0) or abs(np.linalg.det(image.direction)) < 1e-6:
        raise InputImageError(f"{image.source}: invalid geometry (spacing {tuple(image.spacing)}, "
                              "direction not invertible).")
    return image


def require_same_dimension(fixed_image: Image, moving_image: Image) -> None:
    if fixed_image.dimension != moving_image.dimension:
        raise InputImageError(f"fixed image is {fixed_image.dimension}D ({fixed_image.source}) but moving image "
                              f"is {moving_image.dimension}D ({moving_image.source}); give two 2D or two 3D images.")
