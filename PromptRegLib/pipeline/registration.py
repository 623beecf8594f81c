"""The Python API: ``register(fixed, moving, prompts_ras)`` → :class:`RegistrationResult`."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import PromptError, RegistrationError
from ..transform.fit import FitOptions, FittedTransform, fit_without_folding
from ..core.image import (Image, check_memory, lps_to_ras, ras_to_lps, read_image, require_same_dimension, tidy_direction,
                      validate_image)
from ..transform.features import feature_pair
from ..core.lengths import length_scale
from ..models import load_model
from ..models.cache import EmbeddingCache
from .presets import resolve_options
from ..prompting.orientation import found_turn, orientation_prior
from ..prompting.pairs import PairOptions, ROIPair, find_pairs, initial_prior
from ..views import SliceOptions, View, make_views
from ..core.grid import AXIS_NAMES

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

    @property
    def accepted_pairs(self) -> list[ROIPair]:
        return [p for p in self.pairs if p.accepted]

    def fixed_mask(self, pair: ROIPair) -> np.ndarray:
        """ROI X on the fixed image's own grid (numpy order)."""
        return self.fixed_view.to_image_mask(pair.roi_x.mask)

    def moving_mask(self, pair: ROIPair) -> np.ndarray:
        """ROI Y on the moving image's own grid (numpy order)."""
        return self.moving_view.to_image_mask(pair.roi_y.mask)


def _as_image(image: Image | str | Path) -> Image:
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
    if not image.contains_index(index[None])[0]:
        raise PromptError(f"pixel prompt {tuple(float(v) for v in index)} lies outside {image.source} "
                          f"(size {tuple(image.size)}).")
    return image.index_to_lps(index[None])[0]


def _pair_lps(pair, fixed: Image, moving: Image) -> list[np.ndarray]:
    """(Prompt X, Prompt Y) in RAS mm → LPS points of the images' dimension, each inside its image."""
    if len(pair) != 2:
        raise PromptError(f"a prompt pair needs Prompt X and Prompt Y, got {len(pair)} points.")
    points = [ras_to_lps(np.asarray(point, dtype=float))[: fixed.dimension] for point in pair]
    for point, image, name in zip(points, (fixed, moving), ("Prompt X", "Prompt Y")):
        if not image.contains_index(image.lps_to_index(point[None]))[0]:
            raise PromptError(f"{name} at RAS {tuple(round(float(v), 2) for v in lps_to_ras(point))} mm lies outside "
                              f"{image.source} (size {tuple(image.size)}).")
    return points


def _check_prompts(points: list, boxes: list, dimension: int) -> None:
    if len(points) + len(boxes) > MAX_PROMPTS:
        raise PromptError(f"{len(points) + len(boxes)} prompts given; at most {MAX_PROMPTS} are used — "
                          "use --auto-pairs for dense sampling instead.")
    for point in points:
        if np.asarray(point).size not in (dimension, 3):
            raise PromptError(f"prompt {tuple(point)} needs {dimension} coordinates.")


