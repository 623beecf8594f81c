"""``promptreg bench`` and the demo: PromptReg and intensity-based peers on the shared pairs, one run.

A case is a small JSON file (``PromptRegLib/cases/*.json``; paths relative to the data folder):
``fixed``, ``moving``, optional ``fixed_labels``/``moving_labels`` with ``labels`` {value: name} to score,
``truth_transform`` (ITK, fixed → moving), or landmarks in pixels (x = column, y = row): ``landmarks_csv``
(id,fixed_x,fixed_y,moving_x,moving_y) or ``landmarks_homography`` (an OpenCV FileStorage 3×3 matrix mapping fixed
pixels to moving pixels, sampled on a ``landmark_grid`` of columns × rows over the fixed image); ``prompts_ras``
(clicks on the fixed image) with ``prompt_names`` and ``prompt_source``; and flags ``demo``/``quick``. A case may
say ``"derived_from": "<case>"`` to take every field of that case but its name, description and flags, and
``"resample_spacing": [mm, ...]`` to register its images resampled onto that spacing over the same physical space
(linear for images, nearest for labels; written once into the bench work folder and reused). Add a file to add a case.

Each (case, method) runs in its own process so wall time and peak memory are the method's own; a run that crashes,
passes its time limit or its memory cap becomes an error row saying so, and the bench goes on.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import resource
import signal
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ...errors import InputImageError, PromptRegError
from ...core.image import lps_to_ras, ras_to_lps
from ..progress import ProgressBar

DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_AUTO_PAIRS = 8
DEFAULT_CLICK_SETS = 5
CLICK_MARGIN_MM = 5.0   # drawn clicks lie at least this deep inside their structure (less where it is thinner)
CLICK_SEED = 20260401
POLL_S = 0.1
NOT_INHERITED = ("name", "description", "derived_from", "demo", "quick")


# --- cases -------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    data_dir: Path
    fixed: str
    moving: str
    prompts_ras: list
    description: str = ""
    fixed_labels: str | None = None
    moving_labels: str | None = None
    labels: dict = field(default_factory=dict)
    truth_transform: str | None = None
    landmarks_csv: str | None = None
    landmarks_homography: str | None = None
    landmark_grid: list = field(default_factory=lambda: [10, 8])
    prompt_names: list = field(default_factory=list)
    auto_pairs: int | None = None
    multimodal: bool = False
    prompt_source: str = ""
    derived_from: str | None = None
    resample_spacing: list | None = None
    moving_rotation_deg: float | None = None
    demo: bool = False
    quick: bool = False

    def path(self, relative: str | None) -> str | None:
        """A case file's path: relative to the data folder, or absolute (files the bench derived)."""
        return None if relative is None else str(self.data_dir / relative)

    @property
    def has_landmarks(self) -> bool:
        return bool(self.landmarks_csv or self.landmarks_homography)


def _resolve_derived(fields: dict, by_name: dict[str, dict], seen: tuple[str, ...] = ()) -> dict:
    """A derived case's fields: its base case's (recursively), less name/description/flags, overridden by its own."""
    base_name = fields.get("derived_from")
    if base_name is None:
        return fields
    if base_name not in by_name or base_name in seen:
        raise InputImageError(f"bench case {fields['name']!r}: derived_from names {base_name!r}, which is not a "
                              "case (or derives from this one).")
    base = _resolve_derived(by_name[base_name], by_name, seen + (fields["name"],))
    return {**{k: v for k, v in base.items() if k not in NOT_INHERITED}, **fields}


def load_cases(data_dir: str | Path, extra_dir: str | Path | None = None) -> list[Case]:
    """Cases whose files exist under ``data_dir`` (the shipped ones, plus any JSON in ``extra_dir``)."""
    data_dir = Path(data_dir)
    files = sorted(resources.files("PromptRegLib.apps.bench.cases").iterdir(), key=lambda f: f.name)
    if extra_dir:
        files += sorted(Path(extra_dir).glob("*.json"))
    all_fields = [json.loads(f.read_text()) for f in files if f.name.endswith(".json")]
    by_name = {fields["name"]: fields for fields in all_fields}
    cases = []
    for fields in all_fields:
        case = Case(data_dir=data_dir, **_resolve_derived(fields, by_name))
        if Path(case.path(case.fixed)).is_file() and Path(case.path(case.moving)).is_file():
            cases.append(case)
    return cases


# --- resampled cases ---------------------------------------------------------------------------------------
def grid_for_spacing(image: sitk.Image, spacing) -> tuple[list[int], list[float]]:
    """Size and origin of a grid of ``spacing`` (same direction) covering ``image``'s physical box: same centre,
    each side within half a new voxel of the original."""
    spacing = np.asarray(spacing, dtype=float)
    old_spacing, old_size = np.array(image.GetSpacing()), np.array(image.GetSize())
    if spacing.size != old_size.size or np.any(spacing <= 0):
        raise InputImageError(f"resample_spacing {spacing.tolist()} does not fit a {old_size.size}D image.")
    size = np.maximum(1, np.round(old_size * old_spacing / spacing)).astype(int)
    direction = np.array(image.GetDirection()).reshape(old_size.size, old_size.size)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(((old_size - 1) / 2).tolist()))
    origin = centre - direction @ ((size - 1) / 2 * spacing)
    return size.tolist(), origin.tolist()


