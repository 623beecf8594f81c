"""Writing results: segmentations, markups, transforms, the warped image, report and figure.

Everything is written into a fresh temporary folder beside the output folder and moved into place only
when complete, so a failed or cancelled run leaves nothing half-written; an output never replaces an input.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.image import Image, lps_to_ras
from ..core.lengths import has_physical_units
from ..errors import OutputError
from .figure import draw_pairs, segment_color
from .points import write_markups


@contextmanager
def staged_output(output_dir: str | os.PathLike, inputs: list[str] = ()):
    """Yield a temporary folder; on success move its files into ``output_dir``; on any error remove it.

    A failed write inside (disk full, …) becomes an :class:`OutputError` naming the reason. The temporary
    folder is named ``.promptreg-<output name>-…``, so one left by a killed process says whose it was.
    """
    output_dir = Path(output_dir)
    input_paths = {Path(p).resolve() for p in inputs if p}
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".promptreg-{output_dir.name}-", dir=output_dir.parent))
    except OSError as error:
        raise OutputError(f"cannot write to {output_dir.parent}: {error.strerror}.") from None
    try:
        try:
            yield staging
        except OSError as error:  # disk full, quota, permissions changed mid-run
            raise OutputError(f"cannot write outputs for {output_dir}: {error.strerror or error}; nothing was "
                              "written.") from None
        except RuntimeError as error:  # SimpleITK reports failed writes as RuntimeError
            if "write" not in str(error).lower():
                raise
            reason = str(error).strip().splitlines()[-1][:200]
            raise OutputError(f"cannot write outputs for {output_dir}: {reason}; nothing was written.") from None
        clashes = [f for f in staging.iterdir() if (output_dir / f.name).resolve() in input_paths]
        if clashes:
            raise OutputError(f"output {output_dir / clashes[0].name} would overwrite an input; choose another -o.")
        try:
            if not output_dir.exists():
                staging.rename(output_dir)
                return
            for item in staging.iterdir():
                os.replace(item, output_dir / item.name)
        except OSError as error:
            raise OutputError(f"cannot write to {output_dir}: {error.strerror}.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _ijk_to_lps_4x4(image: Image) -> np.ndarray:
    matrix = np.eye(4)
    d = image.dimension
    matrix[:d, :d] = image.direction @ np.diag(image.spacing)
    matrix[:d, 3] = image.origin
    return matrix


def _layers(masks: list[np.ndarray]) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Label layers (numpy order, uint8) holding ``masks``, and each mask's (layer, label value): a mask goes to
    the first layer it does not overlap, with that layer's next label, as Slicer (and slicerio) store segments."""
    layers: list[np.ndarray] = []
    placed = []
    for mask in masks:
        index = next((i for i, layer in enumerate(layers) if int(layer.max()) < 255 and not layer[mask].any()), None)
        if index is None:
            layers.append(np.zeros(mask.shape, dtype=np.uint8))
            index = len(layers) - 1
        label = int(layers[index].max()) + 1
        layers[index][mask] = label
        placed.append((index, label))
    return layers, placed


def _extent_ijk(mask: np.ndarray) -> list[int]:
    """Slicer's segment extent (i min, i max, j min, j max, k min, k max) of a (K, R, C) mask; empty: 0, -1."""
    extent = []
    for axis in (2, 1, 0):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        extent += [int(present[0]), int(present[-1])] if present.size else [0, -1]
    return extent


