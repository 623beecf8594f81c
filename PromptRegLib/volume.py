"""An image seen by a 2D model: a stack of intensity-windowed slices with lazily encoded embeddings.

A 2D image is a stack of one slice. A 3D volume is sliced along one numpy axis (default: the axis with the
coarsest spacing, so in-plane pixels are as fine and as square as possible). Stack indices are
``(slice, row, column)``; :meth:`SliceStack.image_index_to_stack` and back convert exactly.
"""
from __future__ import annotations

import numpy as np

from .imageio import Image
from .models.base import Embedding, PromptableSegmenter


def intensity_window(array: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> tuple[float, float]:
    """Robust [low, high] for mapping to [0, 1].

    A padding value at the minimum (CT's -3024) is ignored, and for CT in Hounsfield units the window
    starts at air (-1024 HU), so lungs keep their contrast.
    """
    everything = np.asarray(array, dtype=np.float32).ravel()
    values = everything[:: everything.size // 1_000_000] if everything.size > 2_000_000 else everything
    minimum = values.min()
    if np.mean(values == minimum) > 0.01:
        values = values[values > minimum]
    low, high = np.percentile(values, [low_percentile, high_percentile])
    if minimum < -1000 and high < 4000:  # CT in Hounsfield units: nothing below air is anatomy
        low = max(low, -1024.0)
    if high <= low:  # few distinct values (masks, phantoms): the full range
        low, high = float(everything.min()), float(everything.max())
    return float(low), float(high)


def default_slicing_axis(image: Image) -> int:
    """Numpy axis to slice along: the coarsest spacing (ties: the last ITK axis, i.e. axial for RAS volumes)."""
    numpy_spacing = image.spacing[::-1]
    return int(np.argmax(numpy_spacing))  # argmax returns the first max, numpy axis 0 = ITK k


class SliceStack:
    """``model`` None: geometry and windowed intensities only (native-3D models encode cubes instead)."""

    def __init__(self, image: Image, model: PromptableSegmenter | None, axis: int | None = None):
        self.image = image
        self.model = model
        low, high = intensity_window(image.array)
        normalized = np.clip((np.asarray(image.array, dtype=np.float32) - low) / (high - low), 0.0, 1.0)
        if image.dimension == 2:
            self.axis = None
            self.slices01 = normalized[None]
            self.pixel_spacing = (float(image.spacing[1]), float(image.spacing[0]))
        else:
            self.axis = default_slicing_axis(image) if axis is None else axis
            self.slices01 = np.moveaxis(normalized, self.axis, 0)
            numpy_spacing = list(image.spacing[::-1])
            del numpy_spacing[self.axis]
            self.pixel_spacing = (float(numpy_spacing[0]), float(numpy_spacing[1]))
        self.window = (low, high)
        self._embeddings: dict[int, Embedding] = {}

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.slices01.shape

    @property
    def slice_spacing(self) -> float:
        if self.axis is None:
            return 1.0
        return float(self.image.spacing[::-1][self.axis])

    def embeddings(self, slice_indices) -> list[Embedding]:
        """Embeddings of the given slices, encoding (in batches, through the model's cache) those not yet held."""
        slice_indices = [int(k) for k in slice_indices]
        missing = sorted({k for k in slice_indices if k not in self._embeddings})
        if missing:
            for k, embedding in zip(missing, self.model.encode([self.slices01[k] for k in missing], self.pixel_spacing)):
                self._embeddings[k] = embedding
        return [self._embeddings[k] for k in slice_indices]

    def image_index_to_stack(self, index_itk: np.ndarray) -> np.ndarray:
        """Continuous ITK indices (N, d) → stack indices (N, 3) as (slice, row, column)."""
        numpy_index = np.atleast_2d(index_itk)[:, ::-1]
        if self.axis is None:
            return np.concatenate([np.zeros((len(numpy_index), 1)), numpy_index], axis=1)
        order = [self.axis] + [a for a in range(3) if a != self.axis]
        return numpy_index[:, order]

    def stack_index_to_image(self, stack_index: np.ndarray) -> np.ndarray:
        """Stack indices (N, 3) → continuous ITK indices (N, d)."""
        stack_index = np.atleast_2d(stack_index)
        if self.axis is None:
            return stack_index[:, 1:][:, ::-1]
        order = [self.axis] + [a for a in range(3) if a != self.axis]
        numpy_index = np.empty_like(stack_index, dtype=float)
        numpy_index[:, order] = stack_index
        return numpy_index[:, ::-1]

    def stack_to_image_array(self, stack_array: np.ndarray) -> np.ndarray:
        """A (K, R, C) stack array → the image's numpy order."""
        if self.axis is None:
            return stack_array[0]
        return np.moveaxis(stack_array, 0, self.axis)

    def image_to_stack_array(self, image_array: np.ndarray) -> np.ndarray:
        if self.axis is None:
            return image_array[None]
        return np.moveaxis(image_array, self.axis, 0)

    def stack_spacing(self) -> np.ndarray:
        """Millimetres per stack index step (slice, row, column)."""
        return np.array([self.slice_spacing, *self.pixel_spacing])