def resample_to_spacing(image: sitk.Image, spacing, interpolator: int) -> sitk.Image:
    """``image`` on the :func:`grid_for_spacing` grid, in its own pixel type; outside values: its minimum."""
    size, origin = grid_for_spacing(image, spacing)
    outside = 0.0 if interpolator == sitk.sitkNearestNeighbor else float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(image, size, sitk.Transform(), interpolator, origin, [float(v) for v in spacing],
                         image.GetDirection(), outside, image.GetPixelID())


def moving_rotation(image: sitk.Image, degrees: float) -> sitk.Transform:
    """A rotation by ``degrees`` about the S axis through ``image``'s centre (3D), or about its centre (2D)."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    if image.GetDimension() == 2:
        return sitk.Euler2DTransform(centre, np.deg2rad(degrees))
    return sitk.Euler3DTransform(centre, 0.0, 0.0, np.deg2rad(degrees))


def rotate_physically(image: sitk.Image, rotation: sitk.Transform, interpolator: int) -> sitk.Image:
    """The anatomy turned by ``rotation`` in physical space, on the image's own grid (a re-stored copy would keep
    it where it was): the new image at r holds the old one at rotation⁻¹(r)."""
    outside = 0.0 if interpolator == sitk.sitkNearestNeighbor else float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(image, image, rotation.GetInverse(), interpolator, outside, image.GetPixelID())


def prepare_case(case: Case, work_dir: str | Path) -> Case:
    """``case`` itself, or a copy reading derived files from ``work_dir/<case>/`` (made once; reused while the
    sources and the derivation are unchanged): with ``resample_spacing`` its images and labels resampled, with
    ``moving_rotation_deg`` its moving image and labels turned in physical space (:func:`moving_rotation`) and the
    truth transform composed with the turn."""
    if case.resample_spacing is None and case.moving_rotation_deg is None:
        return case
    folder = Path(work_dir).resolve() / case.name
    roles = {"fixed": sitk.sitkLinear, "moving": sitk.sitkLinear,
             "fixed_labels": sitk.sitkNearestNeighbor, "moving_labels": sitk.sitkNearestNeighbor}
    if case.resample_spacing is None:
        roles = {role: how for role, how in roles.items() if role.startswith("moving")}
    sources = {role: case.path(getattr(case, role)) for role in roles if getattr(case, role)}
    if case.moving_rotation_deg is not None and case.truth_transform:
        sources["truth_transform"] = case.path(case.truth_transform)
    manifest = {"spacing": case.resample_spacing, "moving_rotation_deg": case.moving_rotation_deg,
                "sources": {role: [path, os.stat(path).st_size, os.stat(path).st_mtime_ns]
                            for role, path in sources.items()}}
    targets = {role: folder / (f"{role}.nrrd" if role != "truth_transform" else "truth.h5") for role in sources}
    manifest_file = folder / "manifest.json"
    up_to_date = (manifest_file.is_file() and json.loads(manifest_file.read_text()) == manifest
                  and all(t.is_file() for t in targets.values()))
    if not up_to_date:
        folder.mkdir(parents=True, exist_ok=True)
        manifest_file.unlink(missing_ok=True)
        moving = sitk.ReadImage(sources["moving"])
        rotation = moving_rotation(moving, case.moving_rotation_deg) if case.moving_rotation_deg is not None else None
        for role, source in sources.items():
            partial = targets[role].with_name(f"partial-{targets[role].name}")
            if role == "truth_transform":  # fixed → moving, then the turn: new truth = rotation ∘ truth
                sitk.WriteTransform(sitk.CompositeTransform([rotation, sitk.ReadTransform(source)]), str(partial))
                os.replace(partial, targets[role])
                continue
            image = sitk.ReadImage(source)
            if case.resample_spacing is not None:
                image = resample_to_spacing(image, case.resample_spacing, roles[role])
            if rotation is not None and role.startswith("moving"):
                image = rotate_physically(image, rotation, roles[role])
            sitk.WriteImage(image, str(partial), True)
            os.replace(partial, targets[role])
        manifest_file.write_text(json.dumps(manifest, indent=2))
    return dataclasses.replace(case, **{role: str(target) for role, target in targets.items()})


# --- scoring -----------------------------------------------------------------------------------------------
def _read_2d(path: str) -> sitk.Image:
    image = sitk.ReadImage(path)
    return image[:, :, 0] if image.GetDimension() == 3 and image.GetSize()[2] == 1 else image


def read_homography(path: str) -> np.ndarray:
    """The first 3×3 matrix of an OpenCV FileStorage XML file (e.g. the Oxford affine data's ``H1to3p``)."""
    node = ElementTree.parse(path).getroot().find("*[@type_id='opencv-matrix']")
    if node is None or node.findtext("rows", "").strip() != "3" or node.findtext("cols", "").strip() != "3":
        raise InputImageError(f"{path}: no 3×3 opencv-matrix found.")
    return np.array([float(v) for v in node.findtext("data").split()]).reshape(3, 3)


def landmark_pixels(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Corresponding (fixed, moving) landmark positions in pixels, each (N, 2) as (x = column, y = row)."""
    if case.landmarks_csv:
        table = np.loadtxt(case.path(case.landmarks_csv), delimiter=",", skiprows=1, ndmin=2)
        return table[:, 1:3], table[:, 3:5]
    homography = read_homography(case.path(case.landmarks_homography))
    fixed_size = np.array(_read_2d(case.path(case.fixed)).GetSize(), dtype=float)
    moving_size = np.array(_read_2d(case.path(case.moving)).GetSize(), dtype=float)
    columns, rows = case.landmark_grid
    inset = 0.05 * (fixed_size - 1)
    xs = np.linspace(inset[0], fixed_size[0] - 1 - inset[0], columns)
    ys = np.linspace(inset[1], fixed_size[1] - 1 - inset[1], rows)
    fixed = np.array([(x, y) for y in ys for x in xs])
    mapped = np.c_[fixed, np.ones(len(fixed))] @ homography.T
    moving = mapped[:, :2] / mapped[:, 2:]
    inside = np.all((moving >= 0) & (moving <= moving_size - 1), axis=1)
    return fixed[inside], moving[inside]


def landmark_errors_px(case: Case, transform: sitk.Transform | None) -> np.ndarray:
    """Per landmark: fixed pixel → fixed physical → transform → moving physical → moving pixel, distance (pixels)
    to the moving landmark. Each image's own spacing, origin and direction apply; ``None`` is the identity."""
    from ...transform.metrics import transform_points

    fixed_image, moving_image = _read_2d(case.path(case.fixed)), _read_2d(case.path(case.moving))
    fixed_px, moving_px = landmark_pixels(case)
    fixed_points = np.array([fixed_image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in fixed_px])
    mapped = fixed_points if transform is None else transform_points(transform, fixed_points)
    mapped_px = np.array([moving_image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in mapped])
    return np.linalg.norm(mapped_px - moving_px, axis=1)


def score(case: Case, transform: sitk.Transform | None) -> dict:
    """Dice per labelled structure, TRE (mm) against a truth transform, and landmark TRE in moving pixels with
    rTRE (TRE / fixed image diagonal, the ANHIR measure) of a fixed → moving transform (``None``: identity)."""
    from ...transform.metrics import dice_per_label, labelled_points, target_registration_error, warp_labels

    row: dict = {}
    if case.fixed_labels and case.moving_labels:
        fixed_labels = _read_2d(case.path(case.fixed_labels))
        moving_labels = _read_2d(case.path(case.moving_labels))
        warped = warp_labels(moving_labels, fixed_labels, transform)
        values = [int(v) for v in case.labels]
        scores = dice_per_label(sitk.GetArrayViewFromImage(fixed_labels), warped, values)
        row["dice"] = {case.labels[str(v)]: scores[v] for v in values}
        row["dice_mean"] = float(np.mean(list(row["dice"].values())))
        if case.truth_transform:
            truth = sitk.ReadTransform(case.path(case.truth_transform))
            points = labelled_points(fixed_labels, max_points=5000)
            row["tre_mm"] = float(target_registration_error(transform, truth, points).mean())
    if case.has_landmarks:
        errors = landmark_errors_px(case, transform)
        diagonal = float(np.linalg.norm(_read_2d(case.path(case.fixed)).GetSize()))
        row.update(tre_px=float(errors.mean()), tre_px_median=float(np.median(errors)),
                   rtre=float(errors.mean() / diagonal), rtre_median=float(np.median(errors) / diagonal),
                   landmarks=int(errors.size))
    return row


# --- click sets --------------------------------------------------------------------------------------------
def _prompt_structure(case: Case, index: int, labels: sitk.Image) -> int:
    """The label value of the structure prompt ``index`` stands for: the label named like the prompt, else the
    label under the case's own click (0 when that click is on background)."""
    by_name = {name: int(value) for value, name in case.labels.items()}
    if index < len(case.prompt_names) and case.prompt_names[index] in by_name:
        return by_name[case.prompt_names[index]]
    point = ras_to_lps(case.prompts_ras[index])[: labels.GetDimension()]
    voxel = labels.TransformPhysicalPointToIndex(point.tolist())
    inside = all(0 <= v < s for v, s in zip(voxel, labels.GetSize()))
    return int(labels[voxel]) if inside else 0


def _depth_inside(mask: sitk.Image) -> sitk.Image:
    """Distance (mm) from each voxel of ``mask`` to its boundary — the image's border counting as one, so a
    structure cut by the border is shallow there (SimpleITK's signed Maurer distance, positive inside)."""
    border = [1] * mask.GetDimension()
    distance = sitk.SignedMaurerDistanceMap(sitk.ConstantPad(mask, border, border, 0), insideIsPositive=True,
                                            squaredDistance=False, useImageSpacing=True)
    return sitk.Crop(distance, border, border)


def draw_click_sets(case: Case, count: int, seed: int = CLICK_SEED, margin_mm: float = CLICK_MARGIN_MM) -> list[list]:
    """``count`` alternative click sets (RAS mm, one click per prompt), each click drawn uniformly — seeded — among
    the voxels of its prompt's structure in the fixed labels lying at least ``margin_mm`` inside it (half the
    structure's depth where it is thinner; see :func:`_depth_inside`). A prompt without a structure keeps the case's
    click."""
    labels = _read_2d(case.path(case.fixed_labels))
    array = sitk.GetArrayViewFromImage(labels)
    candidates = []
    for index in range(len(case.prompts_ras)):
        value = _prompt_structure(case, index, labels)
        if value == 0 or not np.any(array == value):
            candidates.append(None)
            continue
        depth = sitk.GetArrayFromImage(_depth_inside(labels == value))
        candidates.append(np.argwhere(depth >= min(margin_mm, 0.5 * float(depth.max()))))
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(count):
        clicks = []
        for index, voxels in enumerate(candidates):
            if voxels is None:
                clicks.append([float(v) for v in case.prompts_ras[index]])
                continue
            voxel = voxels[rng.integers(len(voxels))][::-1]  # numpy order → ITK index
            ras = lps_to_ras(labels.TransformIndexToPhysicalPoint([int(v) for v in voxel]))
            clicks.append([round(float(v), 3) for v in ras])
        sets.append(clicks)
    return sets


def summarise_click_runs(prompt_sets: list[list], rows: list[dict]) -> dict:
    """min/max/mean (and spread = max − min) of each measure over the click-set runs that succeeded."""
    summary: dict = {"sets": len(rows), "errors": sum("error" in r for r in rows),
                     "runs": [{"prompts_ras": prompts, **{k: r[k] for k in ("tre_mm", "tre_px", "dice_mean",
                                                                         "seconds", "error") if k in r}}
                              for prompts, r in zip(prompt_sets, rows)]}
    for measure in ("tre_mm", "tre_px", "dice_mean"):
        values = [r[measure] for r in rows if r.get(measure) is not None]
        if values:
            summary[measure] = {"min": min(values), "max": max(values), "mean": float(np.mean(values)),
                                "spread": max(values) - min(values)}
    return summary


# --- methods: each (case, quick, progress, **options) → (fixed → moving transform, extra row fields) ------------
def _register_promptreg(case: Case, progress: Callable[[str, float], None]):
    from ...prompting.pairs import PairOptions
    from ...pipeline.registration import register

    pair_options = PairOptions()
    if case.auto_pairs is not None:
        pair_options.auto_pairs = case.auto_pairs
    return register(case.path(case.fixed), case.path(case.moving), case.prompts_ras, pair_options=pair_options,
                    progress=progress)


def _promptreg_extra(result) -> dict:
    return {"pairs_used": len(result.accepted_pairs), "pairs_found": len(result.pairs),
            "folding": result.report.get("folding_fraction")}


def second_click_seconds(case: Case, result) -> float | None:
    """Seconds to pair one more click once both images are encoded, as in a live Slicer session: the case's
    first click again, on the run's own views (their embeddings held in memory), one click one pair (no sampled
    pairs even when it is rejected); None without clicks."""
    from ...prompting.pairs import PairOptions, find_pairs, initial_prior

    if not case.prompts_ras:
        return None
    point = ras_to_lps(np.asarray(case.prompts_ras[0], dtype=float))[: result.fixed_image.dimension]
    started = time.perf_counter()
    find_pairs(result.fixed_view, result.moving_view, [point], [],
               initial_prior(result.fixed_view, result.moving_view),
               PairOptions(auto_pairs=0, warps=0, fallback_auto_pairs=0))
    return time.perf_counter() - started


#: how far the correction latency's simulated user drags a Prompt Y (mm, along R)
CORRECTION_DRAG_MM = 3.0


def correction_seconds(result) -> float | None:
    """Seconds from a moved Prompt Y to an updated transform once both images are encoded, as in a live Slicer
    session: the first used pair's Prompt Y dragged :data:`CORRECTION_DRAG_MM`, its ROI Y segmented there on the
    run's own views (:func:`~PromptRegLib.prompting.inverse.prompt_pair`) and the transform refitted. Changes
    ``result`` (take its transform first); None when no pair was used."""
    from ...transform.fit import FitOptions
    from ...prompting.inverse import prompt_pair
    from ...pipeline.registration import refit_transform

    used = result.accepted_pairs
    if not used or result.transform is None:
        return None
    pair = used[0]
    started = time.perf_counter()
    dragged = pair.prompt_y_lps + np.eye(len(pair.prompt_y_lps))[0] * -CORRECTION_DRAG_MM  # +R is −L
    pair.roi_y = prompt_pair(result.fixed_view, result.moving_view, pair.roi_x, dragged).roi_y
    pair.prompt_y_lps = dragged
    # the run's own fit options, started from its transform (as the worker's correction refit does)
    refit_transform(result, FitOptions(**result.report["fit_options"]), start=result.transform)
    return time.perf_counter() - started


def _promptreg(case: Case, quick: bool, progress, second_click: bool = True) -> tuple[sitk.Transform, dict]:
    result = _register_promptreg(case, progress)
    transform, extra = result.transform.to_sitk(), _promptreg_extra(result)
    if second_click:
        progress("timing a second click", 1.0)
        extra["second_click_s"] = second_click_seconds(case, result)
        progress("timing a Prompt Y correction", 1.0)
        extra["correction_s"] = correction_seconds(result)
    return transform, extra


def _promptreg_auto(case: Case, quick: bool, progress,
                    auto_pairs: int = DEFAULT_AUTO_PAIRS) -> tuple[sitk.Transform, dict]:
    """Zero clicks: sampled prompts only."""
    return _promptreg(dataclasses.replace(case, prompts_ras=[], auto_pairs=auto_pairs), quick, progress,
                      second_click=False)


def _grey(image: sitk.Image) -> sitk.Image:
    """float32 image; colour reduced to luminance (the usual input of intensity-based methods)."""
    if image.GetNumberOfComponentsPerPixel() == 1:
        return sitk.Cast(image, sitk.sitkFloat32)
    channels = [sitk.Cast(sitk.VectorIndexSelectionCast(image, c), sitk.sitkFloat32) for c in range(3)]
    return channels[0] * 0.299 + channels[1] * 0.587 + channels[2] * 0.114


def _read_for_peer(path: str) -> sitk.Image:
    return _grey(_read_2d(path))


def _scalar_file(path: str, scratch: str) -> str:
    """``path`` if it holds one component per pixel, else its luminance written into ``scratch``."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    if reader.GetNumberOfComponents() == 1:
        return path
    grey_path = str(Path(scratch) / f"{Path(path).name}.grey.nrrd")
    sitk.WriteImage(_read_for_peer(path), grey_path)
    return grey_path


def _simpleitk(case: Case, quick: bool, progress) -> tuple[sitk.Transform, dict]:
    """SimpleITK: centred affine then a B-spline, multi-resolution, normalised correlation (same-modality pairs;
    Mattes MI where fixed and moving differ in modality) — the usual recipe from its notebooks."""
    fixed, moving = _read_for_peer(case.path(case.fixed)), _read_for_peer(case.path(case.moving))
    dimension = fixed.GetDimension()
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(dimension),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)

    multimodal = case.multimodal

    def set_metric(registration: sitk.ImageRegistrationMethod) -> None:
        registration.SetMetricAsMattesMutualInformation(32) if multimodal else registration.SetMetricAsCorrelation()

    def method(iterations: int) -> sitk.ImageRegistrationMethod:
        registration = sitk.ImageRegistrationMethod()
        set_metric(registration)
        registration.SetMetricSamplingStrategy(registration.RANDOM)
        registration.SetMetricSamplingPercentage(0.2, seed=1)
        registration.SetInterpolator(sitk.sitkLinear)
        registration.SetShrinkFactorsPerLevel([4, 2, 1])
        registration.SetSmoothingSigmasPerLevel([2, 1, 0])
        registration.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        registration.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                              numberOfIterations=iterations, relaxationFactor=0.5)
        registration.SetOptimizerScalesFromPhysicalShift()
        return registration

    iterations = 50 if quick else 200
    progress("affine", 0.0)
    affine_registration = method(iterations)
    affine_registration.SetInitialTransform(initial, inPlace=False)
    affine = affine_registration.Execute(fixed, moving)
    progress("B-spline", 0.5)
    mesh = [8] * dimension
    bspline = sitk.BSplineTransformInitializer(fixed, mesh)
    deformable = sitk.ImageRegistrationMethod()
    set_metric(deformable)
    deformable.SetMetricSamplingStrategy(deformable.RANDOM)
    deformable.SetMetricSamplingPercentage(0.1, seed=1)
    deformable.SetInterpolator(sitk.sitkLinear)
    deformable.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=20 if quick else 100)
    deformable.SetShrinkFactorsPerLevel([2, 1])
    deformable.SetSmoothingSigmasPerLevel([1, 0])
    deformable.SetMovingInitialTransform(affine)
    deformable.SetInitialTransform(bspline, inPlace=True)
    deformable.Execute(fixed, moving)
    composite = sitk.CompositeTransform([affine, bspline])
    return composite, {}


def _elastix(case: Case, quick: bool, progress) -> tuple[sitk.Transform, dict]:
    """elastix (itk-elastix): affine + B-spline default parameter maps."""
    import itk

    working_dir = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:  # grey inputs; transformix drops deformationField.nii in the cwd
        fixed = itk.imread(_scalar_file(case.path(case.fixed), scratch), itk.F)
        moving = itk.imread(_scalar_file(case.path(case.moving), scratch), itk.F)
        parameters = itk.ParameterObject.New()
        for name in ("affine", "bspline"):
            parameter_map = parameters.GetDefaultParameterMap(name, 3 if quick else 4)
            parameter_map["MaximumNumberOfIterations"] = ["100" if quick else "500"]
            parameters.AddParameterMap(parameter_map)
        progress("affine + B-spline", 0.0)
        _, result_parameters = itk.elastix_registration_method(fixed, moving, parameter_object=parameters,
                                                               log_to_console=False)
        progress("deformation field", 0.9)
        os.chdir(scratch)
        try:
            deformation = itk.transformix_deformation_field(moving, result_parameters)
        finally:
            os.chdir(working_dir)
    displacement = sitk.GetImageFromArray(itk.array_from_image(deformation).astype(np.float64), isVector=True)
    reference = sitk.ReadImage(case.path(case.fixed))
    displacement.CopyInformation(reference if reference.GetDimension() == displacement.GetDimension()
                                 else reference[:, :, 0])
    return sitk.DisplacementFieldTransform(displacement), {}


def _ants(case: Case, quick: bool, progress) -> tuple[sitk.Transform, dict]:
    """ANTs SyN (antspyx), its default recipe."""
    import ants

    with tempfile.TemporaryDirectory() as scratch:
        fixed = ants.image_read(_scalar_file(case.path(case.fixed), scratch))
        moving = ants.image_read(_scalar_file(case.path(case.moving), scratch))
    progress("SyN", 0.0)
    result = ants.registration(fixed, moving, type_of_transform="SyNRA" if not quick else "SyN")
    composite = sitk.CompositeTransform(fixed.dimension)
    for path in result["fwdtransforms"][::-1]:
        composite.AddTransform(sitk.ReadTransform(path) if path.endswith(".mat") else
                               sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64)))
    return composite, {}


METHODS = {"promptreg": _promptreg, "promptreg-auto": _promptreg_auto, "simpleitk": _simpleitk,
           "elastix": _elastix, "ants": _ants}
OPTIONAL = {"elastix": "itk", "ants": "ants"}


def available_methods() -> list[str]:
    import importlib.util
    return [m for m in METHODS if m not in OPTIONAL or importlib.util.find_spec(OPTIONAL[m]) is not None]


# --- guarded child processes -------------------------------------------------------------------------------
def default_max_memory_mb() -> float:
    """Three quarters of the physical memory: a run above it would push the machine into swap."""
    return 0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


@dataclass
class Limits:
    """What one (case, method) run may use before it is killed and reported as an error row."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_memory_mb: float = field(default_factory=default_max_memory_mb)


def _rss_mb(pid: int) -> float | None:
    """Resident memory of a running process (Linux /proc); None where it cannot be read."""
    try:
        resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child_main(sender, function: Callable, args: tuple) -> None:
    """In the child: run ``function(*args, progress)``; send progress messages, then its result (or its error)."""
    last = [None]

    def progress(stage: str, fraction: float) -> None:
        message = (stage, int(100 * fraction))
        if message != last[0]:  # at most one message per stage and percent
            last[0] = message
            sender.send(("progress", (stage, fraction)))

    try:
        result = function(*args, progress)
    except Exception as error:  # reported in the table, never hides the other runs
        result = {"error": f"{type(error).__name__}: {error}"}
    sender.send(("result", result))
    sender.close()


def _exit_description(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def run_guarded(function: Callable, args: tuple, limits: Limits, progress=None) -> dict:
    """``function(*args, progress)`` in a fresh (spawned) process, returning its dict. A child that dies without
    answering, runs past ``limits.timeout_s`` or holds more than ``limits.max_memory_mb`` resident (checked every
    0.1 s; Linux) is killed and becomes ``{"error": why, "seconds": …, "peak_mb": …}``."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(sender, function, args), daemon=True)
    started = time.perf_counter()
    process.start()
    sender.close()  # only the child writes: its death closes the pipe
    peak_mb = 0.0

    def failure(why: str) -> dict:
        process.kill()
        return {"error": why, "seconds": time.perf_counter() - started, "peak_mb": peak_mb}

    try:
        while True:
            if receiver.poll(POLL_S):
                try:
                    kind, payload = receiver.recv()
                except EOFError:
                    process.join(5)
                    return failure(f"crashed: the run ended ({_exit_description(process.exitcode)}) without a result")
                if kind == "result":
                    return payload
                if progress is not None:
                    progress(*payload)
                continue
            if time.perf_counter() - started > limits.timeout_s:
                return failure(f"timed out: still running after {limits.timeout_s:.0f} s (--timeout)")
            rss = _rss_mb(process.pid)
            peak_mb = max(peak_mb, rss or 0.0)
            if rss is not None and rss > limits.max_memory_mb:
                return failure(f"memory cap: {rss:.0f} MB resident, above {limits.max_memory_mb:.0f} MB "
                               "(--max-memory-mb)")
    finally:  # a child that answered exits by itself; anything else (e.g. Ctrl-C here) is killed
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        receiver.close()


def _method_row(name: str, case: Case, quick: bool, options: dict, progress) -> dict:
    """In the child: run one method, then measure it (seconds, peak RSS, size of its transform written as
    transform.h5) and score it."""
    os.environ["PROMPTREG_CACHE"] = "off"  # cold start: a method's time includes encoding the images
    from ...io.outputs import write_transform

    started = time.perf_counter()
    transform, extra = METHODS[name](case, quick, progress, **options)
    # the interactive latencies are measured after the run and are not part of the method's time
    interactive = (extra.get("second_click_s") or 0.0) + (extra.get("correction_s") or 0.0)
    row = {"seconds": time.perf_counter() - started - interactive,
           "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # before scoring: the method's own
    progress("writing and scoring the transform", 1.0)
    if isinstance(transform, sitk.CompositeTransform):
        transform.FlattenTransform()  # an ITK transform file holds no composite nested in another
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "transform.h5"
        write_transform(path, transform)
        row["transform_mb"] = path.stat().st_size / 2**20
    return {**score(case, transform), **extra, **row}


def run_method(name: str, case: Case, quick: bool = False, limits: Limits | None = None, options: dict | None = None,
               quiet: bool = True) -> dict:
    """Run one method on one (prepared) case in a fresh process; returns its row (an error row if it failed)."""
    bar = ProgressBar(quiet, prefix=f"{case.name} / {name}: ")
    try:
        row = run_guarded(_method_row, (name, case, quick, options or {}), limits or Limits(), bar)
    finally:
        bar.close()
    return {"case": case.name, "method": name, **row}


def run_promptreg_case(case: Case, output_dir: Path, quiet: bool = False) -> dict:
    """The demo's job: register one case with PromptReg in this process, write outputs, score before/after."""
    from ...io.outputs import write_registration

    started = time.perf_counter()
    progress = ProgressBar(quiet)
    try:
        result = _register_promptreg(case, progress)
    finally:
        progress.close()
    write_registration(result, output_dir)
    row = {"case": case.name, **score(case, result.transform.to_sitk()), **_promptreg_extra(result),
           "seconds": time.perf_counter() - started}
    before = score(case, None)
    row["dice_before"], row["tre_before_mm"] = before.get("dice", {}), before.get("tre_mm")
    (Path(output_dir) / "scores.json").write_text(json.dumps(row, indent=2))
    return row


# --- report ------------------------------------------------------------------------------------------------
def _fmt(value, pattern: str = "{:.3f}") -> str:
    return "" if value is None else pattern.format(value)


def _tre_text(row: dict) -> str:
    if row.get("tre_mm") is not None:
        return f"{row['tre_mm']:.2f} mm"
    if row.get("tre_px") is not None:
        return f"{row['tre_px']:.1f} px ({100 * row['rtre']:.2f} %)"
    return ""


def _markdown(rows: list[dict]) -> str:
    lines = ["| case | method | Dice mean | TRE (rTRE) | click-set TRE spread | folding | seconds | second click s | "
             "correction s | peak MB | transform MB | time ratio PromptReg/peer | Dice ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            why = " ".join(row["error"].split()).replace("|", "/")[:100]  # one table cell
            lines.append(f"| {row['case']} | {row['method']} | error: {why} | | | | "
                         f"{_fmt(row.get('seconds'), '{:.1f}')} | | | {_fmt(row.get('peak_mb'), '{:.0f}')} | | | |")
            continue
        spread = row.get("click_spread", {})
        tre_spread = spread.get("tre_mm") or spread.get("tre_px")
        spread_text = "" if not spread else (f"{tre_spread['spread']:.2f} ({spread['sets'] - spread['errors']}/"
                                             f"{spread['sets']} sets)" if tre_spread else f"0/{spread['sets']} sets")
        lines.append(f"| {row['case']} | {row['method']} | {_fmt(row.get('dice_mean'))} | {_tre_text(row)} | "
                     f"{spread_text} | {_fmt(row.get('folding'), '{:.4f}')} | {row['seconds']:.1f} | "
                     f"{_fmt(row.get('second_click_s'), '{:.1f}')} | {_fmt(row.get('correction_s'), '{:.1f}')} | "
                     f"{row['peak_mb']:.0f} | "
                     f"{_fmt(row.get('transform_mb'), '{:.2f}')} | "
                     f"{_fmt(row.get('time_ratio'), '{:.2f}')} | {_fmt(row.get('dice_ratio'), '{:.2f}')} |")
    spread_rows = [r for r in rows if r.get("click_spread")]
    if spread_rows:
        lines += ["", "Click-set spread (PromptReg over clicks drawn inside the labelled structures):", "",
                  "| case | sets (errors) | TRE min / mean / max | TRE spread | Dice min / mean / max |",
                  "|---|---|---|---|---|"]
        for row in spread_rows:
            spread = row["click_spread"]
            tre, dice = spread.get("tre_mm") or spread.get("tre_px"), spread.get("dice_mean")
            tre_text = "" if not tre else f"{tre['min']:.2f} / {tre['mean']:.2f} / {tre['max']:.2f}"
            dice_text = "" if not dice else f"{dice['min']:.3f} / {dice['mean']:.3f} / {dice['max']:.3f}"
            lines.append(f"| {row['case']} | {spread['sets']} ({spread['errors']}) | {tre_text} | "
                         f"{_fmt(tre and tre['spread'], '{:.2f}')} | {dice_text} |")
    return "\n".join(lines) + "\n"


def _plots(rows: list[dict], output_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if "error" not in r and r.get("dice_mean") is not None]
    figure, axis = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in good}):
        points = [(max(r["seconds"], 0.1), r["dice_mean"]) for r in good if r["method"] == method]
        axis.scatter(*zip(*points), label=method)
    axis.set_xscale("log")
    axis.set_xlabel("wall time (s, log)")
    axis.set_ylabel("mean Dice")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / "accuracy_vs_time.png", dpi=100)
    plt.close(figure)
    structures = sorted({(r["case"], s) for r in good for s in r.get("dice", {})})
    methods = sorted({r["method"] for r in good})
    figure, axis = plt.subplots(figsize=(max(6, len(structures) * 0.9), 4))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        values = [next((r["dice"].get(s) for r in good if r["method"] == method and r["case"] == c), np.nan)
                  for c, s in structures]
        axis.bar(np.arange(len(structures)) + i * width, values, width, label=method)
    axis.set_xticks(np.arange(len(structures)) + 0.4 - width / 2)
    axis.set_xticklabels([f"{c}\n{s}" for c, s in structures], rotation=45, ha="right", fontsize=7)
    axis.set_ylabel("Dice")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / "dice_per_structure.png", dpi=100)
    plt.close(figure)


