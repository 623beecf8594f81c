"""A registration session: one model, one pair of images seen once, their embeddings and the last result, kept in
memory between requests — for the long-lived Slicer worker (``python -m PromptRegLib.apps.worker --serve``) and
for scripts that click, correct and refit interactively.

* :meth:`RegistrationSession.encode` — the images' views (:func:`~.registration.see`) with every slice a
  registration reads encoded, ahead of the first click (the worker starts it as soon as the panel has both volumes);
* :meth:`~RegistrationSession.register` — :func:`~.registration.register_views` on the held views (nothing encoded
  again), optionally showing a quick affine from the ROI pairs (``on_affine``) before the run's own fit;
* :meth:`~RegistrationSession.add_click`, :meth:`~RegistrationSession.correct`, :meth:`~RegistrationSession.reject`
  — one more Prompt X, a moved Prompt Y, pairs rejected: decoding only, then the transform refitted.

Prompts cross the boundary in RAS millimetres; every transform maps fixed points to moving points (LPS inside).
Images are told apart by file (resolved path, size, modification time: a volume exported again is a new image) or,
built in memory, by object identity; another pair of images, model or slice options drops everything held for the
old one. A change that fails or is cancelled leaves the held result as it was. One request at a time: the session
is not thread-safe; only ``cancel()`` may be answered from another thread.
"""
from __future__ import annotations

import copy
import os
import re
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ..core.image import Image, ras_to_lps, require_inside
from ..core.progress import Progress, ignore, span
from ..core.regions import dice
from ..errors import Cancelled, PromptError, RegistrationError, UsageError
from ..models import load_model
from ..prompting.inverse import AffinePrior, prompt_pair
from ..prompting.pairs import ROIPair, find_pairs, initial_prior
from ..transform.features import feature_pair
from ..transform.fit import FitOptions
from .options import Prompts, RegistrationOptions
from .registration import RegistrationResult, Views, as_image, refit_transform, register_views, see

ImageInput = Union[Image, str, os.PathLike]
#: why a pair found for an added click is not found again (the run's own rule for sampled pairs)
DUPLICATE = "duplicate of {}"


def image_identity(image: ImageInput) -> tuple:
    """What makes two requests' images the same: a file's resolved path, size and modification time (ns), or an
    in-memory image's object identity (the session holds the object, so the identity stays unique)."""
    if isinstance(image, Image):
        return ("image", id(image))
    path = Path(image).resolve()
    try:
        stat = path.stat()
    except OSError:  # reading it will say what is wrong
        return ("file", str(path), None, None)
    return ("file", str(path), stat.st_size, stat.st_mtime_ns)


def encode_views(views: Views, progress: Optional[Progress] = None) -> dict:
    """Encode, in both views, every slice a registration will read: the dense refinement's feature volume, which is
    every working slice of a slice view (inverse prompting's similarity maps read them all as well). Slices already
    held are not encoded again; the model's embedding cache keeps them for later processes. A view without a feature
    volume (cubes) encodes where it is prompted. ``progress`` gets the share of the two views done (fixed first).
    Returns the slices (cubes) each view holds."""
    report = progress or ignore
    for index, (role, view) in enumerate((("fixed", views.fixed), ("moving", views.moving))):
        low, high = index / 2, (index + 1) / 2
        report(f"encoding the {role} image", low)
        previous = view.progress

        def counted(stage, fraction, done=None, total=None, unit=None, low=low, high=high):
            report(stage, low + (high - low) * done / total if total else low, done, total, unit)

        view.progress = counted
        try:
            view.feature_volume()  # encodes what is not held yet; the volume itself is let go at once
        finally:
            view.progress = previous
    report("encoded", 1.0)
    return {"fixed": views.fixed.encoded, "moving": views.moving.encoded}


