"""What a registration can be told: :class:`Prompts` (where the user clicked) and :class:`RegistrationOptions`.

Every entry point — the command line, the Slicer worker's JSON requests, a cohort table's columns, the bench's
cases and the Slicer panel — names options the same way (:data:`OPTION_NAMES`, the *outside names*) and turns
them into options through the one :meth:`RegistrationOptions.from_mapping`, so the same words mean the same run
wherever they are written. The stages' own option sets (:class:`~PromptRegLib.prompting.pairs.PairOptions`,
:class:`~PromptRegLib.transform.fit.FitOptions`, :class:`~PromptRegLib.views.slices.SliceOptions`) stay
available for scripts that need a knob no outside name reaches.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UsageError
from ..prompting.pairs import PairOptions
from ..transform.fit import TRANSFORMS, FitOptions
from ..views.slices import SliceOptions
from .presets import PRESETS, resolve_options

#: sampled prompts when the user gives none at all and asks for no number (the bench's zero-click rows: every
#: case better than identity with 8, docs/benchmark.md, zero clicks)
NO_CLICK_AUTO_PAIRS = 8


@dataclass(frozen=True)
class Prompts:
    """What the user gave on the fixed image: clicks in RAS mm (``points_ras``) or in the fixed image's pixels
    (``points_px``: x = column, y = row[, z = slice], from 0), boxes as two opposite RAS corners, and pairs
    (Prompt X on the fixed image, Prompt Y on the moving image) in RAS mm."""

    points_ras: tuple = ()
    points_px: tuple = ()
    boxes_ras: tuple = ()
    pairs_ras: tuple = ()

    @classmethod
    def of(cls, value: "Prompts | Sequence | None") -> "Prompts":
        """``value`` as prompts: None (no clicks), a :class:`Prompts`, or a sequence of RAS clicks."""
        if value is None:
            return cls()
        if isinstance(value, Prompts):
            return value
        return cls(points_ras=tuple(np.asarray(point, dtype=float) for point in value))

    @property
    def count(self) -> int:
        return len(self.points_ras) + len(self.points_px) + len(self.boxes_ras) + len(self.pairs_ras)


def _integer(value) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError(value)
    return int(float(value))


def _boolean(value) -> bool:
    if isinstance(value, str):
        if value.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(value)
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _names(value) -> tuple[str, ...]:
    parts = value.split(";") if isinstance(value, str) else value
    return tuple(str(name).strip() for name in parts if str(name).strip())


#: outside name → (where it goes: "" for RegistrationOptions itself, else the stage's option set; the field;
#: how its value is read; what the message says it should be)
OPTION_NAMES: dict[str, tuple[str, str, Any, str]] = {
    "model": ("", "model", str, "a model name"),
    "checkpoint": ("", "checkpoint", str, "a file path"),
    "device": ("", "device", str, "auto, cpu or cuda"),
    "preset": ("", "preset", str, f"one of {', '.join(PRESETS)}"),
    "pairs_only": ("", "pairs_only", _boolean, "true or false"),
    "reject_pairs": ("", "reject_pairs", _names, "pair names"),
    "auto_pairs": ("pairs", "auto_pairs", _integer, "a whole number ≥ 0"),
    "warps": ("pairs", "warps", _integer, "a whole number ≥ 0"),
    "transform": ("fit", "transform", str, f"{' or '.join(TRANSFORMS)}"),
    "bending": ("fit", "bending_weight", float, "a number ≥ 0"),
    "feature_weight": ("fit", "feature_weight", float, "a number ≥ 0"),
    "mind_weight": ("fit", "descriptor_weight", float, "a number ≥ 0"),
    "slice_spacing_mm": ("slices", "slice_spacing_mm", float, "a length in mm > 0"),
}
#: the outside names a refit (reject-and-refit, a Prompt Y correction) reads: it fits again, it prompts nothing new
REFIT_OPTION_NAMES = ("preset", "transform", "bending", "feature_weight", "mind_weight")


@dataclass
class RegistrationOptions:
    """Every option of a registration. ``pairs``, ``fit`` and ``slices`` are the stages' own option sets; the
    outside names of :data:`OPTION_NAMES` are the way to set them from anywhere (:meth:`from_mapping`).

    ``preset`` (quick, default, accurate) fills the options left at their defaults (:mod:`.presets`);
    ``pairs_only`` finds ROI pairs and fits nothing; ``reject_pairs`` names pairs the user rejected (kept in the
    report, not used). ``auto_pairs`` 0 means no sampled prompts at all, not even in place of failed clicks."""

    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str = "auto"
    preset: str = "default"
    pairs_only: bool = False
    reject_pairs: tuple[str, ...] = ()
    pairs: PairOptions = field(default_factory=PairOptions)
    fit: FitOptions = field(default_factory=FitOptions)
    slices: SliceOptions = field(default_factory=SliceOptions)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], names: Sequence[str] = tuple(OPTION_NAMES),
                     base: "RegistrationOptions | None" = None) -> "RegistrationOptions":
        """Options from outside names (a worker request, a table row, parsed command-line arguments, a bench case).

        Keys outside ``names`` are not options and are left alone (a request also names its images); a value of
        None or "" leaves that option at its default (``base``'s). Raises
        :class:`~PromptRegLib.errors.UsageError` naming the option whose value cannot be used."""
        options = replace(base) if base is not None else cls()
        sets = {"pairs": replace(options.pairs), "fit": replace(options.fit), "slices": replace(options.slices)}
        own = {}
        for name in names:
            value = mapping.get(name)
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            where, attribute, read, expected = OPTION_NAMES[name]
            try:
                value = read(value.strip() if isinstance(value, str) else value)
            except (TypeError, ValueError):
                raise UsageError(f"option {name}: {value!r} is not {expected}.") from None
            _check(name, value, expected)
            if where:
                setattr(sets[where], attribute, value)
            else:
                own[attribute] = value
        return replace(options, **own, **sets)

    def as_mapping(self) -> dict[str, Any]:
        """The options under their outside names (None where a stage leaves the choice to the image)."""
        sets = {"": self, "pairs": self.pairs, "fit": self.fit, "slices": self.slices}
        return {name: getattr(sets[where], attribute) for name, (where, attribute, _, _) in OPTION_NAMES.items()}

    def for_run(self, fixed_image, prompts: Prompts) -> tuple[PairOptions, FitOptions, SliceOptions, list[str]]:
        """The stages' options a run on ``fixed_image`` with ``prompts`` uses: the preset applied, the length
        defaults scaled where the image has no physical units (:mod:`~PromptRegLib.core.lengths`), and no prompts
        at all with no number of sampled prompts asked for → :data:`NO_CLICK_AUTO_PAIRS` of them. Returns them
        with notes for the report."""
        pair_options, fit_options, slice_options = resolve_options(self.preset, fixed_image, self.pairs, self.fit,
                                                                   self.slices)
        notes = []
        if prompts.count == 0 and pair_options.auto_pairs is None:
            pair_options = replace(pair_options, auto_pairs=NO_CLICK_AUTO_PAIRS)
            notes.append(f"no prompts given: {NO_CLICK_AUTO_PAIRS} automatic pairs")
        return pair_options, fit_options, slice_options, notes


def _check(name: str, value, expected: str) -> None:
    """Values every entry point refuses alike."""
    bad = ((name == "preset" and value not in PRESETS) or (name == "transform" and value not in TRANSFORMS)
           or (name == "device" and value not in ("auto", "cpu", "cuda"))
           or (name in ("auto_pairs", "warps", "bending", "feature_weight", "mind_weight") and value < 0)
           or (name == "slice_spacing_mm" and value <= 0))
    if bad:
        raise UsageError(f"option {name}: {value!r} is not {expected}.")
