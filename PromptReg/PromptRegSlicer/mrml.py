"""MRML side of PromptReg without Qt: nodes ↔ files for the worker, and loading its results into the scene.

Used by ``PromptRegLogic``; imports ``slicer`` only, so it runs (and is tested) on a headless MRML scene
(the ``slicer-core`` package) as well as inside Slicer.

Coordinates: prompts are world RAS positions, so the fixed volume is exported in world coordinates too
(a linear parent transform goes into the file's geometry, a non-linear one is hardened into a copy). The
moving volume is exported in its own coordinates: the result transform (fixed world → moving) becomes its
parent transform, replacing any earlier one — the previous result included.
"""
from __future__ import annotations

import json
from pathlib import Path

import slicer
import vtk

#: output roles, each one node reused from run to run
OUTPUT_ROLES = ("fixed_segmentation", "moving_segmentation", "prompt_y", "transform", "warped")


def _scene():
    return slicer.mrmlScene


def _write(node, storage_node, path: Path) -> Path:
    storage_node.SetFileName(str(path))
    if not storage_node.WriteData(node):
        raise RuntimeError(f"could not write {node.GetName()} to {path}")
    return path


def write_volume(volume_node, path: Path) -> Path:
    """A scalar volume as NRRD, in its own geometry (its parent transform, if any, is left out)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetUseCompression(False)
    return _write(volume_node, storage, Path(path))


def _geometry_copy(volume_node):
    """A scalar volume node (not in the scene) sharing ``volume_node``'s voxels and geometry."""
    copy = slicer.vtkMRMLScalarVolumeNode()
    copy.SetName(volume_node.GetName())
    copy.SetAndObserveImageData(volume_node.GetImageData())
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    copy.SetIJKToRASMatrix(matrix)
    return copy


def write_volume_world(volume_node, path: Path) -> Path:
    """A scalar volume as NRRD in world coordinates: a linear parent transform is folded into the geometry
    (no resampling); a non-linear one is hardened into a temporary copy (resampled)."""
    parent = volume_node.GetParentTransformNode()
    if parent is None:
        return write_volume(volume_node, path)
    if parent.IsTransformToWorldLinear():
        to_world, ijk_to_ras = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        volume_node.GetIJKToRASMatrix(ijk_to_ras)
        world = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Multiply4x4(to_world, ijk_to_ras, world)
        copy = _geometry_copy(volume_node)
        copy.SetIJKToRASMatrix(world)
        return write_volume(copy, path)
    copy = _scene().AddNode(_geometry_copy(volume_node))
    try:
        copy.SetAndObserveTransformNodeID(parent.GetID())
        harden(copy)
        return write_volume(copy, path)
    finally:
        _scene().RemoveNode(copy)


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
    """Two opposite corners (world RAS) of an axis-aligned markups ROI."""
    center, size = [0.0] * 3, [0.0] * 3
    roi_node.GetCenterWorld(center)
    roi_node.GetSizeWorld(size)
    return [c - s / 2 for c, s in zip(center, size)] + [c + s / 2 for c, s in zip(center, size)]


def original_file(volume_node) -> str | None:
    """The file a volume was loaded from (its storage node's), or None for one made in the scene."""
    storage = volume_node.GetStorageNode()
    return storage.GetFileName() if storage is not None and storage.GetFileName() else None


def _elements(matrix) -> tuple:
    return tuple(matrix.GetElement(row, column) for row in range(4) for column in range(4))


def volume_state(volume_node, world: bool = False) -> tuple:
    """What the file :func:`write_volume` (``world``: :func:`write_volume_world`) would write depends on: the node,
    its voxels (the image data's modification time, which counts its arrays' too), its geometry and, in world
    coordinates, its parent transform (a linear one by its matrix, another by its modification time). Equal states
    write the same file, so a volume is exported once per state and the worker sees the same image again."""
    image = volume_node.GetImageData()
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    state = (volume_node.GetID(), image.GetMTime() if image is not None else None, _elements(ijk_to_ras))
    if not world:
        return state
    parent = volume_node.GetParentTransformNode()
    if parent is None:
        placement = None
    elif parent.IsTransformToWorldLinear():
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        placement = _elements(to_world)
    else:
        placement = (parent.GetID(), parent.GetTransformToWorldMTime())
    return state + (placement,)