def write_segmentation(path: Path, image: Image, masks: list[np.ndarray], names: list[str],
                       colors: list[tuple[float, float, float]], exclusive: bool = False) -> None:
    """A Slicer ``.seg.nrrd`` on ``image``'s grid; masks in numpy order.

    Overlapping segments go to separate layers (as Slicer stores them), unless ``exclusive``: then each
    voxel belongs to the smallest segment that holds it (nested structures keep their own label). The layers
    are built here in numpy order and handed to slicerio's writer as an (i, j, k) view of the same memory, so
    a clinical-size grid is written without strided copies (slicerio's own ``add_segment`` works on (i, j, k)
    arrays and took ~20 s per 520×520×227 volume).
    """
    import slicerio

    masks = [np.asarray(m, dtype=bool) for m in masks]
    if image.dimension == 2:
        masks = [m[None] for m in masks]
    if exclusive and masks:
        order = np.argsort([-m.sum() for m in masks])  # large first, small ones overwrite
        owner = np.full(masks[0].shape, -1, dtype=np.int16)
        for index in order:
            owner[masks[index]] = index
        masks = [owner == index for index in range(len(masks))]
    shape_kji = (1,) + tuple(image.size)[::-1] if image.dimension == 2 else tuple(image.size)[::-1]
    layers, placed = _layers(masks) if masks else ([np.zeros(shape_kji, dtype=np.uint8)], [])
    # (K, R, C[, L]) in C order is (L,) I, J, K in Fortran order: what the NRRD writer streams
    voxels = layers[0].T if len(layers) == 1 else np.stack(layers, axis=-1).T
    segments = [{"id": f"Segment_{index + 1}", "name": name, "color": [float(c) for c in color],
                 "labelValue": label, "layer": layer, "extent": _extent_ijk(mask)}
                for index, (mask, name, color, (layer, label)) in enumerate(zip(masks, names, colors, placed))]
    segmentation = {"voxels": voxels, "ijkToLPS": _ijk_to_lps_4x4(image), "segments": segments}
    slicerio.write_segmentation(str(path), segmentation, compression_level=1)


def write_image(path: Path, image: sitk.Image) -> None:
    sitk.WriteImage(image, str(path), True)


def write_transform(path: Path, transform: sitk.Transform) -> None:
    sitk.WriteTransform(transform, str(path))


def _stored_type(moving: Image) -> tuple[int, int] | None:
    """(pixel type, components) of the moving image's file, from its header; None for images built in memory."""
    if not Path(moving.source).is_file():
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(moving.source)
    try:
        reader.ReadImageInformation()
    except RuntimeError:  # changed on disk since: write the float32 copy
        return None
    return reader.GetPixelID(), reader.GetNumberOfComponents()


def warp_image(moving: Image, fixed: Image, transform: sitk.Transform) -> sitk.Image:
    """The moving image resampled on the fixed grid through the fixed → moving transform (linear), in the moving
    file's own pixel type and channels: an RGB photograph gives an RGB image (its file read again), an int16 CT an
    int16 CT (rounded and clipped to the type's range); outside the moving image: its minimum (black for colour)."""
    stored = _stored_type(moving)
    if stored is not None and stored[1] > 1:
        from ..core.image import read_stored

        colour = read_stored(moving.source)
        warped = sitk.Resample(colour, fixed.sitk_image, transform, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat32)
        dtype = sitk.GetArrayViewFromImage(colour).dtype
    else:
        background = float(np.min(moving.array))
        warped = sitk.Resample(moving.sitk_image, fixed.sitk_image, transform, sitk.sitkLinear, background)
        if stored is None or stored[0] == sitk.sitkFloat32:
            return warped
        dtype = sitk.GetArrayViewFromImage(sitk.Image(1, 1, stored[0])).dtype
    values = sitk.GetArrayFromImage(warped)
    vector = values.ndim > fixed.dimension
    geometry = warped.GetOrigin(), warped.GetSpacing(), warped.GetDirection()
    del warped
    if np.issubdtype(dtype, np.integer):  # in place: on a clinical grid each copy of the volume is ~250 MB
        limits = np.iinfo(dtype)
        if limits.max > 2 ** 24:  # float32 cannot hold a 32-bit type's limits: its clipped maximum would overflow
            values = values.astype(np.float64)
        np.clip(np.rint(values, out=values), limits.min, limits.max, out=values)
    values = values.astype(dtype, copy=False)
    result = sitk.GetImageFromArray(values, isVector=vector)
    del values
    result.SetOrigin(geometry[0])
    result.SetSpacing(geometry[1])
    result.SetDirection(geometry[2])
    return result


