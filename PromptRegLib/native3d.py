"""Native-3D prompting (SAM-Med3D): a click → ROI X on a cube, inverse prompting → ROI Y, and the pairs.

The same method as the slice path (§2 of the design), on cubes with an 8×8×8 feature grid:
1. ROI X: a cube centred on the click, the click decoded as a positive point.
2. Prototypes of ROI X and of a shell around it (masked means over the 8³ grid, the mask's coverage of
   each cell as its weight).
3. Contrast map over a cube of the moving image centred where the prior expects ROI X; the 8³ similarity is
   interpolated trilinearly to cube voxels (sub-cell peaks) and weighted by the spatial prior. If the best
   peak lies near the cube's edge the cube slides there once and the map is recomputed.
4. Several separate peaks are decoded as points; the candidate whose ROI resembles ROI X most (prototype
   cosine × predicted IoU) is refined once with its own mask as mask prompt and kept.
5. Quality as for the slice path, including the cycle check (ROI Y's prototypes searched in the fixed cube).
Masks live on the slice-stack grid like every other ROI, so fitting, outputs and the figure are shared.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .cube import CubeCrop
from .errors import Cancelled, InputImageError, PromptError
from .inverse import AffinePrior, InverseOptions, centroid_lps, largest_section_mm2, prior_weight, separate_peaks, \
    volume_mm3
from .pairs import PairOptions, ROIPair, deduplicate, gate, pair_without_roi_x, sample_prompts, update_prior
from .segment import ROI, clean_mask, dice, mask_box, prompt_to_stack
from .volume import SliceStack

#: cube voxels from the centre beyond which a peak makes the search cube slide to it
SLIDE_BEYOND_VOXELS = 40
SHELL_VOXELS = 6


@dataclass
class CubeView:
    """One encoded cube of an image."""

    crop: CubeCrop
    features: torch.Tensor            # (C, g, g, g)
    inside_image: np.ndarray          # (S, S, S) bool: cube voxels that lie inside the image


def encode_cube(model, stack: SliceStack, centre_lps: np.ndarray) -> CubeView:
    image = stack.image
    crop = CubeCrop.around(image, centre_lps, model.spacing_mm, model.cube_size)
    cube = crop.sample(np.asarray(image.array, dtype=np.float32))
    axis = np.arange(crop.size, dtype=float)
    positions = [crop.centre_index[a] + (axis - crop.half) * crop.step_index[a] for a in range(3)]
    inside = [(p > -0.5) & (p < image.size[a] - 0.5) for a, p in enumerate(positions)]
    inside_image = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return CubeView(crop, model.encode(cube), inside_image)


def cube_prototype(view: CubeView, mask_cube: np.ndarray) -> torch.Tensor:
    """Unit prototype (C,) of a cube region: unit features weighted by the region's coverage of each cell."""
    grid = view.features.shape[-1]
    weights = F.adaptive_avg_pool3d(torch.as_tensor(mask_cube, dtype=torch.float32)[None, None], grid)[0, 0]
    if float(weights.sum()) == 0:
        raise ValueError("empty region has no prototype")
    return F.normalize((F.normalize(view.features.float(), dim=0) * weights).sum(dim=(1, 2, 3)), dim=0)