def _summary_line(row: dict) -> str:
    if "error" in row:
        return f"  {row['method']}: {row['error']}"
    measures = [f"Dice {row['dice_mean']:.3f}" if row.get("dice_mean") is not None else "", _tre_text(row)]
    return (f"  {row['method']}: {', '.join(m for m in measures if m)}; {row['seconds']:.1f} s, "
            f"{row['peak_mb']:.0f} MB, transform {row.get('transform_mb', 0):.2f} MB")


def _click_spread(case: Case, count: int, quick: bool, limits: Limits, quiet: bool, say) -> dict:
    """PromptReg on ``count`` click sets drawn inside the case's labelled structures, summarised."""
    prompt_sets = draw_click_sets(case, count)
    set_rows = []
    for index, prompts in enumerate(prompt_sets, 1):
        set_rows.append(run_method("promptreg", dataclasses.replace(case, prompts_ras=prompts), quick, limits,
                                   {"second_click": False}, quiet=quiet))
        say(f"  click set {index}/{count}, {_summary_line(set_rows[-1]).strip()}")
    return summarise_click_runs(prompt_sets, set_rows)


def _add_ratios(ours: dict, case_rows: list[dict]) -> None:
    """PromptReg's time and Dice over each peer's, on the peers' rows."""
    for row in case_rows:
        if row["method"].startswith("promptreg") or "error" in row:
            continue
        row["time_ratio"] = ours["seconds"] / row["seconds"]
        if row.get("dice_mean"):
            row["dice_ratio"] = ours["dice_mean"] / row["dice_mean"]


