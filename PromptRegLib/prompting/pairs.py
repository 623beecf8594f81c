"""Marginalisation: many ROI pairs from user prompts, sampled prompts and small spatial warps, for any view.

* prompt space — besides the user's clicks, clicks are sampled over the fixed image's foreground
  (farthest-point sampling in millimetres, so they spread out); a sample inside an ROI already held is skipped;
* spatial space — where the view supports it, the seed slice is warped by small random affines W, segmented
  again with W(prompt) and mapped back with W⁻¹; an ROI X that changes much across warps is unstable;
* quality gates on every pair, then near-duplicates (high overlap in both images) merged, at most K kept.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..core.affine import closed_form_affine
from ..core.regions import dice
from ..errors import Cancelled
from ..views.base import ROI, View
from ..views.foreground import foreground_mask
from .inverse import AffinePrior, InverseOptions, inverse_prompt, prompt_pair


@dataclass
class PairOptions:
    auto_pairs: int | None = None       # sampled prompts on top of the user's (None: 6 for 2D, 0 for 3D)
    warps: int | None = None            # spatial perturbations per ROI (None: 2 for 2D, 0 for 3D — see docs)
    warp_rotation_deg: float = 5.0
    warp_scale: float = 0.05
    warp_shift_mm: float = 9.0
    min_warp_stability: float = 0.8     # mean Dice of ROI X across warps
    min_iou: float = 0.75               # predicted IoU of ROI Y
    min_prototype_cosine: float = 0.6   # same-modality pairs score > 0.9; CT↔MR about 0.6–0.8
    size_tolerance: float = 1.33        # ROI Y's cross-section over ROI X's may differ from the pairs' common scale
                                        # by this factor either way (one pair: from 1); see agree_on_size
    duplicate_dice: float = 0.8
    max_pairs: int = 24
    fallback_auto_pairs: int = 8        # sampled instead when every user pair fails and auto_pairs was left unset
    seed: int = 0
    inverse: InverseOptions = field(default_factory=InverseOptions)

    def as_dict(self) -> dict:
        return asdict(self)


#: why a pair the user rejected is not used
USER_REJECTED = "rejected by the user"


@dataclass
class ROIPair:
    name: str
    roi_x: ROI
    roi_y: ROI
    prompt_x_lps: np.ndarray
    prompt_y_lps: np.ndarray
    source: str                         # "user", "user pair", "auto" or "fallback" (auto pairs after the user's failed)
    quality: dict
    accepted: bool = True
    rejected_because: str = ""

    @property
    def rejected_by_user(self) -> bool:
        return self.rejected_because == USER_REJECTED

    def reject_by_user(self) -> None:
        self.accepted, self.rejected_because = False, USER_REJECTED


def sample_prompts(view: View, count: int, exclude: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Farthest-point sampled LPS points in the foreground, outside ``exclude``."""
    candidates = np.argwhere(foreground_mask(view) & ~exclude)
    if len(candidates) == 0 or count <= 0:
        return []
    candidates = candidates[rng.choice(len(candidates), min(len(candidates), 4000), replace=False)]
    physical = view.voxel_to_lps(candidates.astype(float))
    chosen = [int(rng.integers(len(candidates)))]
    distance = np.linalg.norm(physical - physical[chosen[0]], axis=1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(physical - physical[chosen[-1]], axis=1))
    return [physical[i] for i in chosen]


def pair_without_roi_x(name: str, roi_x: ROI, moving: View, prompt_x_lps: np.ndarray, source: str) -> ROIPair:
    """The rejected pair of a prompt where the model found no region (nothing to invert)."""
    empty = ROI(np.zeros(moving.shape, dtype=bool), 0.0, np.zeros(moving.image.dimension), 0)
    return ROIPair(name, roi_x, empty, np.asarray(prompt_x_lps, dtype=float), empty.prompt_lps, source,
                   {"iou_x": roi_x.iou, "iou_y": 0.0}, False, "no ROI X: the model found no region at this prompt")