def encode(fixed: ImageInput, moving: ImageInput, options: RegistrationOptions | None = None, model=None,
           progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None) -> Views:
    """Encode both images ahead of a registration — from a script, as the Slicer worker does while the user looks.

    Returns the :class:`~.registration.Views` (the model in ``views.segmenter``). A later registration reuses the
    embeddings: ``register_views(views, prompts, options)`` reads nothing again; ``register(fixed, moving, prompts,
    options, model=views.segmenter)`` finds them in the model's in-memory cache; any later process (the command
    line, a batch, the worker) finds them in the disk embedding cache (:mod:`PromptRegLib.models.cache`,
    ``$PROMPTREG_CACHE``). ``options`` must name the same model and slice options as that registration."""
    options = options or RegistrationOptions()
    segmenter = model if model is not None else load_model(options.model, options.checkpoint, options.device)
    views = see(segmenter, as_image(fixed), as_image(moving), options, progress, cancel)
    encode_views(views, progress)
    return views


class Interruptible:
    """A model whose encoder and decoder calls first ask ``cancelled()``: a region growing through slices decodes
    many times and, once its slices are encoded, is otherwise not interrupted until the pair is done (10–15 s with
    LiteMedSAM). Everything else is the model's own (``model``)."""

    def __init__(self, model, cancelled: Callable[[], bool]):
        self.model, self._cancelled = model, cancelled

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def _check(self) -> None:
        if self._cancelled():
            raise Cancelled("registration cancelled")

    def encode(self, *args, **kwargs):
        self._check()
        return self.model.encode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        self._check()
        return self.model.decode(*args, **kwargs)


