"""The Python API: ``register(fixed, moving, prompts, options)`` → :class:`RegistrationResult`.

The stages, in order: read and check the images; see them as the model does (:mod:`~PromptRegLib.views`); read
the dense features (which also orient the search); find ROI pairs (:mod:`~PromptRegLib.prompting`); fit the
transform (:mod:`~PromptRegLib.transform`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.grid import AXIS_NAMES
from ..core.image import (
    Image,
    check_memory,
    ras_to_lps,
    read_image,
    require_inside,
    require_same_dimension,
    tidy_direction,
    validate_image,
)
from ..core.lengths import length_scale
from ..core.progress import ignore, span
from ..errors import PromptError, RegistrationError
from ..models import load_model
from ..prompting.orientation import found_turn, orientation_prior
from ..prompting.pairs import ROIPair, find_pairs, initial_prior
from ..transform.features import descriptor_pair, feature_pair
from ..transform.field import JACOBIAN_VOXELS, FittedTransform, jacobian_determinant, working_reference
from ..transform.fit import FitOptions, fit_without_folding
from ..transform.metrics import folding_fraction, sdlogj
from ..views import View, make_views
from ..views.foreground import foreground_mask
from .options import Prompts, RegistrationOptions

#: at most this many prompts are paired (each costs an inverse search); more ask for sampled pairs instead
MAX_PROMPTS = 64


@dataclass
class RegistrationResult:
    fixed_image: Image
    moving_image: Image
    fixed_view: View
    moving_view: View
    pairs: list[ROIPair]
    transform: FittedTransform | None
    report: dict = field(default_factory=dict)
    #: the dense term's features of both views (projected, tens of MB), kept so a refit or correction never reads
    #: the raw feature volumes again (on a clinical grid that re-reading was the correction's memory peak)
    features: object = None

    @property
    def accepted_pairs(self) -> list[ROIPair]:
        return [p for p in self.pairs if p.accepted]

    def fixed_mask(self, pair: ROIPair) -> np.ndarray:
        """ROI X on the fixed image's own grid (numpy order)."""
        return self.fixed_view.to_image_mask(pair.roi_x.mask)

    def moving_mask(self, pair: ROIPair) -> np.ndarray:
        """ROI Y on the moving image's own grid (numpy order)."""
        return self.moving_view.to_image_mask(pair.roi_y.mask)


@dataclass
class PromptsLPS:
    """A run's prompts in LPS mm on the fixed image's dimension (pairs: Prompt X on fixed, Prompt Y on moving)."""

    points: list[np.ndarray]
    boxes: list[np.ndarray]
    pairs: list[tuple[np.ndarray, np.ndarray]]


def as_image(image: Image | str | Path) -> Image:
    """Read a path; images built in memory get the same checks and direction tidying as files."""
    if isinstance(image, Image):
        return validate_image(Image(tidy_direction(image.sitk_image), image.source, image.physical_units))
    return read_image(image)


def pixel_to_lps(image: Image, pixel) -> np.ndarray:
    """A click in ``image``'s pixels (x = column, y = row[, z = slice], from 0) → LPS mm."""
    index = np.asarray(pixel, dtype=float).ravel()
    if index.size != image.dimension:
        raise PromptError(f"pixel prompt {tuple(float(v) for v in index)} needs {image.dimension} values "
                          f"(x = column, y = row{', z = slice' if image.dimension == 3 else ''}).")
    point = image.index_to_lps(index[None])[0]
    require_inside(image, point, f"pixel prompt {tuple(float(v) for v in index)}")
    return point


def prompts_in_lps(prompts: Prompts, fixed: Image, moving: Image) -> PromptsLPS:
    """The user's prompts in LPS mm, each checked: of the image's dimension, inside its image, not too many."""
    dimension = fixed.dimension
    for point in prompts.points_ras:
        if np.asarray(point).size not in (dimension, 3):
            raise PromptError(f"prompt {tuple(np.ravel(point))} needs {dimension} coordinates.")
    points = [ras_to_lps(np.asarray(p, dtype=float))[:dimension] for p in prompts.points_ras]
    points += [pixel_to_lps(fixed, p) for p in prompts.points_px]
    boxes = [ras_to_lps(np.asarray(b, dtype=float).reshape(2, -1))[:, :dimension].ravel() for b in prompts.boxes_ras]
    pairs = []
    for pair in prompts.pairs_ras:
        if len(pair) != 2:
            raise PromptError(f"a prompt pair needs Prompt X and Prompt Y, got {len(pair)} points.")
        prompt_x, prompt_y = (ras_to_lps(np.asarray(point, dtype=float))[:dimension] for point in pair)
        require_inside(fixed, prompt_x, "Prompt X")
        require_inside(moving, prompt_y, "Prompt Y")
        pairs.append((prompt_x, prompt_y))
    if len(points) + len(pairs) + len(boxes) > MAX_PROMPTS:
        raise PromptError(f"{len(points) + len(pairs) + len(boxes)} prompts given; at most {MAX_PROMPTS} are used "
                          "— use auto pairs for dense sampling instead.")
    return PromptsLPS(points, boxes, pairs)


