"""Marginalisation: many ROI pairs from user prompts, sampled prompts and small spatial warps.

* prompt space — besides the user's clicks, clicks are sampled over the fixed image's foreground
  (farthest-point sampling, so they spread out); a sample inside an ROI already held is skipped;
* spatial space — the fixed slice is warped by small random affines W, segmented again with W(prompt),
  and mapped back with W⁻¹; an ROI X that changes much across warps is unstable and dropped;
* quality gates on every pair, then near-duplicates (high overlap in both images) merged, at most K kept.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .inverse import AffinePrior, InverseOptions, centroid_lps, inverse_prompt, stack_points_lps
from .segment import ROI, dice, mask_box, segment_boxes, segment_points
from .volume import SliceStack


@dataclass
class PairOptions:
    auto_pairs: int | None = None       # sampled prompts on top of the user's (None: 6 for 2D, 0 for 3D)
    warps: int | None = None            # spatial perturbations per ROI (None: 2 for 2D, 0 for 3D — see docs)
    warp_rotation_deg: float = 5.0
    warp_scale: float = 0.05
    warp_shift_px: float = 3.0
    min_warp_stability: float = 0.8     # mean Dice of ROI X across warps
    min_iou: float = 0.75               # predicted IoU of ROI Y
    min_prototype_cosine: float = 0.6     # same-modality pairs score > 0.9; CT↔MR about 0.6–0.8
    size_ratio_range: tuple[float, float] = (0.75, 1.33)
    duplicate_dice: float = 0.8
    max_pairs: int = 24
    seed: int = 0
    inverse: InverseOptions = field(default_factory=InverseOptions)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ROIPair:
    name: str
    roi_x: ROI
    roi_y: ROI
    prompt_x_lps: np.ndarray
    prompt_y_lps: np.ndarray
    source: str                         # "user" or "auto"
    quality: dict
    accepted: bool = True
    rejected_because: str = ""


def foreground_mask(stack: SliceStack) -> np.ndarray:
    """Voxels brighter than the image's mean in [0, 1] window units, slightly eroded — where anatomy is."""
    return stack.slices01 > max(0.1, float(stack.slices01.mean()) * 0.5)


