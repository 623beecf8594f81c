"""Views: images as models see them, on working grids chosen in physical terms (see :mod:`~PromptRegLib.core.grid`)."""
from __future__ import annotations

from ..core.grid import Grid, slicing_axis_lps
from ..core.image import Image
from ..core.lengths import pixel_scale
from ..core.progress import Progress, ignore
from .base import ROI, Seed, View
from .cubes import CubeView
from .slices import SliceOptions, SliceView, in_plane_extent_mm


def make_view(model, image: Image, options: SliceOptions | None = None, cancel=None,
              progress: Progress | None = None) -> View:
    """One image's view (``promptreg segment``): cubes, or slices along the LPS axis closest to its slice axis."""
    return make_views(model, image, None, options, cancel, progress)[0]


def make_views(model, fixed_image: Image, moving_image: Image | None, options: SliceOptions | None = None,
               cancel=None, progress: Progress | None = None) -> tuple[View, View | None]:
    """The fixed and moving views, seen the same way: cubes for native-3D models; else slices along the LPS axis
    chosen from the fixed image, with one pixel size for both (the larger field of view over the input size).

    Where neither image has physical units, the moving view's pixel is the fixed view's times their
    :func:`~PromptRegLib.core.lengths.pixel_scale`, so the model still sees both at one scale; ``unit_mm`` records it."""
    images = [image for image in (fixed_image, moving_image) if image is not None]
    if getattr(model, "native_3d", False):
        views = [CubeView(image, model, cancel) for image in images]
    else:
        axis = slicing_axis_lps(Grid.of(fixed_image)) if fixed_image.dimension == 3 else 2
        scales = [1.0] + ([pixel_scale(fixed_image, moving_image)] if moving_image is not None else [])
        pixel = max(in_plane_extent_mm(Grid.of(image), axis) / scale
                    for image, scale in zip(images, scales)) / model.input_size
        views = [SliceView(image, model, axis, options, cancel, pixel * scale) for image, scale in zip(images, scales)]
        for view, scale in zip(views, scales):
            view.unit_mm = scale
    for view in views:
        view.progress = progress or ignore
    return views[0], (views[1] if len(views) > 1 else None)


__all__ = ["ROI", "Seed", "SliceOptions", "SliceView", "View", "make_view", "make_views"]