def gate(pair: ROIPair, options: PairOptions) -> str:
    """Why a pair is rejected ('' if it passes)."""
    q = pair.quality
    if not pair.roi_y.mask.any():
        return "no ROI Y found"
    if not q.get("cycle_ok", False):
        return "cycle check failed: ROI Y inverted back lands outside ROI X"
    if q.get("warp_stability", 1.0) < options.min_warp_stability:
        return f"ROI X unstable under spatial warps (Dice {q['warp_stability']:.2f})"
    if q["iou_y"] < options.min_iou:
        return f"low predicted IoU of ROI Y ({q['iou_y']:.2f})"
    if q["prototype_cosine"] < options.min_prototype_cosine:
        return f"ROI Y does not resemble ROI X (prototype cosine {q['prototype_cosine']:.2f})"
    return ""


SIZE_REASON = "size ratio"


def weighted_median_ratio(ratios: np.ndarray, weights: np.ndarray) -> float:
    """The weighted median of ratios on a log scale, interpolated where the weight splits between two (so two pairs
    agree on their geometric mean, not on whichever sorts first)."""
    order = np.argsort(ratios)
    logs, cumulative = np.log(ratios[order]), np.cumsum(weights[order]) / weights.sum()
    centres = cumulative - weights[order] / weights.sum() / 2      # each ratio's weight centred on it
    return float(np.exp(np.interp(0.5, centres, logs)))


def agree_on_size(pairs: list[ROIPair], options: PairOptions) -> float:
    """Judge each pair's size ratio (ROI Y's largest cross-section over ROI X's) against the scale the pairs agree
    on — two people's organs differ in size together, so one common factor, not 1, is what a right pair shows —
    and reject the pairs that disagree with it by more than ``size_tolerance``. The common scale is the weighted
    median ratio of the pairs that pass every other check (1 with fewer than two: nothing to agree with); a pair
    rejected for size before is judged again. The scale comes from the user's pairs (clicks on structures the user
    named; sampled regions are too loose to set it). Returns the common scale."""
    candidates = [p for p in pairs if p.accepted or p.rejected_because.startswith(SIZE_REASON)]
    ratios = np.array([max(p.quality.get("size_ratio", 0.0), 1e-6) for p in candidates])
    scale = 1.0
    clicked = [(r, p) for r, p in zip(ratios, candidates) if p.source in ("user", "user pair")]
    if len(clicked) >= 2:
        scale = weighted_median_ratio(np.array([r for r, _ in clicked]),
                                      np.array([p.quality["iou_x"] * p.quality["iou_y"] for _, p in clicked]))
    low, high = scale / options.size_tolerance, scale * options.size_tolerance
    for pair, ratio in zip(candidates, ratios):
        pair.quality["common_scale"] = scale
        if low <= ratio <= high or pair.source == "user pair":  # the user said these correspond
            pair.accepted, pair.rejected_because = True, ""
        else:
            pair.accepted = False
            pair.rejected_because = (f"{SIZE_REASON} {ratio:.2f} disagrees with the pairs' common scale {scale:.2f} "
                                     f"(allowed {low:.2f}–{high:.2f})")
    return scale


def segment_prompts(view: View, points_lps: list[np.ndarray], boxes_lps: list[np.ndarray] = (),
                    clicked: bool = True) -> list[ROI]:
    """One ROI per click and per box (two opposite LPS corners), in that order, grown together. ``clicked`` False
    (sampled prompts): in the view's default window only — a window follows a structure a user chose."""
    seeds, ranges = [], []
    for point in points_lps:
        seeds.append(view.seed_from_point(point, clicked))
        ranges.append((0, view.shape[0] - 1))
    for corners in boxes_lps:
        seed, k_range = view.seed_from_box(corners)
        seeds.append(seed)
        ranges.append(k_range)
    return view.grow(seeds, ranges) if seeds else []