def sample_prompts(stack: SliceStack, count: int, exclude: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Farthest-point sampled stack indices (slice, row, column) in the foreground, outside ``exclude``."""
    candidates = np.argwhere(foreground_mask(stack) & ~exclude)
    if len(candidates) == 0 or count <= 0:
        return []
    spacing = stack.stack_spacing()
    candidates = candidates[rng.choice(len(candidates), min(len(candidates), 4000), replace=False)]
    physical = candidates * spacing
    chosen = [int(rng.integers(len(candidates)))]
    distance = np.linalg.norm(physical - physical[chosen[0]], axis=1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(physical - physical[chosen[-1]], axis=1))
    return [candidates[i].astype(float) for i in chosen]


def _warp_matrix(rng: np.random.Generator, options: PairOptions, shape: tuple[int, int]) -> np.ndarray:
    """A small random affine on pixel indices (x, y), about the slice centre, as a 3×3 matrix."""
    angle = np.deg2rad(rng.uniform(-options.warp_rotation_deg, options.warp_rotation_deg))
    scale = 1.0 + rng.uniform(-options.warp_scale, options.warp_scale)
    shift = rng.uniform(-options.warp_shift_px, options.warp_shift_px, size=2)
    centre = np.array([(shape[1] - 1) / 2, (shape[0] - 1) / 2])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.eye(3)
    matrix[:2, :2] = rotation
    matrix[:2, 2] = centre - rotation @ centre + shift
    return matrix


def _apply_warp(image: np.ndarray, matrix: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """Resample a 2D array so that output(p) = input(matrix⁻¹ p) (p as pixel (x, y))."""
    rows, cols = image.shape
    inverse = np.linalg.inv(matrix)
    ys, xs = np.mgrid[0:rows, 0:cols].astype(float)
    source = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    mapped = (inverse @ source)[:2]
    grid = np.stack([mapped[0] / max(cols - 1, 1) * 2 - 1, mapped[1] / max(rows - 1, 1) * 2 - 1], axis=-1)
    grid = torch.as_tensor(grid.reshape(1, rows, cols, 2), dtype=torch.float32)
    sampled = F.grid_sample(torch.as_tensor(image, dtype=torch.float32)[None, None], grid, mode=mode,
                            padding_mode="zeros", align_corners=True)
    return sampled[0, 0].numpy()


def warp_stability(stack: SliceStack, roi: ROI, warps: int, options: PairOptions, rng: np.random.Generator) -> float:
    """Mean Dice between ROI X's seed-slice mask and its re-segmentation under small warps (mapped back)."""
    k = roi.seed_slice
    original = roi.mask[k]
    box = mask_box(original)
    if box is None or warps <= 0:
        return 1.0 if warps <= 0 else 0.0
    scores = []
    for _ in range(warps):
        matrix = _warp_matrix(rng, options, original.shape)
        warped_slice = _apply_warp(stack.slices01[k], matrix)
        embedding = stack.model.encode([warped_slice], stack.pixel_spacing)[0]
        corners = np.array([[box[0], box[1], 1], [box[2], box[1], 1], [box[0], box[3], 1], [box[2], box[3], 1]])
        moved = (matrix @ corners.T)[:2].T
        warped_box = np.array([*moved.min(0), *moved.max(0)])
        logits, _ = stack.model.decode([embedding], boxes_xy=warped_box[None])
        back = _apply_warp((logits[0] > 0).numpy().astype(np.float32), np.linalg.inv(matrix)) > 0.5
        scores.append(dice(back, original))
    return float(np.mean(scores))


def pair_without_roi_x(name: str, roi_x: ROI, moving: SliceStack, prompt_x_lps: np.ndarray, source: str) -> ROIPair:
    """The rejected pair of a prompt where the model found no region (nothing to invert)."""
    empty = ROI(np.zeros(moving.shape, dtype=bool), {}, 0, np.zeros(4))
    return ROIPair(name, roi_x, empty, np.asarray(prompt_x_lps, dtype=float), np.zeros(moving.image.dimension),
                   source, {"iou_x": roi_x.iou, "iou_y": 0.0}, False,
                   "no ROI X: the model found no region at this prompt")


def gate(pair: ROIPair, options: PairOptions) -> str:
    """Why a pair is rejected ('' if it passes)."""
    q = pair.quality
    low, high = options.size_ratio_range
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
    if not low <= q["size_ratio"] <= high:
        return f"size ratio {q['size_ratio']:.2f} outside [{low}, {high}]"
    return ""


def find_pairs(fixed: SliceStack, moving: SliceStack, points_lps: list[np.ndarray], boxes_lps: list[np.ndarray],
               prior: AffinePrior, options: PairOptions | None = None, progress=None, cancel=None) -> list[ROIPair]:
    """All ROI pairs, user prompts first; each carries its quality and whether (and why not) it is used."""
    from .errors import Cancelled

    options = options or PairOptions()
    rng = np.random.default_rng(options.seed)
    planar = fixed.shape[0] == 1
    # Measured on ctchest4 (3D, LiteMedSAM): sampled slice-propagated ROIs disagree in extent between the
    # images and raise TRE (3.9 → 7.0 mm); warps cost a re-encode per slice. Both default on in 2D only.
    warps = options.warps if options.warps is not None else (2 if planar else 0)
    auto_pairs = options.auto_pairs if options.auto_pairs is not None else (6 if planar else 0)
    report = progress or (lambda stage, fraction: None)
    fixed_points, moving_points = stack_points_lps(fixed), stack_points_lps(moving)

    def make_pair(roi_x: ROI, prompt_x_lps: np.ndarray, source: str, name: str) -> ROIPair:
        if cancel and cancel():
            raise Cancelled("registration cancelled")
        if not roi_x.mask.any():  # e.g. a click in air
            return pair_without_roi_x(name, roi_x, moving, prompt_x_lps, source)
        result = inverse_prompt(fixed, moving, roi_x, prior, options.inverse, fixed_points, moving_points)
        if warps:
            result.quality["warp_stability"] = warp_stability(fixed, roi_x, warps, options, rng)
        prompt_y = moving.image.index_to_lps(moving.stack_index_to_image(result.prompt_y_stack[None]))[0]
        pair = ROIPair(name, roi_x, result.roi_y, np.asarray(prompt_x_lps, dtype=float), prompt_y, source,
                       result.quality)
        pair.rejected_because = gate(pair, options)
        pair.accepted = not pair.rejected_because
        return pair

    report("segmenting Prompt X", 0.0)
    user_rois = segment_points(fixed, points_lps) + segment_boxes(fixed, boxes_lps)
    user_prompts = list(points_lps) + [np.asarray(b).reshape(2, -1).mean(0) for b in boxes_lps]
    pairs = []
    for index, (roi_x, prompt) in enumerate(zip(user_rois, user_prompts)):
        report("inverse prompting", index / max(1, len(user_rois) + auto_pairs))
        pairs.append(make_pair(roi_x, prompt, "user", f"Prompt {index + 1}"))

    accepted = [p for p in pairs if p.accepted]
    if accepted:  # the user's pairs tell where to look for the sampled ones
        prior = update_prior(fixed, moving, accepted)
    if auto_pairs > 0:
        held = np.zeros(fixed.shape, dtype=bool)
        for pair in pairs:
            held |= pair.roi_x.mask
        samples = sample_prompts(fixed, auto_pairs, held, rng)
        sample_lps = [fixed.image.index_to_lps(fixed.stack_index_to_image(s[None]))[0] for s in samples]
        auto_rois = segment_points(fixed, sample_lps) if sample_lps else []
        for index, (roi_x, prompt) in enumerate(zip(auto_rois, sample_lps)):
            report("inverse prompting", (len(user_rois) + index) / max(1, len(user_rois) + auto_pairs))
            if not roi_x.mask.any() or any(dice(roi_x.mask, p.roi_x.mask) > options.duplicate_dice for p in pairs):
                continue
            pairs.append(make_pair(roi_x, prompt, "auto", f"Auto {index + 1}"))
    return deduplicate(pairs, options)


def update_prior(fixed: SliceStack, moving: SliceStack, pairs: list[ROIPair]) -> AffinePrior:
    """Affine prior from the centroids of accepted pairs (ridge-regularised towards a translation)."""
    from .fit import closed_form_affine

    fixed_centroids = np.array([centroid_lps(fixed, p.roi_x.mask) for p in pairs])
    moving_centroids = np.array([centroid_lps(moving, p.roi_y.mask) for p in pairs])
    matrix, offset = closed_form_affine(fixed_centroids, moving_centroids, np.ones(len(pairs)), ridge=1.0)
    return AffinePrior(matrix, offset)


def initial_prior(fixed: SliceStack, moving: SliceStack) -> AffinePrior:
    """Identity when the two images overlap in physical space, else a shift aligning their centres."""
    dimension = fixed.image.dimension
    fixed_centre, moving_centre = fixed.image.physical_center(), moving.image.physical_center()
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
