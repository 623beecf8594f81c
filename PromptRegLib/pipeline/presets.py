"""Presets: Quick, Default, Accurate — named sets of options, shared by the CLI, the worker and the Slicer panel.

A preset only fills options the caller left at their defaults, so an explicit choice (``--bending 5``, an advanced
option in the panel) always wins. What each preset changes, and why (measured; docs/benchmark.md, presets):

* ``quick`` — an affine from the clicks alone: no sampled pairs, no warps, no feature refinement. Seconds.
* ``default`` — the library's defaults.
* ``accurate`` — in 2D, twice the sampled pairs and a third, 15 mm control level (2D CT pair: Dice 0.867 → 0.895
  from the 15 mm level alone). In 3D the discrete first step (displacements up to 40 mm) with a third, 15 mm
  control level: for two people's organs, which move tens of mm against each other (CT↔MR abdomen: organ Dice
  0.524 → 0.546, 50 → 72 s; the discrete step alone 0.489, the 15 mm level needs it). Not the default: on the
  chest CT pair the 15 mm level cost 0.5 mm TRE.
"""
from __future__ import annotations

from dataclasses import fields, replace

from ..core.lengths import length_scale, scale_lengths
from ..errors import PromptError
from ..prompting.pairs import PairOptions
from ..transform.fit import FitOptions
from ..views.slices import SliceOptions

PRESETS = ("quick", "default", "accurate")


def _changes(name: str, dimension: int) -> tuple[dict, dict]:
    """(PairOptions fields, FitOptions fields) the preset sets for images of ``dimension``."""
    if name == "quick":
        return {"auto_pairs": 0, "warps": 0}, {"transform": "affine", "feature_weight": 0.0}
    if name == "accurate" and dimension == 2:
        return {"auto_pairs": 12}, {"control_spacing_mm": (60.0, 30.0, 15.0)}
    if name == "accurate":
        return {}, {"control_spacing_mm": (60.0, 30.0, 15.0), "discrete_radius_mm": 40.0}
    return {}, {}


def _fill(options, defaults, changes: dict):
    """``options`` with ``changes`` applied to the fields still at their default value."""
    untouched = {f.name for f in fields(options) if getattr(options, f.name) == getattr(defaults, f.name)}
    return replace(options, **{key: value for key, value in changes.items() if key in untouched})


def apply_preset(name: str | None, dimension: int, pair_options, fit_options):
    """(PairOptions, FitOptions) of preset ``name`` (None: unchanged), leaving every option the caller set as it is."""
    if name is None:
        return pair_options, fit_options
    if name not in PRESETS:
        raise PromptError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}.")
    pair_changes, fit_changes = _changes(name, dimension)
    return (_fill(pair_options, PairOptions(), pair_changes), _fill(fit_options, FitOptions(), fit_changes))


def resolve_options(preset: str | None, fixed_image, pair_options, fit_options, slice_options=None):
    """(PairOptions, FitOptions, SliceOptions) a run uses: the preset's, then every length the caller left at its
    default scaled to the fixed image's field of view where it has no physical units (:mod:`~PromptRegLib.core.lengths`)."""
    dimension = fixed_image.dimension
    pair_options, fit_options = apply_preset(preset, dimension, pair_options, fit_options)
    pair_defaults, fit_defaults = apply_preset(preset, dimension, PairOptions(), FitOptions())
    factor = length_scale(fixed_image)
    return (scale_lengths(pair_options, pair_defaults, factor), scale_lengths(fit_options, fit_defaults, factor),
            scale_lengths(slice_options or SliceOptions(), SliceOptions(), factor))