def find_pairs(fixed: View, moving: View, points_lps: list[np.ndarray], boxes_lps: list[np.ndarray],
               prior: AffinePrior, options: PairOptions | None = None, progress=None, cancel=None,
               user_pairs_lps: list[tuple[np.ndarray, np.ndarray]] = ()) -> list[ROIPair]:
    """All ROI pairs, the user's first; each carries its quality and whether (and why not) it is used.

    ``user_pairs_lps``: (Prompt X, Prompt Y) the user gave together — ROI Y is prompted at Prompt Y
    (:func:`~.inverse.prompt_pair`), and these pairs, named "Pair n", tell where to search for the others."""
    options = options or PairOptions()
    rng = np.random.default_rng(options.seed)
    planar = fixed.image.dimension == 2
    # Measured on ctchest4 (3D, LiteMedSAM): sampled slice-propagated ROIs disagree in extent between the
    # images and raise TRE (3.9 → 7.0 mm); warps cost a re-encode per slice. Both default on in 2D only.
    warps = options.warps if options.warps is not None else (2 if planar else 0)
    auto_pairs = options.auto_pairs if options.auto_pairs is not None else (6 if planar else 0)
    report = progress or (lambda stage, fraction: None)

    def make_pair(roi_x: ROI, prompt_x_lps: np.ndarray, source: str, name: str) -> ROIPair:
        if cancel and cancel():
            raise Cancelled("registration cancelled")
        if not roi_x.mask.any():  # e.g. a click in air
            return pair_without_roi_x(name, roi_x, moving, prompt_x_lps, source)
        result = inverse_prompt(fixed, moving, roi_x, prior, options.inverse)
        if warps:
            stability = fixed.warp_stability(roi_x, warps, rng, options)
            if stability is not None:
                result.quality["warp_stability"] = stability
        pair = ROIPair(name, roi_x, result.roi_y, np.asarray(prompt_x_lps, dtype=float), result.roi_y.prompt_lps,
                       source, result.quality)
        pair.rejected_because = gate(pair, options)
        pair.accepted = not pair.rejected_because
        return pair

    report("segmenting Prompt X", 0.0)
    given_x = [np.asarray(x, dtype=float) for x, _ in user_pairs_lps]
    rois = segment_prompts(fixed, given_x + list(points_lps), boxes_lps)
    pairs = [given_pair(fixed, moving, roi_x, x, np.asarray(y, dtype=float), f"Pair {index + 1}")
             for index, (roi_x, x, (_, y)) in enumerate(zip(rois, given_x, user_pairs_lps))]
    if any(p.accepted for p in pairs):
        prior = update_prior(fixed, moving, [p for p in pairs if p.accepted], prior)
    user_rois = rois[len(given_x):]
    user_prompts = list(points_lps) + [np.asarray(b).reshape(2, -1).mean(0) for b in boxes_lps]
    for index, (roi_x, prompt) in enumerate(zip(user_rois, user_prompts)):
        report("inverse prompting", index / max(1, len(user_rois) + auto_pairs))
        pairs.append(make_pair(roi_x, prompt, "user", f"Prompt {index + 1}"))

    agree_on_size(pairs, options)
    accepted = [p for p in pairs if p.accepted]
    if accepted:  # the user's pairs tell where to look for the sampled ones
        prior = update_prior(fixed, moving, accepted, prior)
    source = "auto"
    if pairs and not accepted and auto_pairs == 0 and options.auto_pairs is None and options.fallback_auto_pairs > 0:
        source, auto_pairs = "fallback", options.fallback_auto_pairs  # something sensible rather than nothing
    if auto_pairs > 0:
        held = np.zeros(fixed.shape, dtype=bool)
        for pair in pairs:
            held |= pair.roi_x.mask
        samples = sample_prompts(fixed, auto_pairs, held, rng)
        auto_rois = segment_prompts(fixed, samples, clicked=False)
        for index, (roi_x, prompt) in enumerate(zip(auto_rois, samples)):
            report("inverse prompting", (len(user_rois) + index) / max(1, len(user_rois) + auto_pairs))
            if not roi_x.mask.any() or any(dice(roi_x.mask, p.roi_x.mask) > options.duplicate_dice for p in pairs):
                continue
            pairs.append(make_pair(roi_x, prompt, source, f"Auto {index + 1}"))
    agree_on_size(pairs, options)
    return deduplicate(pairs, options)