def request_fields(fixed_node, moving_node, prompt_node, options: dict, roi_node=None) -> dict:
    """A registration request's fields but its image files (see ``PromptRegLib.apps.worker``): the files the volumes
    were loaded from, the prompts (world RAS) and the options that are set."""
    request = {"original_files": {"fixed": original_file(fixed_node), "moving": original_file(moving_node)},
               "prompts_ras": prompt_positions_ras(prompt_node) if prompt_node is not None else [],
               "boxes_ras": [roi_box_ras(roi_node)] if roi_node is not None else []}
    request.update({key: value for key, value in options.items() if value is not None})
    return request


def build_request(fixed_node, moving_node, prompt_node, folder: Path, options: dict, roi_node=None) -> dict:
    """Write the inputs into ``folder`` and return the worker request (see ``PromptRegLib.apps.worker``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    request = {"fixed": str(write_volume_world(fixed_node, folder / "fixed.nrrd")),
               "moving": str(write_volume(moving_node, folder / "moving.nrrd"))}
    request.update(request_fields(fixed_node, moving_node, prompt_node, options, roi_node))
    return request


def build_refit_request(pairs_from: Path, rejected: list[str], options: dict, prompt_y_ras: dict | None = None) -> dict:
    """A refit of the run whose outputs lie in ``pairs_from``: from its written ROI pairs and its own input
    files (the moving volume as it was exported then, never a hardened or re-transformed one). ``prompt_y_ras``
    (pair name → R, A, S in the moving volume's coordinates) corrects those pairs' Prompt Y first."""
    request = {"request": "refit", "pairs_from": str(pairs_from), "reject_pairs": list(rejected)}
    if prompt_y_ras:
        request["prompt_y_ras"] = {name: [float(v) for v in point] for name, point in prompt_y_ras.items()}
    request.update({key: value for key, value in options.items() if value is not None})
    return request


def _read(node, storage_node, path: Path):
    """Read a file into ``node`` (added to the scene if new); the node keeps no link to the (temporary) file."""
    if node.GetScene() is None:
        _scene().AddNode(node)
    storage_node = _scene().AddNode(storage_node)
    storage_node.SetFileName(str(path))
    read = storage_node.ReadData(node)
    _scene().RemoveNode(storage_node)
    if not read:
        raise RuntimeError(f"could not read {path}")
    return node


def _nrrd_is_colour(path: Path) -> bool:
    """True for a NRRD whose pixels have several components (its ``kinds`` field names a vector or colour axis)."""
    if Path(path).suffix != ".nrrd":
        return False
    with open(path, "rb") as handle:
        header = handle.read(8192).split(b"\n\n")[0]
    kinds = [line for line in header.splitlines() if line.startswith(b"kinds:")]
    return bool(kinds) and any(word in kinds[0].lower() for word in (b"vector", b"color"))


def load_volume(path: Path, name: str, node=None):
    """A volume file into ``node`` (a new scalar volume node by default); a colour file (RGB photograph or slide)
    into a vector volume node, as Slicer shows colour images — replacing a scalar ``node`` given for it."""
    colour = _nrrd_is_colour(path)
    if colour and node is not None and not node.IsA("vtkMRMLVectorVolumeNode"):
        _scene().RemoveNode(node)
        node = None
    node = node or (slicer.vtkMRMLVectorVolumeNode() if colour else slicer.vtkMRMLScalarVolumeNode())
    node.SetName(name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetSingleFile(True)  # never read neighbouring files as a series
    _read(node, storage, path)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def load_segmentation(path: Path, name: str, reference_volume=None, node=None):
    node = node or slicer.vtkMRMLSegmentationNode()
    node.SetName(name)
    _read(node, slicer.vtkMRMLSegmentationStorageNode(), path)
    if reference_volume is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def load_point_list(path: Path, name: str, node=None):
    node = node or slicer.vtkMRMLMarkupsFiducialNode()
    node.SetName(name)
    node.RemoveAllControlPoints()
    return _read(node, slicer.vtkMRMLMarkupsJsonStorageNode(), path)


def load_transform(path: Path, name: str, node=None, linear: bool = False):
    """The worker's ``transform.h5`` (ITK, LPS, fixed → moving): Slicer stores it as the FromParent transform.

    An affine result (``linear``) goes into a linear transform node — a matrix Slicer can harden without
    resampling — and a deformable one into a grid transform node; a reused ``node`` of the other kind is replaced.
    The file's control-grid field is exact under *linear* interpolation (as ITK reads it); Slicer would
    interpolate a grid cubically and move points up to a tenth of a millimetre elsewhere, so the grid is set
    to linear."""
    wanted = "vtkMRMLLinearTransformNode" if linear else "vtkMRMLGridTransformNode"
    if node is not None and node.GetClassName() != wanted:
        _scene().RemoveNode(node)
        node = None
    node = node or (slicer.vtkMRMLLinearTransformNode() if linear else slicer.vtkMRMLGridTransformNode())
    node.SetName(name)
    node = _read(node, slicer.vtkMRMLTransformStorageNode(), path)
    grid = node.GetTransformFromParent()
    if hasattr(grid, "SetInterpolationModeToLinear"):
        grid.SetInterpolationModeToLinear()
        node.Modified()
    return node


def segment_names_and_colors(segmentation_node) -> list[tuple[str, tuple[float, float, float]]]:
    segmentation = segmentation_node.GetSegmentation()
    return [(segmentation.GetNthSegment(i).GetName(), tuple(round(c, 4) for c in segmentation.GetNthSegment(i).GetColor()))
            for i in range(segmentation.GetNumberOfSegments())]


def harden(node) -> None:
    """Apply the node's parent transform permanently (a volume under a grid transform is resampled)."""
    slicer.vtkSlicerTransformLogic().hardenTransform(node)


def load_results(result: dict, fixed_node, moving_node, outputs: dict | None = None, load_warped: bool = False) -> dict:
    """Load a worker result into the scene, reusing the nodes in ``outputs`` (role → node, see
    :data:`OUTPUT_ROLES`) and creating only the missing ones: paired segmentations, Prompt Y, the grid
    transform the moving volume (with its segmentation and Prompt Y) observes, and on request the warped
    moving volume on the fixed grid. Returns the nodes by role, and the report."""
    folder = Path(result["output_dir"])
    outputs = {role: node for role, node in (outputs or {}).items() if node is not None and node.GetScene() is not None}
    nodes = {
        "fixed_segmentation": load_segmentation(folder / "fixed_rois.seg.nrrd", f"{fixed_node.GetName()} ROIs",
                                                fixed_node, outputs.get("fixed_segmentation")),
        "moving_segmentation": load_segmentation(folder / "moving_rois.seg.nrrd", f"{moving_node.GetName()} ROIs",
                                                 moving_node, outputs.get("moving_segmentation")),
        "prompt_y": load_point_list(folder / "prompts_y.mrk.json", "Prompt Y", outputs.get("prompt_y")),
    }
    report = json.loads((folder / "report.json").read_text())
    transform = load_result_transform(folder, report, fixed_node, moving_node, outputs.get("transform"),
                                      (nodes["moving_segmentation"], nodes["prompt_y"]))
    if transform is not None:
        nodes["transform"] = transform
        if load_warped:
            nodes["warped"] = load_volume(folder / "warped_moving.nrrd", f"{moving_node.GetName()} registered",
                                          outputs.get("warped"))
    nodes["report"] = report
    return nodes


def load_result_transform(folder: Path, report: dict, fixed_node, moving_node, node=None, observers=()):
    """A result folder's ``transform.h5`` into ``node`` (a linear or grid transform node as its kind needs, see
    :func:`load_transform`), observed by the moving volume and ``observers``; None for a result without one."""
    path = Path(folder) / "transform.h5"
    if not path.exists():
        return None
    linear = report.get("fit_options_used", {}).get("transform") == "affine"
    transform = load_transform(path, transform_name(moving_node, fixed_node), node, linear=linear)
    for observer in (moving_node, *observers):
        if observer is not None and observer.GetScene() is not None:
            observer.SetAndObserveTransformNodeID(transform.GetID())
    return transform


def show_affine(affine_ras, fixed_node, moving_node, node=None, linear: bool = True, observers=()):
    """A quick affine shown before the result: ``affine_ras`` (4 × 4, fixed RAS → moving RAS, the worker's ``affine``
    event) as the FromParent transform of ``node`` — the node the result will be loaded into, so the result replaces it
    there: a linear transform node when the result is affine (``linear``), else a grid transform node holding the
    matrix until the grid arrives; a reused ``node`` of the other kind is replaced. The moving volume and
    ``observers`` observe it."""
    wanted = "vtkMRMLLinearTransformNode" if linear else "vtkMRMLGridTransformNode"
    if node is not None and (node.GetScene() is None or node.GetClassName() != wanted):
        if node.GetScene() is not None:
            _scene().RemoveNode(node)
        node = None
    if node is None:
        node = _scene().AddNewNodeByClass(wanted, transform_name(moving_node, fixed_node))
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(affine_ras[row][column]))
    affine = vtk.vtkTransform()
    affine.SetMatrix(matrix)
    node.SetAndObserveTransformFromParent(affine)
    for observer in (moving_node, *observers):
        if observer is not None and observer.GetScene() is not None:
            observer.SetAndObserveTransformNodeID(node.GetID())
    return node


