"""MRML side of PromptReg without Qt: nodes ↔ files for the worker, and loading its results into the scene.

Used by ``PromptRegLogic``; imports ``slicer`` only, so it runs (and is tested) on a headless
MRML scene (the ``slicer-core`` package) as well as inside Slicer.
"""
from __future__ import annotations

import json
from pathlib import Path

import slicer


def _scene():
    return slicer.mrmlScene


def _write(node, storage_node, path: Path) -> Path:
    storage_node.SetFileName(str(path))
    if not storage_node.WriteData(node):
        raise RuntimeError(f"could not write {node.GetName()} to {path}")
    return path


def write_volume(volume_node, path: Path) -> Path:
    """A scalar volume as NRRD, in its own geometry (the worker reads physical space from the file)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetUseCompression(False)
    return _write(volume_node, storage, Path(path))


def prompt_positions_ras(markups_node) -> list[list[float]]:
    """World RAS positions of a point list's defined control points (a parent transform included)."""
    positions = []
    for index in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(index) != slicer.vtkMRMLMarkupsNode.PositionDefined:
            continue
        point = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(index, point)
        positions.append(list(point))
    return positions


def roi_box_ras(roi_node) -> list[float]:
    """Two opposite corners (RAS) of an axis-aligned markups ROI."""
    center, size = [0.0] * 3, [0.0] * 3
    roi_node.GetCenterWorld(center)
    roi_node.GetSizeWorld(size)
    return [c - s / 2 for c, s in zip(center, size)] + [c + s / 2 for c, s in zip(center, size)]


def build_request(fixed_node, moving_node, prompt_node, folder: Path, options: dict, roi_node=None) -> dict:
    """Write the inputs into ``folder`` and return the worker request (see ``PromptRegLib.worker``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    request = {"fixed": str(write_volume(fixed_node, folder / "fixed.nrrd")),
               "moving": str(write_volume(moving_node, folder / "moving.nrrd")),
               "prompts_ras": prompt_positions_ras(prompt_node) if prompt_node is not None else [],
               "boxes_ras": [roi_box_ras(roi_node)] if roi_node is not None else []}
    request.update({key: value for key, value in options.items() if value is not None})
    return request


def _read(node, storage_node, path: Path):
    """Read a file into a new scene node; the node keeps no link to the (temporary) file."""
    _scene().AddNode(node)
    storage_node = _scene().AddNode(storage_node)
    storage_node.SetFileName(str(path))
    read = storage_node.ReadData(node)
    _scene().RemoveNode(storage_node)
    if not read:
        _scene().RemoveNode(node)
        raise RuntimeError(f"could not read {path}")
    return node


def load_volume(path: Path, name: str):
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetSingleFile(True)  # never read neighbouring files as a series
    return _read(node, storage, path)


def load_segmentation(path: Path, name: str, reference_volume=None):
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(name)
    _read(node, slicer.vtkMRMLSegmentationStorageNode(), path)
    if reference_volume is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    node.CreateDefaultDisplayNodes()
    return node


def load_point_list(path: Path, name: str):
    node = slicer.vtkMRMLMarkupsFiducialNode()
    node.SetName(name)
    return _read(node, slicer.vtkMRMLMarkupsJsonStorageNode(), path)


def load_transform(path: Path, name: str):
    """The worker's ``transform.h5`` (ITK, LPS, fixed → moving): Slicer stores it as the FromParent transform."""
    node = slicer.vtkMRMLGridTransformNode()
    node.SetName(name)
    return _read(node, slicer.vtkMRMLTransformStorageNode(), path)


def segment_names_and_colors(segmentation_node) -> list[tuple[str, tuple[float, float, float]]]:
    segmentation = segmentation_node.GetSegmentation()
    return [(segmentation.GetNthSegment(i).GetName(), tuple(round(c, 4) for c in segmentation.GetNthSegment(i).GetColor()))
            for i in range(segmentation.GetNumberOfSegments())]


def harden(node) -> None:
    """Apply the node's parent transform permanently (a volume under a grid transform is resampled)."""
    slicer.vtkSlicerTransformLogic().hardenTransform(node)


def load_results(result: dict, fixed_node, moving_node, harden_moving: bool = False) -> dict:
    """Load a worker result: paired segmentations, Prompt Y points, the grid transform observed by the moving
    volume (hardened on request). Returns the new nodes by role."""
    folder = Path(result["output_dir"])
    nodes = {
        "fixed_segmentation": load_segmentation(folder / "fixed_rois.seg.nrrd", f"{fixed_node.GetName()} ROIs",
                                                fixed_node),
        "moving_segmentation": load_segmentation(folder / "moving_rois.seg.nrrd", f"{moving_node.GetName()} ROIs",
                                                 moving_node),
        "prompt_y": load_point_list(folder / "prompts_y.mrk.json", "Prompt Y"),
        "report": json.loads((folder / "report.json").read_text()),
    }
    if (folder / "transform.h5").exists():
        transform = load_transform(folder / "transform.h5", f"{moving_node.GetName()} → {fixed_node.GetName()}")
        moving_node.SetAndObserveTransformNodeID(transform.GetID())
        nodes["moving_segmentation"].SetAndObserveTransformNodeID(transform.GetID())
        nodes["prompt_y"].SetAndObserveTransformNodeID(transform.GetID())
        nodes["transform"] = transform
        if harden_moving:
            harden(moving_node)
    return nodes


def transform_point_fixed_to_moving(transform_node, point_ras) -> list[float]:
    """Where a fixed-space RAS point samples the moving image (the FromParent direction)."""
    return list(transform_node.GetTransformFromParent().TransformPoint(list(point_ras)))