def write_transform_outputs(folder: Path, fixed: Image, moving: Image, transform, fixed_masks: list[np.ndarray],
                            moving_masks: list[np.ndarray]) -> tuple[sitk.Image, list[float | None]]:
    """A fitted transform's files: ``transform.h5`` (fixed → moving, as compact as exact), ``affine.tfm``,
    ``warped_moving.nrrd`` and, for a deformable transform, ``jacobian.nrrd`` (its determinant on the fixed domain
    at about a million voxels). Returns the warped image and each pair's Dice of ROI X with the registered ROI Y
    (masks on the images' own grids), measured on that same grid."""
    from ..transform.field import JACOBIAN_VOXELS, jacobian_image, working_reference
    from ..transform.metrics import registered_dice

    sitk_transform = transform.to_sitk()
    write_transform(folder / "transform.h5", sitk_transform)
    write_transform(folder / "affine.tfm", transform.affine_sitk())
    warped = warp_image(moving, fixed, sitk_transform)
    write_image(folder / "warped_moving.nrrd", warped)
    if transform.control_displacement is not None:
        write_image(folder / "jacobian.nrrd", jacobian_image(transform))
    reference = working_reference(fixed, JACOBIAN_VOXELS)
    return warped, registered_dice(fixed, moving, fixed_masks, moving_masks, sitk_transform, reference)


def write_report(path: Path, report: dict) -> None:
    """``report.json``: numpy values as plain numbers and lists, non-finite numbers as null."""
    path.write_text(json.dumps(_jsonable(report), indent=2))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_registration(result, output_dir: str | os.PathLike, figure: bool = True) -> Path:
    """Write the registration outputs (docs/cli.md lists them) into ``output_dir``; returns it."""
    fixed, moving = result.fixed_image, result.moving_image
    pairs = result.pairs
    names = [p.name for p in pairs]
    colors = [segment_color(i) for i in range(len(pairs))]
    fixed_masks, moving_masks = [result.fixed_mask(p) for p in pairs], [result.moving_mask(p) for p in pairs]
    with staged_output(output_dir, [fixed.source, moving.source]) as staging:
        write_segmentation(staging / "fixed_rois.seg.nrrd", fixed, fixed_masks, names, colors)
        write_segmentation(staging / "moving_rois.seg.nrrd", moving, moving_masks, names, colors)
        write_markups(staging / "prompts_x.mrk.json", [p.prompt_x_lps for p in pairs], names, "Prompt X")
        write_markups(staging / "prompts_y.mrk.json", [p.prompt_y_lps for p in pairs], names, "Prompt Y")
        warped, registered = None, [None] * len(pairs)
        if result.transform is not None:
            warped, registered = write_transform_outputs(staging, fixed, moving, result.transform, fixed_masks,
                                                         moving_masks)
        report = dict(result.report)
        report["inputs"] = {"fixed": fixed.source, "moving": moving.source,
                            "physical_units": {"fixed": has_physical_units(fixed), "moving": has_physical_units(moving)}}
        report["pairs"] = [{"name": p.name, "source": p.source, "accepted": p.accepted,
                            "rejected_because": p.rejected_because,
                            "rejected_by_user": p.rejected_by_user, "prompt_x_ras": lps_to_ras(p.prompt_x_lps),
                            "prompt_y_ras": lps_to_ras(p.prompt_y_lps), "color": colors[i],
                            "voxels_x": p.roi_x.voxels, "voxels_y": p.roi_y.voxels,
                            "window_x": p.roi_x.info.get("window"), **p.quality,
                            "dice_registered": registered[i]}
                           for i, p in enumerate(pairs)]
        write_report(staging / "report.json", report)
        if figure:
            draw_pairs(staging / "pairs.png", result, warped)
    return Path(output_dir)
