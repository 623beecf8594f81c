"""Refit the transform from a previous run's written ROI pairs: reject-and-refit without prompting again.

Reads ``fixed_rois.seg.nrrd``, ``moving_rois.seg.nrrd`` and ``report.json`` of an output folder, keeps the
pairs that passed the quality checks minus those the user rejects, fits the transform on them with
:func:`PromptRegLib.transform.fit.fit_without_folding` (weights IoU X × IoU Y, as a registration does), and writes a
complete output folder — the ROI pairs and prompts copied, a new ``transform.h5``, ``affine.tfm``,
``warped_moving.nrrd`` and ``report.json`` — all or nothing (:func:`PromptRegLib.io.outputs.staged_output`).
When the run refined on the model's features (``dense_refinement``), the refit does too: the same model's views
of the two images, their embeddings read from the embedding cache — nothing is decoded.

A correction (``prompt_y_ras``: pair name → a Prompt Y the user moved or placed) re-segments that pair's ROI Y at
the user's Prompt Y (:func:`~PromptRegLib.prompting.inverse.prompt_pair`: decoder only, cached embeddings, no
search), uses the pair (a rejected one too) and rewrites ``moving_rois.seg.nrrd`` and ``prompts_y.mrk.json``.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import slicerio

from ..core.image import Image, ras_to_lps, read_image
from ..errors import CheckpointError, InputImageError, RegistrationError
from ..io.outputs import (
    staged_output,
    write_report,
    write_segmentation,
    write_transform_outputs,
)
from ..io.points import write_markups
from ..models import load_model
from ..prompting.inverse import prompt_pair
from ..prompting.orientation import found_turn
from ..prompting.pairs import USER_REJECTED, PairOptions
from ..transform.features import feature_pair
from ..transform.field import FittedTransform
from ..transform.fit import FitOptions, fit_without_folding
from ..views import SliceOptions, make_views
from ..views.base import ROI
from .options import RegistrationOptions
from .presets import resolve_options

#: files a refit takes over unchanged from the folder it refits
COPIED = ("fixed_rois.seg.nrrd", "moving_rois.seg.nrrd", "prompts_x.mrk.json", "prompts_y.mrk.json")


def read_report(folder: Path) -> dict:
    try:
        return json.loads((folder / "report.json").read_text())
    except FileNotFoundError:
        raise InputImageError(f"{folder} holds no report.json: refit needs the output folder of a registration "
                              "or of a 'find corresponding regions' run.") from None


def read_masks(path: Path, image: Image, names: list[str]) -> list[np.ndarray]:
    """The named segments of a ``.seg.nrrd`` written on ``image``'s grid, as masks in numpy order."""
    if not path.is_file():
        raise InputImageError(f"{path} is missing: refit needs the ROI pairs of the run it refits.")
    segmentation = slicerio.read_segmentation(str(path))
    masks = []
    for name in names:
        try:
            ijk_mask = slicerio.segment_mask(segmentation, name)
        except (KeyError, ValueError):
            raise InputImageError(f"{path} has no segment {name!r}; was it edited after the run?") from None
        mask = np.transpose(ijk_mask)  # (i, j, k) → numpy (k, j, i)
        if image.dimension == 2:
            mask = mask[0]
        if mask.shape != image.array.shape:
            raise InputImageError(f"{path}: segment grid {mask.shape} differs from {image.source} "
                                  f"{image.array.shape}; refit needs the images that run used.")
        masks.append(mask)
    return masks


def updated_pairs(pairs: list[dict], reject_pairs) -> list[dict]:
    """The report's pairs with the user's rejections applied (and earlier ones lifted when not repeated)."""
    reject = set(reject_pairs)
    updated = []
    for pair in pairs:
        pair = dict(pair)
        if pair["name"] in reject and (pair["accepted"] or pair.get("rejected_by_user")):
            pair.update(accepted=False, rejected_because=USER_REJECTED, rejected_by_user=True)
        elif pair.get("rejected_by_user"):
            pair.update(accepted=True, rejected_because="", rejected_by_user=False)
        updated.append(pair)
    return updated


def run_views(report: dict, fixed_image: Image, moving_image: Image, cancel=None):
    """The views the run's model had of the two images (embeddings from the disk cache), loaded on the CPU."""
    model = load_model(report["model"], report.get("checkpoint"), "cpu")
    stored = report.get("slice_options")  # the run's box sizes (scaled for photographs), JSON lists as tuples
    options = SliceOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}) if stored else None
    return make_views(model, fixed_image, moving_image, options, cancel)


