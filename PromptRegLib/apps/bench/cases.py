"""Bench cases: the JSON files in ``case_files/``, derived cases made once into a work folder, and click sets."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ...core.image import lps_to_ras, ras_to_lps
from ...errors import InputImageError

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
    options: dict = field(default_factory=dict)     # PromptReg's options by their outside names (pipeline.options)
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
    files = sorted(resources.files("PromptRegLib.apps.bench.case_files").iterdir(), key=lambda f: f.name)
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
def read_2d(path: str) -> sitk.Image:
    image = sitk.ReadImage(path)
    return image[:, :, 0] if image.GetDimension() == 3 and image.GetSize()[2] == 1 else image


CLICK_MARGIN_MM = 5.0   # drawn clicks lie at least this deep inside their structure (less where it is thinner)


CLICK_SEED = 20260401


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
    labels = read_2d(case.path(case.fixed_labels))
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

