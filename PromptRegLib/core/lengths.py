"""Length defaults for images without physical units (photographs and slides saved as PNG, JPEG, BMP or GIF).

Every length default — box sizes 8–130 mm, the prior's σ 60 mm, control spacing 60/30 mm, warp shifts, bands —
was measured on body images whose field of view is about :data:`REFERENCE_FIELD_OF_VIEW_MM`. A photograph's
"millimetres" are a print resolution (a JPEG's DPI header: 0.35 mm for 72 dpi) or plain pixels (PNG: 1 mm), so
for such an image those defaults are scaled by its field of view over the reference: each length is then the
same fraction of the image as on a body CT. A length the caller set is never scaled; images with physical units
(NRRD, NIfTI, MHA, DICOM, TIFF, images built in memory) keep the defaults as they are.
"""
from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from pathlib import Path

import numpy as np

from .image import Image

#: file types whose spacing is not a physical statement (a print resolution, or none at all)
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
#: the longer side (mm) of the chest CT the length defaults were measured on (128 × 3.05 mm)
REFERENCE_FIELD_OF_VIEW_MM = 390.0


def is_photo_file(path) -> bool:
    """True for a file of a photograph format (see :data:`PHOTO_SUFFIXES`)."""
    return Path(str(path)).name.lower().endswith(PHOTO_SUFFIXES)


def has_physical_units(image: Image) -> bool:
    """False for an image read from a photograph format, or marked so (``Image.physical_units``: Slicer exports a
    photograph it loaded as NRRD, and says which file it came from)."""
    return image.physical_units if image.physical_units is not None else not is_photo_file(image.source)


def field_of_view_mm(image: Image) -> float:
    """The longer side of the image's bounding box (mm)."""
    return float(np.max(image.spacing * np.array(image.size)))


def length_scale(image: Image) -> float:
    """What the length defaults are multiplied by for ``image`` (the fixed image): 1 where it has physical units."""
    return 1.0 if has_physical_units(image) else field_of_view_mm(image) / REFERENCE_FIELD_OF_VIEW_MM


def _scale(value, factor: float):
    return tuple(float(v) * factor for v in value) if isinstance(value, tuple) else float(value) * factor


def scale_lengths(options, untouched, factor: float):
    """``options`` with every ``*_mm`` field still equal to ``untouched``'s (the defaults the caller did not change)
    multiplied by ``factor``; nested option dataclasses likewise."""
    if factor == 1.0:
        return options
    changes = {}
    for f in fields(options):
        value, reference = getattr(options, f.name), getattr(untouched, f.name)
        if is_dataclass(value):
            changes[f.name] = scale_lengths(value, reference, factor)
        elif f.name.endswith("_mm") and value == reference:
            changes[f.name] = _scale(value, factor)
    return replace(options, **changes)


def pixel_scale(fixed: Image, moving: Image) -> float:
    """Moving millimetres per fixed millimetre that the pair is expected to need when neither image has physical
    units: their pixel grids correspond (a DPI header says nothing about the scene), so the ratio of their pixel
    sizes (geometric mean over the axes); 1 where either image has physical units."""
    if has_physical_units(fixed) or has_physical_units(moving):
        return 1.0
    return float(np.exp(np.mean(np.log(moving.spacing / fixed.spacing))))