def check_prompts(prompts: Prompts, options: RegistrationOptions, fixed: Image, moving: Image) -> PromptsLPS:
    """The prompts in LPS mm, or :class:`PromptError` for prompts that cannot be used (or none, with none sampled)."""
    given = prompts_in_lps(prompts, fixed, moving)
    if prompts.count == 0 and options.for_run(fixed, prompts)[0].auto_pairs == 0:
        raise PromptError("no prompts given and auto pairs set to 0: give at least one prompt, or some auto pairs.")
    return given


def register(fixed: Image | str | Path, moving: Image | str | Path, prompts: Prompts | list | None = None,
             options: RegistrationOptions | None = None, model=None, progress=None,
             cancel=None) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` from corresponding ROIs; the transform maps fixed points to moving points.

    ``prompts``: a :class:`Prompts`, or a list of clicks on the fixed image in RAS mm; none at all registers from
    automatic pairs. ``options``: a :class:`RegistrationOptions` (defaults when None). ``model``: an already
    loaded model (:func:`~PromptRegLib.models.load_model`) to use instead of loading ``options.model`` — a
    long-lived process keeps its weights and in-memory embeddings. ``progress(stage, fraction, …)`` is called as
    work proceeds (:mod:`~PromptRegLib.core.progress`); ``cancel()`` returning True stops the run (raising
    :class:`~PromptRegLib.errors.Cancelled`).
    """
    started = time.perf_counter()
    options = options or RegistrationOptions()
    fixed_image, moving_image = as_image(fixed), as_image(moving)
    prompts = Prompts.of(prompts)
    require_same_dimension(fixed_image, moving_image)
    check_prompts(prompts, options, fixed_image, moving_image)  # before any work
    segmenter = model if model is not None else load_model(options.model, options.checkpoint, options.device)
    views = see(segmenter, fixed_image, moving_image, options, progress, cancel)
    result = register_views(views, prompts, options, progress, cancel)
    result.report["timings_s"]["load"] += views.seconds
    result.report["timings_s"]["total"] = time.perf_counter() - started
    return result


@dataclass
class Views:
    """Both images as the model sees them (:mod:`~PromptRegLib.views`), with the model: what a session keeps
    between requests (their embeddings stay in memory)."""

    fixed: View
    moving: View
    segmenter: object
    seconds: float = 0.0

    @property
    def images(self) -> tuple[Image, Image]:
        return self.fixed.image, self.moving.image


def see(segmenter, fixed_image: Image, moving_image: Image, options: RegistrationOptions, progress=None,
        cancel=None) -> Views:
    """The two images' views for ``options`` (the preset's and the images' own slice options); checks the pair."""
    started = time.perf_counter()
    require_same_dimension(fixed_image, moving_image)
    check_memory(fixed_image, moving_image)
    (progress or ignore)("loading model", 0.0)
    _, _, slice_options, _ = options.for_run(fixed_image, Prompts())
    fixed_view, moving_view = make_views(segmenter, fixed_image, moving_image, slice_options, cancel, progress)
    return Views(fixed_view, moving_view, segmenter, time.perf_counter() - started)


def register_views(views: Views, prompts: Prompts, options: RegistrationOptions, progress=None,
                   cancel=None) -> RegistrationResult:
    """:func:`register` on views already made (their embeddings reused): pairs, then the transform."""
    started = time.perf_counter()
    report = progress or ignore
    fixed_view, moving_view, segmenter = views.fixed, views.moving, views.segmenter
    fixed_image, moving_image = views.images
    given = check_prompts(prompts, options, fixed_image, moving_image)
    pair_options, fit_options, slice_options, notes = options.for_run(fixed_image, prompts)
    hits, misses = segmenter.cache.hits, segmenter.cache.misses  # a reused model's counts are cumulative
    work = replace(segmenter.encoder_work)
    prior, features, orientation = initial_prior(fixed_view, moving_view), None, {"searched": False}
    if fit_options.feature_weight > 0 and not options.pairs_only:  # the refinement's features, read once, also orient
        report("encoding for dense refinement", 0.03)
        features = feature_pair(fixed_view, moving_view, descriptors=fit_options.uses_descriptors)
        prior, orientation = orientation_prior(fixed_view, moving_view, prior, features)
    pairs = find_pairs(fixed_view, moving_view, given.points, given.boxes, prior, pair_options,
                       span(progress, 0.05, 0.8), cancel, given.pairs)
    for pair in pairs:
        if pair.name in options.reject_pairs:
            pair.reject_by_user()
    result = RegistrationResult(fixed_image, moving_image, fixed_view, moving_view, pairs, None)
    result.report = {"model": segmenter.name, "checkpoint": options.checkpoint, "preset": options.preset,
                     "prompts": notes[0] if notes else f"{prompts.count} given",
                     "length_scale": length_scale(fixed_image), "device": str(segmenter.device),
                     "pair_options": pair_options.as_dict(), "fit_options": asdict(fit_options),
                     "slice_options": asdict(slice_options), **_views_report(fixed_view, moving_view, segmenter),
                     "orientation": orientation,
                     "fallback_to_auto_pairs": any(p.source == "fallback" for p in pairs),
                     "embedding_cache": {"hits": segmenter.cache.hits - hits,
                                         "misses": segmenter.cache.misses - misses},
                     "timings_s": {"load": 0.0, "pairs": time.perf_counter() - started}}
    result.features = features
    if not options.pairs_only:
        refit_transform(result, fit_options, progress=report, cancel=cancel, features=features)
    result.report["encoder"] = segmenter.encoder_work.since(work, getattr(segmenter, "gflop_per_slice", None))
    result.report["encoded"] = {"fixed": fixed_view.encoded, "moving": moving_view.encoded}
    return result


def _views_report(fixed_view: View, moving_view: View, segmenter) -> dict:
    """How the model saw the two images: working grids, slicing axis, slices encoded, intensity windows."""
    axis = getattr(fixed_view, "axis_lps", None)
    return {"working_grid": {"fixed": _describe(fixed_view), "moving": _describe(moving_view)},
            "slicing_axis": AXIS_NAMES.get(axis) if fixed_view.image.dimension == 3 and axis is not None else None,
            "native_3d": bool(getattr(segmenter, "native_3d", False)),
            "encoded": {"fixed": fixed_view.encoded, "moving": moving_view.encoded},
            "intensity_window": {"fixed": fixed_view.window, "moving": moving_view.window}}


def _describe(view: View) -> dict:
    """The working grid a view saw its image on, for the report."""
    return {"size": list(view.grid.size), "spacing_mm": [round(float(v), 4) for v in view.grid.spacing],
            "direction": np.round(view.grid.direction, 6).tolist()}


def jacobian_measures(transform: FittedTransform, fixed_view: View) -> dict:
    """The field's folding fraction and SDlogJ over the fixed image's foreground (:mod:`~PromptRegLib.views.
    foreground`), on the grid its Jacobian was computed on."""
    reference = working_reference(transform.fixed_reference, JACOBIAN_VOXELS)
    jacobian = transform.jacobian if transform.jacobian is not None else jacobian_determinant(transform)
    foreground = fixed_view.mask_image(foreground_mask(fixed_view))
    on_grid = sitk.Resample(foreground.sitk_image, reference.sitk_image, sitk.Transform(), sitk.sitkNearestNeighbor,
                            0.0)
    where = sitk.GetArrayViewFromImage(on_grid) > 0.5
    return {"folding_foreground": folding_fraction(jacobian, where), "sdlogj": sdlogj(jacobian, where),
            "over": "fixed foreground", "voxels": int(where.sum())}


def refit_transform(result: RegistrationResult, fit_options: FitOptions | None = None, progress=None,
                    cancel=None, features=None, start: FittedTransform | None = None) -> RegistrationResult:
    """(Re)fit the transform from the currently accepted pairs — no re-encoding (e.g. after rejecting a pair).
    ``features``: the two views' :class:`~PromptRegLib.transform.features.FeaturePair` when already read;
    ``start``: the transform being corrected, to start from (see :func:`~PromptRegLib.transform.fit.fit_transform`)."""
    fit_options = fit_options or FitOptions()
    features = features if features is not None else result.features
    accepted = result.accepted_pairs
    if not accepted:
        reasons = "; ".join(f"{p.name}: {p.rejected_because}" for p in result.pairs) or "no prompts"
        raise RegistrationError(f"no ROI pair passed the quality checks ({reasons}). Click on structures "
                                "visible in both images, or add auto pairs.")
    if progress:
        progress("fitting transform", 0.8)
    mark = time.perf_counter()
    weights = np.array([p.quality["iou_x"] * p.quality["iou_y"] for p in accepted])
    fixed_masks = [result.fixed_view.mask_image(p.roi_x.mask) for p in accepted]
    moving_masks = [result.moving_view.mask_image(p.roi_y.mask) for p in accepted]
    if fit_options.feature_weight > 0 and features is None:
        if progress:
            progress("encoding for dense refinement", 0.8)
        features = feature_pair(result.fixed_view, result.moving_view, descriptors=fit_options.uses_descriptors)
        result.features = features
        result.report["encoded"] = {"fixed": result.fixed_view.encoded, "moving": result.moving_view.encoded}
    if features is not None and fit_options.uses_descriptors and features.descriptors is None:
        features.descriptors = descriptor_pair(result.fixed_view, result.moving_view, features.fixed_foreground)
    result.report["dense_refinement"] = "features" if features is not None else "off"
    transform, folding, options = fit_without_folding(result.fixed_image, result.moving_image, fixed_masks,
                                                      moving_masks, weights, replace(fit_options), cancel,
                                                      features=features, start=start,
                                                      turn=found_turn(result.report, result.fixed_image.dimension),
                                                      progress=span(progress, 0.8, 0.95))
    result.transform = transform
    result.report["jacobian"] = jacobian_measures(transform, result.fixed_view)
    result.report.setdefault("timings_s", {})["fit"] = time.perf_counter() - mark
    result.report.update(fit=transform.report, folding_fraction=folding, fit_options=asdict(fit_options),
                         fit_options_used=asdict(options))
    return result