def refit_features(report: dict, fit_options: FitOptions, views):
    """The dense feature term of the run being refitted, when it had one, from ``views()`` (the run's model's
    views, built on first use). Returns the feature pair (or None) and what the report says about it."""
    if fit_options.feature_weight <= 0 or report.get("dense_refinement") != "features":
        return None, "off"
    try:
        fixed_view, moving_view = views()
    except (CheckpointError, KeyError) as error:
        return None, f"off (the run's model is not available: {error})"
    features = feature_pair(fixed_view, moving_view, descriptors=fit_options.uses_descriptors)
    return features, "features" if features is not None else "off"


def correct_pairs(pairs: list[dict], prompt_y_ras: dict, fixed_masks: dict, moving_masks: dict, views) -> list[dict]:
    """Apply the user's Prompt Y corrections: each named pair's ROI Y re-segmented at its new Prompt Y (replacing
    its entry in ``moving_masks``, image grid) and the pair used unless the model finds nothing there."""
    by_name = {p["name"]: p for p in pairs}
    unknown = [name for name in prompt_y_ras if name not in by_name]
    if unknown:
        raise InputImageError(f"no pair named {', '.join(map(repr, unknown))} in the run being corrected; its pairs "
                              f"are {', '.join(by_name)}.")
    if not prompt_y_ras:
        return pairs
    fixed_view, moving_view = views()
    dimension = fixed_view.image.dimension
    for name, ras in prompt_y_ras.items():
        pair = by_name[name]
        if not fixed_masks[name].any():
            raise RegistrationError(f"{name} has no ROI X (the model found no region at its Prompt X), so it has "
                                    "nothing to correct: move its Prompt X instead.")
        roi_x = ROI(fixed_view.from_image_mask(fixed_masks[name]), float(pair["iou_x"]),
                    ras_to_lps(np.asarray(pair["prompt_x_ras"], dtype=float))[:dimension], 0)
        prompt_y_lps = ras_to_lps(np.asarray(ras, dtype=float))[:dimension]
        result = prompt_pair(fixed_view, moving_view, roi_x, prompt_y_lps)
        moving_masks[name] = moving_view.to_image_mask(result.roi_y.mask)
        found = bool(moving_masks[name].any())
        kept = {key: pair[key] for key in ("name", "source", "color", "prompt_x_ras", "voxels_x") if key in pair}
        pair.clear()
        pair.update(kept, **result.quality, prompt_y_ras=[float(v) for v in ras][:3], corrected=True,
                    voxels_y=int(result.roi_y.voxels), accepted=found,
                    rejected_because="" if found else "no ROI Y: the model found no region at the given Prompt Y")
    return pairs