def cube_similarity(view: CubeView, unit_prototype: torch.Tensor) -> np.ndarray:
    """Cosine similarity at every cube voxel (trilinear between feature cells, so peaks are sub-cell)."""
    grid = torch.einsum("c,cdhw->dhw", unit_prototype, F.normalize(view.features.float(), dim=0))
    size = view.crop.size
    return F.interpolate(grid[None, None], size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy()


def shell(mask_cube: np.ndarray, width: int = SHELL_VOXELS) -> np.ndarray:
    grown = F.max_pool3d(torch.as_tensor(mask_cube, dtype=torch.float32)[None, None], 2 * width + 1, stride=1,
                         padding=width)[0, 0].numpy() > 0
    return grown & ~mask_cube


def contrast(source: CubeView, mask_cube: np.ndarray, target: CubeView) -> np.ndarray:
    """Similarity of target cube voxels to the region minus that to its shell; -inf outside the image."""
    score = cube_similarity(target, cube_prototype(source, mask_cube))
    around = shell(mask_cube)
    if around.any():
        score = score - cube_similarity(target, cube_prototype(source, around))
    return np.where(target.inside_image, score, -np.inf)


def cube_points_lps(stack: SliceStack, crop: CubeCrop, stride: int = 4) -> np.ndarray:
    """Physical positions of every ``stride``-th cube voxel, (S/stride,)*3 + (3,)."""
    axis = np.arange(0, crop.size, stride, dtype=float)
    grids = np.meshgrid(axis, axis, axis, indexing="ij")
    index = crop.cube_to_index(np.stack([g.ravel() for g in grids], axis=1))
    return stack.image.index_to_lps(index).reshape(*grids[0].shape, 3)


def weighted_contrast(stack: SliceStack, score: np.ndarray, crop: CubeCrop, expected_lps: np.ndarray,
                      sigma_mm: float) -> np.ndarray:
    """Contrast shifted to be positive, times the spatial prior around ``expected_lps``."""
    stride = 4
    coarse = prior_weight(cube_points_lps(stack, crop, stride), expected_lps, sigma_mm)
    weight = F.interpolate(torch.as_tensor(coarse, dtype=torch.float32)[None, None], size=score.shape,
                           mode="trilinear", align_corners=False)[0, 0].numpy()
    finite = np.isfinite(score)
    floor = score[finite].min() if finite.any() else 0.0
    return np.where(finite, (score - floor) * weight, -np.inf)


def refine_peak(weighted: np.ndarray, peak: tuple[int, int, int], radius: int) -> np.ndarray:
    """Sub-cell position of a peak: the centre of mass of the score above 70 % of the peak within ``radius``.

    Trilinear interpolation alone puts every maximum on a feature-cell centre; this moves it between cells
    when neighbouring cells match almost equally well.
    """
    low = [max(0, p - radius) for p in peak]
    high = [min(n, p + radius + 1) for p, n in zip(peak, weighted.shape)]
    window = weighted[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
    mass = np.clip(np.nan_to_num(window, neginf=0.0) - 0.7 * weighted[peak], 0.0, None)
    if mass.sum() <= 0:
        return np.array(peak, dtype=float)
    coordinates = np.indices(window.shape).reshape(3, -1) + np.array(low)[:, None]
    return (coordinates * mass.ravel()).sum(axis=1) / mass.sum()


def cube_mask_to_stack(stack: SliceStack, view: CubeView, logits: torch.Tensor) -> np.ndarray:
    """Cube logits → a cleaned boolean mask on the stack grid (largest component, holes filled)."""
    image_logits = view.crop.to_image(logits.numpy(), stack.image.array.shape, outside=-20.0)
    mask = clean_mask(image_logits > 0) if np.any(image_logits > 0) else np.zeros(image_logits.shape, dtype=bool)
    return stack.image_to_stack_array(mask)


def _roi(stack: SliceStack, mask_stack: np.ndarray, iou: float, seed_slice: int, info: dict) -> ROI:
    box = mask_box(mask_stack[seed_slice])
    return ROI(mask_stack, {seed_slice: float(iou)}, seed_slice, box if box is not None else np.zeros(4), info)


def segment_point(model, stack: SliceStack, point_lps: np.ndarray) -> tuple[ROI, CubeView, np.ndarray]:
    """A click → (ROI X on the stack grid, its encoded cube, its mask on the cube)."""
    seed_slice = int(round(prompt_to_stack(stack, point_lps)[0]))
    view = encode_cube(model, stack, point_lps)
    point_cube = view.crop.index_to_cube(stack.image.lps_to_index(np.asarray(point_lps, dtype=float)[None]))
    logits, iou = model.decode(view.features, point_cube[None], np.ones((1, 1)))
    mask_stack = cube_mask_to_stack(stack, view, logits[0])
    return _roi(stack, mask_stack, iou[0], seed_slice, {"native_3d": True}), view, logits[0].numpy() > 0


def segment_points_native(model, stack: SliceStack, points_lps: list[np.ndarray], boxes_lps: list[np.ndarray] = (),
                          progress=None) -> list[ROI]:
    """One ROI per click on a 3D image (the ``promptreg segment`` path for native-3D models)."""
    if boxes_lps:
        raise PromptError(f"{model.name} takes point prompts only; give --prompt points instead of boxes.")
    if stack.image.dimension != 3:
        raise InputImageError(f"{model.name} is a 3D model; {stack.image.source} is 2D.")
    rois = []
    for index, point in enumerate(points_lps):
        if progress:
            progress("segmenting cubes", index / max(1, len(points_lps)))
        rois.append(segment_point(model, stack, point)[0])
    return rois


def _cube_point_to_stack(stack: SliceStack, crop: CubeCrop, point_cube) -> np.ndarray:
    return stack.image_index_to_stack(crop.cube_to_index(np.asarray(point_cube, dtype=float)[None]))[0]


def search(model, fixed: SliceStack, moving: SliceStack, view_x: CubeView, mask_x: np.ndarray,
           expected_lps: np.ndarray, sigma_mm: float) -> tuple[CubeView, np.ndarray, np.ndarray]:
    """Encode the moving cube around ``expected_lps`` (sliding once towards a peak near its edge)."""
    view_y = encode_cube(model, moving, expected_lps)
    score = contrast(view_x, mask_x, view_y)
    weighted = weighted_contrast(moving, score, view_y.crop, expected_lps, sigma_mm)
    peak = np.array(np.unravel_index(int(np.argmax(weighted)), weighted.shape), dtype=float)
    if np.abs(peak - view_y.crop.half).max() > SLIDE_BEYOND_VOXELS:
        centre_lps = moving.image.index_to_lps(view_y.crop.cube_to_index(peak[None]))[0]
        view_y = encode_cube(model, moving, centre_lps)
        score = contrast(view_x, mask_x, view_y)
        weighted = weighted_contrast(moving, score, view_y.crop, expected_lps, sigma_mm)
    return view_y, score, weighted


def inverse_prompt_3d(model, fixed: SliceStack, moving: SliceStack, roi_x: ROI, view_x: CubeView,
                      mask_x: np.ndarray, prior: AffinePrior, options: InverseOptions):
    """ROI X (with its cube) → (ROI Y, Prompt Y as a stack index, quality)."""
    expected = prior.forward(centroid_lps(fixed, roi_x.mask))[0]
    view_y, score, weighted = search(model, fixed, moving, view_x, mask_x, expected, options.search_radius_mm)
    cell = view_y.crop.size // view_y.features.shape[-1]
    peaks = separate_peaks(weighted, options.candidates, np.full(3, cell))
    if not peaks:
        empty = ROI(np.zeros(moving.shape, dtype=bool), {}, 0, np.zeros(4))
        return empty, np.zeros(3), {"iou_x": roi_x.iou, "iou_y": 0.0, "prototype_cosine": -1.0, "size_ratio": 0.0,
                                    "cycle_ok": False, "cycle_distance_mm": float("inf"), "candidates": 0}
    p_x = cube_prototype(view_x, mask_x)
    points = np.array([refine_peak(weighted, peak, cell) for peak in peaks])[:, None]
    logits, iou = model.decode(view_y.features, points, np.ones((len(peaks), 1)))
    resemblance = np.array([float(cube_prototype(view_y, (lg > 0).numpy()) @ p_x) if (lg > 0).any() else -1.0
                            for lg in logits])
    choice = int(np.argmax(resemblance * iou))
    refined, refined_iou = model.decode(view_y.features, points[choice][None], np.ones((1, 1)), logits[choice][None])
    if refined_iou[0] > iou[choice] and (refined[0] > 0).any():   # the auxiliary mask prompt helped
        logits_y, iou_y = refined[0], float(refined_iou[0])
    else:
        logits_y, iou_y = logits[choice], float(iou[choice])
    mask_y = logits_y.numpy() > 0
    prompt_y = _cube_point_to_stack(moving, view_y.crop, points[choice, 0])
    roi_y = _roi(moving, cube_mask_to_stack(moving, view_y, logits_y), iou_y,
                 int(np.clip(round(prompt_y[0]), 0, moving.shape[0] - 1)), {"native_3d": True})

    quality = {"iou_x": roi_x.iou, "iou_y": roi_y.iou, "peak": float(score[peaks[choice]]),
               "candidates": len(peaks), "chosen_candidate": choice, "resemblance": float(resemblance[choice])}
    outside = ~mask_y & np.isfinite(score)
    quality["peak_margin"] = float(score[peaks[choice]] - (score[outside].max() if outside.any() else -1.0))
    if roi_y.mask.any() and mask_y.any():
        quality["prototype_cosine"] = float(cube_prototype(view_y, mask_y) @ p_x)
        quality["size_ratio"] = largest_section_mm2(moving, roi_y.mask) / max(largest_section_mm2(fixed, roi_x.mask),
                                                                              1e-9)
        quality["volume_ratio"] = volume_mm3(moving, roi_y.mask) / max(volume_mm3(fixed, roi_x.mask), 1e-9)
        quality["cycle_ok"], quality["cycle_distance_mm"] = cycle_check_3d(fixed, moving, roi_x, roi_y, view_x, mask_x,
                                                                            view_y, mask_y, prior, options)
    else:
        quality.update(prototype_cosine=-1.0, size_ratio=0.0, cycle_ok=False, cycle_distance_mm=float("inf"))
    return roi_y, prompt_y, quality


def cycle_check_3d(fixed: SliceStack, moving: SliceStack, roi_x: ROI, roi_y: ROI, view_x: CubeView,
                   mask_x: np.ndarray, view_y: CubeView, mask_y: np.ndarray, prior: AffinePrior,
                   options: InverseOptions) -> tuple[bool, float]:
    """ROI Y searched back in the fixed cube: does the prior-weighted peak land inside (a grown) ROI X?"""
    score = contrast(view_y, mask_y, view_x)
    expected = prior.inverse().forward(centroid_lps(moving, roi_y.mask))[0]
    weighted = weighted_contrast(fixed, score, view_x.crop, expected, options.search_radius_mm)
    peak = np.unravel_index(int(np.argmax(weighted)), weighted.shape)
    width = options.cycle_tolerance_px
    grown = F.max_pool3d(torch.as_tensor(mask_x, dtype=torch.float32)[None, None], 2 * width + 1, stride=1,
                         padding=width)[0, 0].numpy() > 0
    peak_lps = fixed.image.index_to_lps(view_x.crop.cube_to_index(np.array(peak, dtype=float)[None]))[0]
    return bool(grown[peak]), float(np.linalg.norm(peak_lps - centroid_lps(fixed, roi_x.mask)))


def find_native_pairs(model, fixed: SliceStack, moving: SliceStack, points_lps: list[np.ndarray],
                      boxes_lps: list[np.ndarray], prior: AffinePrior, options: PairOptions | None = None,
                      progress=None, cancel=None) -> list[ROIPair]:
    """ROI pairs from the user's clicks (and ``auto_pairs`` sampled ones) with a native-3D model."""
    if boxes_lps:
        raise PromptError(f"{model.name} takes point prompts only; give --prompt points instead of boxes.")
    options = options or PairOptions()
    report = progress or (lambda stage, fraction: None)
    auto_pairs = options.auto_pairs or 0
    total = max(1, len(points_lps) + auto_pairs)

    def segment(point_lps, index: int):
        if cancel and cancel():
            raise Cancelled("registration cancelled")
        report("inverse prompting", index / total)
        return segment_point(model, fixed, point_lps)

    def make_pair(segmented, point_lps, source: str, name: str) -> ROIPair:
        roi_x, view_x, mask_x = segmented
        if not mask_x.any() or not roi_x.mask.any():
            return pair_without_roi_x(name, roi_x, moving, point_lps, source)
        roi_y, prompt_y_stack, quality = inverse_prompt_3d(model, fixed, moving, roi_x, view_x, mask_x, prior,
                                                          options.inverse)
        prompt_y = moving.image.index_to_lps(moving.stack_index_to_image(prompt_y_stack[None]))[0]
        pair = ROIPair(name, roi_x, roi_y, np.asarray(point_lps, dtype=float), prompt_y, source, quality)
        pair.rejected_because = gate(pair, options)
        pair.accepted = not pair.rejected_because
        return pair

    pairs = [make_pair(segment(p, i), p, "user", f"Prompt {i + 1}") for i, p in enumerate(points_lps)]
    accepted = [p for p in pairs if p.accepted]
    if accepted:
        prior = update_prior(fixed, moving, accepted)
    if auto_pairs > 0:
        held = np.zeros(fixed.shape, dtype=bool)
        for pair in pairs:
            held |= pair.roi_x.mask
        samples = sample_prompts(fixed, auto_pairs, held, np.random.default_rng(options.seed))
        for index, sample in enumerate(samples):
            point = fixed.image.index_to_lps(fixed.stack_index_to_image(sample[None]))[0]
            segmented = segment(point, len(points_lps) + index)
            roi_x = segmented[0]
            if not roi_x.mask.any() or any(dice(roi_x.mask, p.roi_x.mask) > options.duplicate_dice for p in pairs):
                continue  # as in the slice path: no inverse prompting for an empty or repeated ROI X
            pairs.append(make_pair(segmented, point, "auto", f"Auto {index + 1}"))
    return deduplicate(pairs, options)
