"""Refit the transform from a previous run's written ROI pairs: reject-and-refit without prompting again.

Reads ``fixed_rois.seg.nrrd``, ``moving_rois.seg.nrrd`` and ``report.json`` of an output folder, keeps the
pairs that passed the quality checks minus those the user rejects, fits the transform on them with
:func:`PromptRegLib.fit.fit_without_folding` (weights IoU X × IoU Y, as a registration does), and writes a
complete output folder — the ROI pairs and prompts copied, a new ``transform.h5``, ``affine.tfm``,
``warped_moving.nrrd`` and ``report.json`` — all or nothing (:func:`PromptRegLib.outputs.staged_output`).
When the run refined on the model's features (``dense_refinement``), the refit does too: the same model's views
of the two images, their embeddings read from the embedding cache — nothing is decoded.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .errors import CheckpointError, InputImageError, RegistrationError
from .fit import FitOptions, fit_without_folding
from .imageio import Image, read_image
from .outputs import staged_output, warp_image, write_image, write_transform

USER_REJECTED = "rejected by the user"
#: files a refit takes over unchanged from the folder it refits
COPIED = ("fixed_rois.seg.nrrd", "moving_rois.seg.nrrd", "prompts_x.mrk.json", "prompts_y.mrk.json")


def read_report(folder: Path) -> dict:
    try:
        return json.loads((folder / "report.json").read_text())
    except FileNotFoundError:
        raise InputImageError(f"{folder} holds no report.json: refit needs the output folder of a registration "
                              "or of a 'find corresponding regions' run.") from None


def usable_pair_names(report: dict, reject_pairs) -> list[str]:
    """Pairs that passed the quality checks (or that only the user had rejected), minus ``reject_pairs``."""
    reject = set(reject_pairs)
    return [p["name"] for p in report["pairs"]
            if (p["accepted"] or p["rejected_because"] == USER_REJECTED) and p["name"] not in reject]


def read_masks(path: Path, image: Image, names: list[str]) -> list[np.ndarray]:
    """The named segments of a ``.seg.nrrd`` written on ``image``'s grid, as masks in numpy order."""
    import slicerio

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


def _json_value(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def updated_pairs(pairs: list[dict], reject_pairs) -> list[dict]:
    """The report's pairs with the user's rejections applied (and earlier ones lifted when not repeated)."""
    reject = set(reject_pairs)
    updated = []
    for pair in pairs:
        pair = dict(pair)
        if pair["name"] in reject and (pair["accepted"] or pair["rejected_because"] == USER_REJECTED):
            pair["accepted"], pair["rejected_because"] = False, USER_REJECTED
        elif pair["rejected_because"] == USER_REJECTED:
            pair["accepted"], pair["rejected_because"] = True, ""
        updated.append(pair)
    return updated


def refit_features(report: dict, fit_options: FitOptions, fixed_image: Image, moving_image: Image, cancel=None):
    """The dense feature term of the run being refitted, when it had one: the model the run used, its views and
    the embeddings (from the disk cache, so nothing is decoded and normally nothing re-encoded). Returns the
    feature pair (or None) and what the report says about it."""
    if fit_options.feature_weight <= 0 or report.get("dense_refinement") != "features":
        return None, "off"
    from .dense import feature_pair
    from .models import load_model
    from .views import make_views

    try:
        model = load_model(report["model"], report.get("checkpoint"), "cpu")
    except (CheckpointError, KeyError) as error:
        return None, f"off (the run's model is not available: {error})"
    fixed_view, moving_view = make_views(model, fixed_image, moving_image, None, cancel)
    features = feature_pair(fixed_view, moving_view)
    return features, "features" if features is not None else "off"


def refit_from_outputs(pairs_from: str | os.PathLike, output_dir: str | os.PathLike, reject_pairs=(),
                       fit_options: FitOptions | None = None, fixed: str | None = None, moving: str | None = None,
                       progress=None, cancel=None) -> Path:
    """Fit a new transform from the ROI pairs written in ``pairs_from`` and write ``output_dir``; returns it.

    ``fixed``/``moving`` default to the images the earlier run read (``report.json``'s ``inputs``).
    """
    started = time.perf_counter()
    previous = Path(pairs_from)
    report = read_report(previous)
    fit_options = fit_options or FitOptions()
    names = usable_pair_names(report, reject_pairs)
    if not names:
        raise RegistrationError("no ROI pair left to fit once the rejected ones are removed; keep at least one "
                                "pair, or register again with more prompts.")
    fixed_image = read_image(fixed or report["inputs"]["fixed"])
    moving_image = read_image(moving or report["inputs"]["moving"])
    if progress:
        progress("reading ROI pairs", 0.05)
    fixed_masks = read_masks(previous / "fixed_rois.seg.nrrd", fixed_image, names)
    moving_masks = read_masks(previous / "moving_rois.seg.nrrd", moving_image, names)
    quality = {p["name"]: p for p in report["pairs"]}
    weights = np.array([quality[n]["iou_x"] * quality[n]["iou_y"] for n in names])
    if progress:
        progress("reading features", 0.08)
    features, dense = refit_features(report, fit_options, fixed_image, moving_image, cancel)
    if progress:
        progress("fitting transform", 0.1)
    transform, folding, options_used = fit_without_folding(fixed_image, moving_image, fixed_masks, moving_masks,
                                                           weights, fit_options, cancel, features=features)
    if progress:
        progress("writing outputs", 0.9)
    report.update(inputs={"fixed": fixed_image.source, "moving": moving_image.source},
                  pairs=updated_pairs(report["pairs"], reject_pairs), fit=transform.report,
                  fit_options=asdict(fit_options), fit_options_used=asdict(options_used), folding_fraction=folding,
                  dense_refinement=dense,
                  refit={"from": str(previous), "pairs_used": names, "device": "cpu",
                         "seconds": time.perf_counter() - started})
    with staged_output(output_dir, [fixed_image.source, moving_image.source]) as staging:
        for name in COPIED:
            if (previous / name).exists():
                shutil.copy2(previous / name, staging / name)
        sitk_transform = transform.to_sitk()
        write_transform(staging / "transform.h5", sitk_transform)
        write_transform(staging / "affine.tfm", transform.affine_sitk())
        write_image(staging / "warped_moving.nrrd", warp_image(moving_image, fixed_image, sitk_transform))
        (staging / "report.json").write_text(json.dumps(report, indent=2, default=_json_value))
    return Path(output_dir)