def refit_from_outputs(pairs_from: str | os.PathLike, output_dir: str | os.PathLike,
                       options: RegistrationOptions | None = None, prompt_y_ras: dict | None = None, progress=None,
                       cancel=None, fixed: str | None = None, moving: str | None = None) -> Path:
    """Fit a new transform from the ROI pairs written in ``pairs_from`` and write ``output_dir``; returns it.

    ``options``: its ``reject_pairs`` (the pairs the user rejects now), ``preset`` and fit options are used — a
    refit prompts nothing new; ``prompt_y_ras`` (pair name → R, A, S on the moving image) corrects pairs first (see
    the module doc); ``fixed``/``moving`` default to the images the earlier run read (``report.json``'s ``inputs``).
    """
    started = time.perf_counter()
    options = options or RegistrationOptions()
    say = progress or (lambda stage, fraction: None)
    previous = Path(pairs_from)
    report = read_report(previous)
    prompt_y_ras = dict(prompt_y_ras or {})
    pairs = updated_pairs(report["pairs"], options.reject_pairs)
    if not any(p["accepted"] or p["name"] in prompt_y_ras for p in pairs):
        raise RegistrationError("no ROI pair left to fit once the rejected ones are removed; keep at least one "
                                "pair, or register again with more prompts.")
    fixed_image, moving_image = _run_images(report, fixed, moving)
    _, fit_options, _ = resolve_options(options.preset, fixed_image, PairOptions(), options.fit)
    say("reading ROI pairs", 0.05)
    all_names = [p["name"] for p in report["pairs"]]
    fixed_masks = dict(zip(all_names, read_masks(previous / "fixed_rois.seg.nrrd", fixed_image, all_names)))
    moving_masks = dict(zip(all_names, read_masks(previous / "moving_rois.seg.nrrd", moving_image, all_names)))
    views = functools.cache(lambda: run_views(report, fixed_image, moving_image, cancel))  # built on first use

    if prompt_y_ras:
        say("segmenting ROI Y at the corrected Prompt Y", 0.06)
    pairs = correct_pairs(pairs, prompt_y_ras, fixed_masks, moving_masks, views)
    names = [p["name"] for p in pairs if p["accepted"]]
    if not names:
        raise RegistrationError("no ROI pair left: the model found no region at the corrected Prompt Y; place it "
                                "inside the structure, or register again with more prompts.")
    quality = {p["name"]: p for p in pairs}
    weights = np.array([quality[n]["iou_x"] * quality[n]["iou_y"] for n in names])
    say("reading features", 0.08)
    features, dense = refit_features(report, fit_options, views)
    say("fitting transform", 0.1)
    # a correction changes one pair's ROI Y: start from the transform being corrected (a rejection may change more)
    start = FittedTransform.read(previous / "affine.tfm", previous / "transform.h5", fixed_image) \
        if prompt_y_ras and (previous / "transform.h5").exists() else None
    transform, folding, options_used = fit_without_folding(
        fixed_image, moving_image, [fixed_masks[n] for n in names], [moving_masks[n] for n in names], weights,
        fit_options, cancel, features=features, turn=found_turn(report, fixed_image.dimension), start=start)
    say("writing outputs", 0.9)
    report.update(pairs=pairs, fit=transform.report, fit_options=asdict(fit_options),
                  fit_options_used=asdict(options_used), folding_fraction=folding, dense_refinement=dense,
                  refit={"from": str(previous), "pairs_used": names, "corrected": sorted(prompt_y_ras),
                         "device": "cpu", "seconds": time.perf_counter() - started})
    _write_refit(previous, output_dir, fixed_image, moving_image, transform, report,
                 (fixed_masks, moving_masks), bool(prompt_y_ras))
    return Path(output_dir)


def _run_images(report: dict, fixed: str | None, moving: str | None) -> tuple[Image, Image]:
    """The images a refit fits on: the given ones, else those the run read, with the units the run judged (Slicer's
    photographs come as NRRD)."""
    fixed_image = read_image(fixed or report["inputs"]["fixed"])
    moving_image = read_image(moving or report["inputs"]["moving"])
    units = report["inputs"].get("physical_units", {})
    fixed_image.physical_units, moving_image.physical_units = units.get("fixed"), units.get("moving")
    return fixed_image, moving_image


def _write_refit(previous: Path, output_dir, fixed_image: Image, moving_image: Image, transform, report: dict,
                 masks: tuple[dict, dict], corrected: bool) -> None:
    """The refit's output folder, all or nothing: the run's ROI pairs and prompts copied (the moving ones
    rewritten when a Prompt Y was corrected), the new transform's files and the report."""
    fixed_masks, moving_masks = masks
    pairs = report["pairs"]
    with staged_output(output_dir, [fixed_image.source, moving_image.source]) as staging:
        copied = COPIED if not corrected else ("fixed_rois.seg.nrrd", "prompts_x.mrk.json")
        for name in copied:
            if (previous / name).exists():
                shutil.copy2(previous / name, staging / name)
        if corrected:
            _write_moving_pairs(staging, moving_image, pairs, moving_masks)
        names = [p["name"] for p in pairs]
        _, registered = write_transform_outputs(staging, fixed_image, moving_image, transform,
                                                [fixed_masks[n] for n in names], [moving_masks[n] for n in names])
        for pair, dice in zip(pairs, registered):
            pair["dice_registered"] = dice
        report["inputs"] = {**report["inputs"], "fixed": fixed_image.source, "moving": moving_image.source}
        write_report(staging / "report.json", report)


def _write_moving_pairs(folder: Path, moving_image: Image, pairs: list[dict], moving_masks: dict) -> None:
    """``moving_rois.seg.nrrd`` and ``prompts_y.mrk.json`` for the corrected pairs (names and colours kept)."""
    names = [p["name"] for p in pairs]
    write_segmentation(folder / "moving_rois.seg.nrrd", moving_image, [moving_masks[n] for n in names], names,
                       [tuple(p["color"]) for p in pairs])
    write_markups(folder / "prompts_y.mrk.json",
                  [ras_to_lps(np.asarray(p["prompt_y_ras"], dtype=float)) for p in pairs], names, "Prompt Y")