def run_bench(data_dir, output_dir, quick: bool = False, methods: str | None = None, quiet: bool = False,
              limits: Limits | None = None, click_sets: int | None = None, auto_pairs: int = DEFAULT_AUTO_PAIRS,
              work_dir=None, case_names: str | None = None) -> list[dict]:
    """Every available method on every case (``quick``: the quick cases, fewer iterations, no click sets unless
    asked; ``case_names``: a comma-separated subset of cases). ``click_sets``: PromptReg re-run with that many click sets drawn in the labelled structures of each
    labelled case that is not derived from another (default 5, 0 in quick); ``auto_pairs``: sampled prompts of the
    zero-click ``promptreg-auto`` rows; ``work_dir``: where derived cases keep their resampled files (default
    ``output_dir/work``)."""
    cases = [c for c in load_cases(data_dir) if c.quick or not quick]
    if case_names:
        wanted = [n.strip() for n in case_names.split(",")]
        unknown_cases = sorted(set(wanted) - {c.name for c in cases})
        if unknown_cases:
            raise PromptRegError(f"unknown or unavailable case(s) {', '.join(unknown_cases)}; available: "
                                 f"{', '.join(c.name for c in cases)}.")
        cases = [c for c in cases if c.name in wanted]
    if not cases:
        raise InputImageError(f"no benchmark data found under {data_dir}; pass --data.")
    chosen = available_methods() if not methods else [m.strip() for m in methods.split(",")]
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        raise PromptRegError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}.")
    click_sets = (0 if quick else DEFAULT_CLICK_SETS) if click_sets is None else click_sets
    limits = limits or Limits()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(work_dir) if work_dir else output_dir / "work"
    options = {"promptreg-auto": {"auto_pairs": auto_pairs}}
    say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    rows = []
    for number, case in enumerate(cases, 1):
        say(f"[{number}/{len(cases)}] {case.name}")
        if case.resample_spacing is not None:
            say(f"  resampling to {case.resample_spacing} mm into {work_dir / case.name} (reused when present)")
        case = prepare_case(case, work_dir)
        rows.append({"case": case.name, "method": "identity", **score(case, None), "seconds": 0.0, "peak_mb": 0.0})
        case_rows = []
        for method in chosen:
            case_rows.append(run_method(method, case, quick, limits, options.get(method), quiet))
            say(_summary_line(case_rows[-1]))
        ours = next((r for r in case_rows if r["method"] == "promptreg"), None)
        if ours is not None and click_sets > 0 and case.fixed_labels and not case.derived_from:
            ours["click_spread"] = _click_spread(case, click_sets, quick, limits, quiet, say)
        if ours is not None and "error" not in ours:
            _add_ratios(ours, case_rows)
        rows.extend(case_rows)
    settings = {"quick": quick, "timeout_s": limits.timeout_s, "max_memory_mb": limits.max_memory_mb,
                "click_sets": click_sets, "click_seed": CLICK_SEED, "click_margin_mm": CLICK_MARGIN_MM,
                "auto_pairs": auto_pairs}
    (output_dir / "bench.json").write_text(json.dumps({**settings, "rows": rows}, indent=2))
    (output_dir / "bench.md").write_text(_markdown(rows))
    _plots(rows, output_dir)
    if not quiet:
        print(_markdown(rows))
        print(f"wrote {output_dir / 'bench.json'}, bench.md and plots")
    return rows