class RegistrationSession:
    """A model, two images' views with their embeddings, and the last :class:`~.registration.RegistrationResult`.

    ``model``: an already loaded model to use whatever the options say; else ``options.model`` (``checkpoint``,
    ``device``) is loaded on first use. ``options``: what :meth:`encode` and :meth:`register` use when given none.
    Each method takes ``progress(stage, fraction, done, total, unit)`` and ``cancel()`` (True stops it, raising
    :class:`~PromptRegLib.errors.Cancelled`, checked between slices, decoder calls and fit iterations)."""

    def __init__(self, model=None, options: RegistrationOptions | None = None):
        self.options = options or RegistrationOptions()
        self._given_model = model is not None
        self._model = Interruptible(model, self._cancelled) if model is not None else None
        self._model_key: tuple | None = None
        self.views: Views | None = None
        self._key: tuple | None = None
        self._inputs: tuple = ()
        self._result: RegistrationResult | None = None
        self._result_options: RegistrationOptions | None = None
        self._features: dict = {}
        self._why_empty = "nothing has been registered yet"
        self._progress: Optional[Progress] = None
        self._cancel: Optional[Callable[[], bool]] = None

    # --- state ----------------------------------------------------------------------------------------------
    @property
    def result(self) -> RegistrationResult | None:
        """The last result (None before a registration, or once the images changed or were forgotten)."""
        return self._result

    @property
    def result_options(self) -> RegistrationOptions | None:
        """The options the last result was registered with (what a click, a correction or a refit starts from)."""
        return self._result_options

    def forget(self, why: str = "the session was cleared") -> None:
        """Drop the views, their embeddings (the disk cache keeps them) and the result; the model stays loaded."""
        self.views, self._key, self._inputs = None, None, ()
        self._result, self._result_options, self._features = None, None, {}
        self._why_empty = why

    def holds(self, fixed: ImageInput, moving: ImageInput, options: RegistrationOptions | None = None) -> bool:
        """Whether the held views are of these images (and model and slice options)."""
        return self.views is not None and self._key == self._key_of(fixed, moving, options or self.options)

    def segmenter(self, options: RegistrationOptions | None = None):
        """The model, loaded on first use (a different ``options.model``/``checkpoint``/``device`` loads anew)."""
        options = options or self.options
        key = (options.model, options.checkpoint, options.device)
        if self._model is None or (not self._given_model and key != self._model_key):
            if self._model is not None:
                self.forget("the model changed")
            self._model = Interruptible(load_model(*key), self._cancelled)
            self._model_key = key
        return self._model

    def _key_of(self, fixed: ImageInput, moving: ImageInput, options: RegistrationOptions) -> tuple:
        model = "given" if self._given_model else (options.model, options.checkpoint, options.device)
        return image_identity(fixed), image_identity(moving), model, options.slices

    def _views_for(self, fixed: ImageInput, moving: ImageInput, options: RegistrationOptions) -> Views:
        """The held views when they are of these images, else new ones (the old state dropped)."""
        key = self._key_of(fixed, moving, options)
        if self.views is not None and key == self._key:
            return self.views
        if self.views is not None:
            self.forget("the images changed since the last registration")
        segmenter = self.segmenter(options)
        fixed_image, moving_image = as_image(fixed), as_image(moving)
        self.views = see(segmenter, fixed_image, moving_image, options, self._report, self._cancelled)
        self._key, self._inputs = key, (fixed, moving)
        return self.views

    # --- the request in progress ----------------------------------------------------------------------------
    def _cancelled(self) -> bool:
        return bool(self._cancel is not None and self._cancel())

    def _report(self, stage: str, fraction, done=None, total=None, unit=None) -> None:
        if self._progress is not None:
            self._progress(stage, fraction, done, total, unit)

    @contextmanager
    def _request(self, progress: Optional[Progress], cancel: Optional[Callable[[], bool]]):
        """``progress`` and ``cancel`` reach the views and the model (made with the session's own) while inside."""
        self._progress, self._cancel = progress, cancel
        try:
            yield
        finally:
            self._progress, self._cancel = None, None

    # --- encoding and registering ---------------------------------------------------------------------------
    def encode(self, fixed: ImageInput, moving: ImageInput, options: RegistrationOptions | None = None,
               progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None) -> Views:
        """Views of both images with every slice a registration reads encoded (:func:`encode_views`), held for
        :meth:`register`; images other than the held ones drop the old state first. A cancelled encoding keeps
        the slices done (the next call goes on from there)."""
        options = options or self.options
        with self._request(progress, cancel):
            views = self._views_for(fixed, moving, options)
            encode_views(views, self._report)
        return views

    def register(self, fixed: ImageInput, moving: ImageInput, prompts: Prompts | Sequence | None = None,
                 options: RegistrationOptions | None = None, progress: Optional[Progress] = None,
                 cancel: Optional[Callable[[], bool]] = None,
                 on_affine: Optional[Callable[[RegistrationResult], None]] = None) -> RegistrationResult:
        """:func:`~.registration.register` on the held views (made and encoded first when they are of other images).

        ``on_affine(result)``: called once the pairs are found, with the result holding a quick affine fitted on the
        ROI pairs alone (about a second), before the run's own fit replaces it in the same object — read what you
        need inside the callback. The final transform is the one :func:`~.registration.register` gives."""
        options = options or self.options
        prompts = Prompts.of(prompts)
        with self._request(progress, cancel):
            views = self._views_for(fixed, moving, options)
            if on_affine is None or options.pairs_only:
                result = register_views(views, prompts, options, self._report, self._cancelled)
            else:
                result = self._register_showing_affine(views, prompts, options, on_affine)
        self._result, self._result_options = result, options
        result.report["session"] = {"added": [], "corrected": [], "rejected": []}
        return result

    def _register_showing_affine(self, views: Views, prompts: Prompts, options: RegistrationOptions,
                                 on_affine: Callable[[RegistrationResult], None]) -> RegistrationResult:
        """Pairs and a quick affine (ROI pairs only; the features still read, so the pairs are the run's own), shown,
        then the run's fit from scratch — the same fit :func:`register_views` would make."""
        fit_options = options.for_run(views.fixed.image, prompts)[1]
        if fit_options.transform == "affine" and not (fit_options.feature_weight > 0 and fit_options.feature_affine):
            result = register_views(views, prompts, options, self._report, self._cancelled)  # already the quick fit
            on_affine(result)
            return result
        quick = replace(options, fit=replace(options.fit, transform="affine", feature_affine=False))
        result = register_views(views, prompts, quick, self._report, self._cancelled)
        result.report["quick_affine_s"] = dict(result.report["timings_s"])
        on_affine(result)
        refit_transform(result, fit_options, self._report, self._cancelled, features=self._feature_pair(fit_options))
        return result

    def _feature_pair(self, fit_options: FitOptions):
        """The dense refinement's features of the held views, read once per kind (with or without MIND)."""
        if fit_options.feature_weight <= 0:
            return None
        descriptors = fit_options.uses_descriptors
        if descriptors not in self._features:
            self._report("reading features", None)
            self._features[descriptors] = feature_pair(self.views.fixed, self.views.moving, descriptors=descriptors)
        return self._features[descriptors]

    # --- changing the last result ---------------------------------------------------------------------------
    def _draft(self) -> RegistrationResult:
        """A copy of the last result to change (pairs, their quality and the report copied; views and masks shared),
        so the held result stays as it was until the change succeeds."""
        if self._result is None:
            raise UsageError(f"there is no registration to change: {self._why_empty}. Register these images first.")
        result = self._result
        pairs = [replace(pair, quality=dict(pair.quality)) for pair in result.pairs]
        return replace(result, pairs=pairs, report=copy.deepcopy(result.report))

    def _commit(self, draft: RegistrationResult, change: str, names: Iterable[str]) -> RegistrationResult:
        draft.report.setdefault("session", {"added": [], "corrected": [], "rejected": []})[change] += list(names)
        self._result = draft
        return draft

    def _refit(self, draft: RegistrationResult, options: RegistrationOptions, start) -> None:
        """The transform fitted again from ``draft``'s accepted pairs (from ``start`` when given); pairs only: none."""
        if options.pairs_only:
            return
        fit_options = options.for_run(draft.fixed_image, Prompts())[1]
        refit_transform(draft, fit_options, self._report, self._cancelled, features=self._feature_pair(fit_options),
                        start=start)

    def add_click(self, prompt_x_ras: Sequence[float], options: RegistrationOptions | None = None,
                  progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None) -> RegistrationResult:
        """One more Prompt X (R, A[, S] mm on the fixed image): paired on the held views (decoding only; the search
        guided by the current transform's affine), named "Prompt n+1", and the transform refitted from the current
        one. A click whose pair fails the quality checks (or repeats a pair) is kept, rejected with its reason, and
        the transform stays as it was. ``options``: the fit's (default: the registration's)."""
        draft = self._draft()
        options = options or self._result_options
        point = _to_lps(prompt_x_ras, draft.fixed_image, "Prompt X")
        with self._request(progress, cancel):
            pair_options = replace(options.for_run(draft.fixed_image, Prompts(points_ras=(prompt_x_ras,)))[0],
                                   auto_pairs=0, warps=0, fallback_auto_pairs=0)
            prior = (AffinePrior(draft.transform.affine_matrix, draft.transform.affine_offset)
                     if draft.transform is not None else initial_prior(draft.fixed_view, draft.moving_view))
            pair = find_pairs(draft.fixed_view, draft.moving_view, [point], [], prior, pair_options,
                              span(self._report, 0.0, 0.8), self._cancelled)[0]
            pair.name = next_prompt_name(draft.pairs)
            reject_duplicate(pair, draft.pairs, pair_options.duplicate_dice)
            draft.pairs.append(pair)
            if pair.accepted:
                self._refit(draft, options, start=draft.transform)
        return self._commit(draft, "added", [pair.name])

    def correct(self, name: str | Mapping[str, Sequence[float]], prompt_y_ras: Sequence[float] | None = None,
                options: RegistrationOptions | None = None, progress: Optional[Progress] = None,
                cancel: Optional[Callable[[], bool]] = None) -> RegistrationResult:
        """Pair ``name``'s Prompt Y moved to ``prompt_y_ras`` (R, A[, S] mm on the moving image) — or several, given
        as {name: Prompt Y}: each ROI Y segmented there (:func:`~PromptRegLib.prompting.inverse.prompt_pair`,
        decoding only), the pair used (a rejected one too) unless the model finds nothing there, and the transform
        refitted from the current one."""
        corrections = dict(name) if isinstance(name, Mapping) else {name: prompt_y_ras}
        draft = self._draft()
        options = options or self._result_options
        by_name = {pair.name: pair for pair in draft.pairs}
        _require_names(corrections, by_name)
        with self._request(progress, cancel):
            for index, (pair_name, point) in enumerate(corrections.items()):
                self._report("segmenting ROI Y at the corrected Prompt Y", 0.05 + 0.7 * index / len(corrections))
                move_prompt_y(draft, by_name[pair_name], point)
            self._refit(draft, options, start=draft.transform)
        return self._commit(draft, "corrected", corrections)

    def reject(self, names: Iterable[str], options: RegistrationOptions | None = None,
               progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None) -> RegistrationResult:
        """Refit without the pairs ``names`` — the whole set the user rejects now (a pair rejected before and not
        named again is used again, as a refit from an output folder does); nothing is decoded."""
        names = set(names)
        draft = self._draft()
        options = options or self._result_options
        _require_names(names, {pair.name: pair for pair in draft.pairs})
        for pair in draft.pairs:
            if pair.name in names and (pair.accepted or pair.rejected_by_user):
                pair.reject_by_user()
            elif pair.rejected_by_user:
                pair.accepted, pair.rejected_because = True, ""
        if not draft.accepted_pairs:
            raise RegistrationError("no ROI pair left to fit once the rejected ones are removed; keep at least one "
                                    "pair, or register again with more prompts.")
        with self._request(progress, cancel):
            self._refit(draft, options, start=None)
        return self._commit(draft, "rejected", sorted(names))