def transform_name(moving_node, fixed_node) -> str:
    """The result transform's name, saying its direction as Slicer applies it: it moves the moving volume onto the
    fixed one (the file, ITK's convention, holds the same transform as fixed → moving point mapping)."""
    return f"{moving_node.GetName()} → {fixed_node.GetName()} (moving-to-fixed)"


def prompt_y_edits(prompt_y_node, report: dict, tolerance_mm: float = 0.5) -> dict[str, list[float]]:
    """Prompt Y points the user moved since ``report``'s run: pair name (the point's label) → its R, A, S in the
    moving volume's own coordinates (the node observes the result transform; its local positions are those)."""
    written = {pair["name"]: pair.get("prompt_y_ras") for pair in report["pairs"]}
    edits = {}
    for index in range(prompt_y_node.GetNumberOfControlPoints()):
        name = prompt_y_node.GetNthControlPointLabel(index)
        if name not in written or prompt_y_node.GetNthControlPointPositionStatus(index) != \
                slicer.vtkMRMLMarkupsNode.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        prompt_y_node.GetNthControlPointPosition(index, position)
        before = list(written[name] or []) + [0.0] * 3
        if sum((a - b) ** 2 for a, b in zip(position, before[:3])) > tolerance_mm ** 2:
            edits[name] = position
    return edits


