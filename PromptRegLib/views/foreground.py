"""Where the subject is on a view: the image's background level and the foreground mask that excludes it."""
from __future__ import annotations

import numpy as np

from .base import View

#: border pixels within this of the border's median count as background (window units)
BACKGROUND_TOLERANCE = 0.1


def background_level(view: View) -> float | None:
    """The value (window units) most of the image's border shares — air around a CT or MR, the glass around a
    brightfield slide — or None where the border shares no value (a photograph filled to its edges)."""
    array, (low, high) = view.image.array, view.window
    faces = [np.take(array, [0, -1], axis=axis).ravel() for axis in range(array.ndim)]
    border = np.clip((np.concatenate(faces).astype(np.float32) - low) / (high - low), 0.0, 1.0)
    background = float(np.median(border))
    return background if np.mean(np.abs(border - background) < BACKGROUND_TOLERANCE) >= 0.5 else None


def foreground_mask(view: View) -> np.ndarray:
    """Where the subject is, on the view: on a dark background (CT, MR) voxels brighter than half the mean (at least
    0.1 window units), on a bright one (a brightfield slide) voxels darker by as much, and where the border shares
    no :func:`background_level` (a photograph) every voxel inside the image."""
    values = view.intensities01
    background = background_level(view)
    if background is not None and background < 0.5:
        return values > max(0.1, float(values.mean()) * 0.5)
    d = view.image.dimension
    inside = view.image.contains(view.points_lps().reshape(-1, d)).reshape(values.shape)
    if background is None:
        return inside
    darkness = (1.0 - values) * inside
    return darkness > max(0.1, float(darkness.mean()) * 0.5)