def register(fixed: Image | str | Path, moving: Image | str | Path, prompts_ras=(), boxes_ras=(),
             model: str = "litemedsam", checkpoint: str | None = None, device: str = "auto",
             pair_options: PairOptions | None = None, fit_options: FitOptions | None = None,
             pairs_only: bool = False, cache: EmbeddingCache | None = None, progress=None, cancel=None,
             reject_pairs=(), slice_options: SliceOptions | None = None, prompts_px=(),
             segmenter=None, pairs_ras=(), preset: str | None = None) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` from corresponding ROIs.

    ``prompts_ras``: clicks on the fixed image (RAS mm); ``prompts_px``: clicks in the fixed image's pixels
    (x = column, y = row[, z = slice], from 0, its own index order — for images without physical units);
    ``boxes_ras``: boxes as two opposite RAS corners; ``pairs_ras``: (Prompt X on fixed, Prompt Y on moving) in
    RAS mm, pairs the user already knows — ROI Y is prompted at Prompt Y, with no search (decoder work only).
    ``progress(stage, fraction)`` is called as work proceeds; ``cancel()`` returning True stops the run
    (raising :class:`Cancelled`). With ``pairs_only`` no transform is fitted. Pairs named in ``reject_pairs``
    are kept in the report but not used (the embeddings are cached, so rejecting and re-running is cheap).
    ``segmenter``: an already loaded model (from :func:`~PromptRegLib.models.load_model`) to use instead of
    loading ``model`` again — a long-lived process (a batch worker) keeps its weights and in-memory cache.
    ``preset``: "quick", "default" or "accurate" (:mod:`~PromptRegLib.pipeline.presets`), filling the options left at their
    defaults.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    report = progress or (lambda stage, fraction: None)
    fixed_image, moving_image = _as_image(fixed), _as_image(moving)
    require_same_dimension(fixed_image, moving_image)
    check_memory(fixed_image, moving_image)
    points_lps = [ras_to_lps(np.asarray(p, dtype=float))[: fixed_image.dimension] for p in prompts_ras]
    points_lps += [pixel_to_lps(fixed_image, p) for p in prompts_px]
    boxes_lps = [ras_to_lps(np.asarray(b, dtype=float).reshape(2, -1))[:, : fixed_image.dimension].ravel()
                 for b in boxes_ras]
    user_pairs_lps = [tuple(_pair_lps(pair, fixed_image, moving_image)) for pair in pairs_ras]
    _check_prompts(points_lps + [x for x, _ in user_pairs_lps], boxes_lps, fixed_image.dimension)
    pair_options, fit_options, slice_options = resolve_options(preset, fixed_image, pair_options or PairOptions(),
                                                               fit_options or FitOptions(), slice_options)
    if not points_lps and not boxes_lps and not user_pairs_lps and pair_options.auto_pairs == 0:
        raise PromptError("no prompts given and --auto-pairs is 0: give at least one --prompt or some auto pairs.")

    report("loading model", 0.0)
    segmenter = segmenter if segmenter is not None else load_model(model, checkpoint, device, cache)
    hits, misses = segmenter.cache.hits, segmenter.cache.misses  # a reused model's counts are cumulative
    fixed_view, moving_view = make_views(segmenter, fixed_image, moving_image, slice_options, cancel)
    timings["load"] = time.perf_counter() - started

    mark = time.perf_counter()
    prior, features, orientation = initial_prior(fixed_view, moving_view), None, {"searched": False}
    if fit_options.feature_weight > 0 and not pairs_only:  # the refinement's features, read once, also orient
        report("encoding for dense refinement", 0.03)
        features = feature_pair(fixed_view, moving_view, descriptors=fit_options.uses_descriptors)
        prior, orientation = orientation_prior(fixed_view, moving_view, prior, features)
    pair_progress = lambda stage, f: report(stage, 0.05 + 0.75 * f)  # noqa: E731
    pairs = find_pairs(fixed_view, moving_view, points_lps, boxes_lps, prior, pair_options, pair_progress, cancel,
                       user_pairs_lps)
    timings["pairs"] = time.perf_counter() - mark
    for pair in pairs:
        if pair.name in reject_pairs:
            pair.accepted, pair.rejected_because = False, "rejected by the user"
    result = RegistrationResult(fixed_image, moving_image, fixed_view, moving_view, pairs, None)
    axis = getattr(fixed_view, "axis_lps", None)
    result.report = {"model": segmenter.name, "checkpoint": str(checkpoint) if checkpoint else None,
                     "preset": preset or "default", "length_scale": length_scale(fixed_image),
                     "device": str(segmenter.device),
                     "pair_options": pair_options.as_dict(), "fit_options": asdict(fit_options),
                     "slice_options": asdict(slice_options),
                     "working_grid": {name: _describe(view) for name, view in (("fixed", fixed_view),
                                                                                ("moving", moving_view))},
                     "slicing_axis": AXIS_NAMES.get(axis) if fixed_image.dimension == 3 and axis is not None else None,
                     "native_3d": bool(getattr(segmenter, "native_3d", False)),
                     "encoded": {"fixed": fixed_view.encoded, "moving": moving_view.encoded},
                     "intensity_window": {"fixed": fixed_view.window, "moving": moving_view.window},
                     "orientation": orientation,
                     "fallback_to_auto_pairs": any(p.source == "fallback" for p in pairs),
                     "embedding_cache": {"hits": segmenter.cache.hits - hits,
                                         "misses": segmenter.cache.misses - misses},
                     "timings_s": timings}
    if pairs_only:
        return result
    refit_transform(result, fit_options, progress=report, cancel=cancel, features=features)
    timings["total"] = time.perf_counter() - started
    return result


def _describe(view: View) -> dict:
    """The working grid a view saw its image on, for the report."""
    return {"size": list(view.grid.size), "spacing_mm": [round(float(v), 4) for v in view.grid.spacing],
            "direction": np.round(view.grid.direction, 6).tolist()}


def refit_transform(result: RegistrationResult, fit_options: FitOptions | None = None, progress=None,
                    cancel=None, max_folding: float = 0.001, max_stiffening: int = 2,
                    features=None, start: FittedTransform | None = None) -> RegistrationResult:
    """(Re)fit the transform from the currently accepted pairs — no re-encoding (e.g. after rejecting a pair).
    ``features``: the two views' :class:`~PromptRegLib.transform.features.FeaturePair` when already read; ``start``: the
    transform being corrected, to start from (see :func:`~PromptRegLib.transform.fit.fit_transform`)."""
    fit_options = fit_options or FitOptions()
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
        features = feature_pair(result.fixed_view, result.moving_view,
                                descriptors=fit_options.uses_descriptors)
        result.report["encoded"] = {"fixed": result.fixed_view.encoded, "moving": result.moving_view.encoded}
    result.report["dense_refinement"] = "features" if features is not None else "off"
    transform, folding, options = fit_without_folding(result.fixed_image, result.moving_image, fixed_masks,
                                                      moving_masks, weights, replace(fit_options), cancel,
                                                      max_folding, max_stiffening, features,
                                                      found_turn(result.report, result.fixed_image.dimension), start)
    result.transform = transform
    result.report.setdefault("timings_s", {})["fit"] = time.perf_counter() - mark
    result.report["fit"] = transform.report
    result.report["folding_fraction"] = folding
    result.report["fit_options"] = asdict(fit_options)
    result.report["fit_options_used"] = asdict(options)
    return result