def set_prompt_positions(markups_node, positions_ras: list[list[float]]) -> bool:
    """Put a point list's control points back at ``positions_ras`` (undo); False, untouched, if the counts differ."""
    if markups_node is None or markups_node.GetNumberOfControlPoints() != len(positions_ras):
        return False
    with _batch(markups_node):
        for index, position in enumerate(positions_ras):
            point = (list(position) + [0.0] * 3)[:3]
            markups_node.SetNthControlPointPositionWorld(index, *point)
    return True


class _batch:
    """One Modified event for many changes of a node (StartModify/EndModify)."""

    def __init__(self, node):
        self.node = node

    def __enter__(self):
        self.was = self.node.StartModify()

    def __exit__(self, *exc):
        self.node.EndModify(self.was)


#: colours of the Jacobian determinant: folding (≤ 0) red, compression blue, no change white, expansion orange
JACOBIAN_COLOURS = ((-1.0, (0.8, 0.0, 0.0)), (0.0, (1.0, 0.0, 0.0)), (0.001, (0.1, 0.2, 0.8)),
                    (1.0, (1.0, 1.0, 1.0)), (2.0, (1.0, 0.6, 0.0)))


def load_jacobian(folder: Path, name: str, node=None):
    """The result's ``jacobian.nrrd`` (det of the transform on the fixed domain) shown with :data:`JACOBIAN_COLOURS`,
    folding in red; None for an affine result (its determinant is one number)."""
    path = Path(folder) / "jacobian.nrrd"
    if not path.is_file():
        return None
    node = load_volume(path, name, node)
    colours = _scene().GetFirstNodeByName("PromptReg Jacobian colours")
    if colours is None:
        colours = slicer.vtkMRMLProceduralColorNode()
        colours.SetName("PromptReg Jacobian colours")
        colours.SetType(slicer.vtkMRMLColorNode.User)
        function = vtk.vtkColorTransferFunction()
        for value, rgb in JACOBIAN_COLOURS:
            function.AddRGBPoint(value, *rgb)
        colours.SetAndObserveColorTransferFunction(function)
        _scene().AddNode(colours)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(colours.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(JACOBIAN_COLOURS[0][0], JACOBIAN_COLOURS[-1][0])
    return node


def checkerboard(fixed_node, warped_node, square_mm: float = 20.0, node=None):
    """A checkerboard of the fixed volume and the registered moving volume (on the fixed grid), squares of about
    ``square_mm``, each volume mapped through its own display window to [0, 1] so CT and MR tiles compare."""
    if warped_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError("the checkerboard needs a grey registered volume; use the fade for colour images")
    fixed_image, warped_image = fixed_node.GetImageData(), warped_node.GetImageData()
    if fixed_image.GetDimensions() != warped_image.GetDimensions():
        raise ValueError("the registered volume is not on the fixed volume's grid")
    checker = vtk.vtkImageCheckerboard()
    for port, volume in enumerate((fixed_node, warped_node)):
        checker.SetInputData(port, _display_normalised(volume))
    dimensions, spacing = fixed_image.GetDimensions(), fixed_node.GetSpacing()
    checker.SetNumberOfDivisions(*[max(1, round(n * s / square_mm)) for n, s in zip(dimensions, spacing)])
    checker.Update()
    node = node or _scene().AddNewNodeByClass("vtkMRMLScalarVolumeNode", "PromptReg checkerboard")
    matrix = vtk.vtkMatrix4x4()
    fixed_node.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveImageData(checker.GetOutput())
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().AutoWindowLevelOff()
    node.GetDisplayNode().SetWindowLevelMinMax(0.0, 1.0)
    return node


def _display_normalised(volume_node):
    """The volume's voxels as float, (value − window low) / window width: what the user sees, as 0–1."""
    display = volume_node.GetDisplayNode()
    if display is not None and display.GetWindow() > 0:
        low, width = display.GetLevel() - display.GetWindow() / 2, display.GetWindow()
    else:
        low, high = volume_node.GetImageData().GetScalarRange()
        width = max(high - low, 1e-9)
    scale = vtk.vtkImageShiftScale()
    scale.SetInputData(volume_node.GetImageData())
    scale.SetShift(-low)
    scale.SetScale(1.0 / width)
    scale.SetOutputScalarTypeToFloat()
    scale.ClampOverflowOff()
    scale.Update()
    return scale.GetOutput()


def transform_point_fixed_to_moving(transform_node, point_ras) -> list[float]:
    """Where a fixed-space RAS point samples the moving image (the FromParent direction)."""
    return list(transform_node.GetTransformFromParent().TransformPoint(list(point_ras)))