def given_pair(fixed: View, moving: View, roi_x: ROI, prompt_x_lps: np.ndarray, prompt_y_lps: np.ndarray,
               name: str) -> ROIPair:
    """A pair whose Prompt Y the user gave: used unless the model finds no region at either prompt."""
    if not roi_x.mask.any():
        return pair_without_roi_x(name, roi_x, moving, prompt_x_lps, "user pair")
    result = prompt_pair(fixed, moving, roi_x, prompt_y_lps)
    pair = ROIPair(name, roi_x, result.roi_y, prompt_x_lps, np.asarray(prompt_y_lps, dtype=float), "user pair",
                   result.quality)
    if not result.roi_y.mask.any():
        pair.accepted, pair.rejected_because = False, "no ROI Y: the model found no region at the given Prompt Y"
    return pair


def update_prior(fixed: View, moving: View, pairs: list[ROIPair], prior: AffinePrior | None = None) -> AffinePrior:
    """Affine prior from the centroids of accepted pairs, ridge-regularised towards ``prior``'s matrix (a turn found
    by :mod:`.orientation`, else the identity): one pair moves it, several may bend it."""
    matrix = prior.matrix if prior is not None else np.eye(fixed.image.dimension)
    fixed_centroids = np.array([fixed.centroid_lps(p.roi_x.mask) for p in pairs])
    moving_centroids = np.array([moving.centroid_lps(p.roi_y.mask) for p in pairs])
    if len(pairs) == 1:  # one pair fixes a shift, nothing more
        return AffinePrior(matrix, moving_centroids[0] - matrix @ fixed_centroids[0])
    matrix, offset = closed_form_affine(fixed_centroids, moving_centroids, np.ones(len(pairs)), ridge=1.0,
                                        reference=matrix)
    return AffinePrior(matrix, offset)


def initial_prior(fixed: View, moving: View) -> AffinePrior:
    """Identity when the two images overlap in physical space, else a shift aligning their centres; photographs of
    other pixel sizes: their pixel grids scaled onto each other about the centres (see make_views)."""
    dimension = fixed.image.dimension
    fixed_centre, moving_centre = fixed.image.physical_center(), moving.image.physical_center()
    scale = moving.unit_mm / fixed.unit_mm
    if scale != 1.0:
        return AffinePrior(scale * np.eye(dimension), moving_centre - scale * fixed_centre)
    fixed_extent = np.abs(fixed.image.direction @ (fixed.image.spacing * np.array(fixed.image.size)))
    if np.all(np.abs(moving_centre - fixed_centre) < fixed_extent / 2):
        return AffinePrior.identity(dimension)
    return AffinePrior(np.eye(dimension), moving_centre - fixed_centre)


def deduplicate(pairs: list[ROIPair], options: PairOptions) -> list[ROIPair]:
    """Reject later pairs that repeat an accepted one in both images; keep at most ``max_pairs`` accepted."""
    kept = []
    for pair in pairs:
        if not pair.accepted:
            continue
        for other in kept:
            if (dice(pair.roi_x.mask, other.roi_x.mask) > options.duplicate_dice
                    and dice(pair.roi_y.mask, other.roi_y.mask) > options.duplicate_dice):
                pair.accepted, pair.rejected_because = False, f"duplicate of {other.name}"
                break
        else:
            if len(kept) >= options.max_pairs:
                pair.accepted, pair.rejected_because = False, f"more than {options.max_pairs} pairs"
            else:
                kept.append(pair)
    return pairs