def _to_lps(point_ras: Sequence[float], image: Image, what: str) -> np.ndarray:
    """A prompt in RAS mm → LPS mm of ``image``'s dimension, or :class:`PromptError` (wrong size, outside)."""
    point = np.asarray(point_ras, dtype=float).ravel()
    if point.size not in (image.dimension, 3):
        raise PromptError(f"{what} {tuple(point.tolist())} needs {image.dimension} coordinates.")
    point = ras_to_lps(point)[: image.dimension]
    require_inside(image, point, what)
    return point


def _require_names(names: Iterable[str], pairs: Mapping[str, ROIPair]) -> None:
    unknown = [name for name in names if name not in pairs]
    if unknown:
        raise PromptError(f"no pair named {', '.join(map(repr, unknown))}; the pairs are {', '.join(pairs) or 'none'}.")


def next_prompt_name(pairs: Sequence[ROIPair]) -> str:
    """"Prompt n+1", n the highest number among the pairs named "Prompt n"."""
    numbers = [int(match.group(1)) for pair in pairs if (match := re.fullmatch(r"Prompt (\d+)", pair.name))]
    return f"Prompt {max(numbers, default=0) + 1}"


def reject_duplicate(pair: ROIPair, pairs: Sequence[ROIPair], duplicate_dice: float) -> None:
    """Reject ``pair`` when it repeats a used pair in both images (Dice above ``duplicate_dice`` in each), as a
    registration rejects a later pair that repeats an earlier one."""
    for other in pairs:
        if pair.accepted and other.accepted and dice(pair.roi_x.mask, other.roi_x.mask) > duplicate_dice \
                and dice(pair.roi_y.mask, other.roi_y.mask) > duplicate_dice:
            pair.accepted, pair.rejected_because = False, DUPLICATE.format(other.name)


def move_prompt_y(result: RegistrationResult, pair: ROIPair, prompt_y_ras: Sequence[float]) -> None:
    """``pair``'s ROI Y segmented at a Prompt Y the user placed (RAS mm on the moving image), on ``result``'s views."""
    if not pair.roi_x.mask.any():
        raise RegistrationError(f"{pair.name} has no ROI X (the model found no region at its Prompt X), so it has "
                                "nothing to correct: move its Prompt X instead.")
    point = _to_lps(prompt_y_ras, result.moving_image, "Prompt Y")
    found = prompt_pair(result.fixed_view, result.moving_view, pair.roi_x, point)
    pair.roi_y, pair.prompt_y_lps = found.roi_y, point
    pair.quality = {**found.quality, "corrected": True}
    if found.roi_y.mask.any():
        pair.accepted, pair.rejected_because = True, ""
    else:
        pair.accepted, pair.rejected_because = False, "no ROI Y: the model found no region at the given Prompt Y"
