"""Try it at once: Slicer's CTChest sample, a moving copy under a known smooth deformation, suggested prompts.

Everything here is made on the fly from the one CT (downloaded once by SampleData, then cached): a coarse
copy for speed (about 3 × 3 × 10 mm voxels), a smooth deformation (a rotation, a shift and a bump, as a
grid transform kept in the scene as the truth), the moving volume hardened under it, and Prompt X points
inside the lungs and the body. The registration result's FromParent transform should match the truth's
ToParent transform (both map fixed points to moving points).
"""
from __future__ import annotations

import math

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .mrml import harden

#: suggested Prompt X as fractions of the volume's index extent (i, j, k), read off CTChest4 (CTChest at a
#: quarter of the resolution; PromptRegLib/apps/bench/case_files/ctchest4_3d.json) so they hold at any resolution of CTChest
SUGGESTED_PROMPTS = {"left lung": (0.316, 0.473, 0.603), "right lung": (0.691, 0.473, 0.603),
                     "body": (0.504, 0.551, 0.162)}
#: coarse voxel size (mm) of the example: the registration runs in about a minute on a CPU
EXAMPLE_VOXEL_MM = (3.0, 3.0, 10.0)


def coarse_copy(volume_node, name: str, voxel_mm=EXAMPLE_VOXEL_MM):
    """A new volume sampling every n-th voxel along each axis (n ≈ voxel_mm / spacing, at least 1);
    ``voxel_mm=None``: a plain copy."""
    array = slicer.util.arrayFromVolume(volume_node)  # numpy order (k, j, i)
    steps = [max(1, round(target / spacing)) for target, spacing in zip(voxel_mm, volume_node.GetSpacing())] \
        if voxel_mm else [1, 1, 1]
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    for column, step in enumerate(steps):
        for row in range(3):
            matrix.SetElement(row, column, matrix.GetElement(row, column) * step)
    copy = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    copy.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(copy, np.ascontiguousarray(array[::steps[2], ::steps[1], ::steps[0]]))
    copy.CreateDefaultDisplayNodes()
    return copy


def index_to_ras(volume_node, index) -> list[float]:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return list(matrix.MultiplyPoint([*index, 1.0])[:3])


def suggested_prompts_ras(volume_node) -> dict[str, list[float]]:
    """The suggested Prompt X on this volume (RAS)."""
    size = volume_node.GetImageData().GetDimensions()
    return {name: index_to_ras(volume_node, [f * n - 0.5 for f, n in zip(fractions, size)])
            for name, fractions in SUGGESTED_PROMPTS.items()}


def known_deformation(volume_node, name: str, rotation_deg: float = 4.0, shift_mm=(6.0, -4.0, 3.0),
                      bump_mm: float = 4.0, grid_points: int = 7):
    """A grid transform node whose ToParent maps a point x to R(x − c) + c + shift + bump(x): a rotation
    about the S axis through the volume's centre c, a shift, and a sine bump along R vanishing at the
    volume's bounds."""
    bounds = [0.0] * 6
    volume_node.GetRASBounds(bounds)
    low, high = np.array(bounds[0::2]), np.array(bounds[1::2])
    axes = [np.linspace(lo, hi, grid_points) for lo, hi in zip(low, high)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (r, a, s, 3)
    centre = (low + high) / 2
    angle = math.radians(rotation_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0],
                         [0.0, 0.0, 1.0]])
    moved = (points - centre) @ rotation.T + centre + np.asarray(shift_mm, dtype=float)
    unit = (points - low) / (high - low)
    moved[..., 0] += bump_mm * np.prod(np.sin(math.pi * unit), axis=-1)
    displacement = moved - points
    grid = vtk.vtkImageData()
    grid.SetOrigin(*low)
    grid.SetSpacing(*((high - low) / (grid_points - 1)))
    grid.SetDimensions(grid_points, grid_points, grid_points)
    # VTK point order: x fastest, so (s, a, r) in numpy order
    values = numpy_support.numpy_to_vtk(np.ascontiguousarray(displacement.transpose(2, 1, 0, 3)).reshape(-1, 3),
                                        deep=True, array_type=vtk.VTK_DOUBLE)
    values.SetNumberOfComponents(3)
    grid.GetPointData().SetScalars(values)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetInterpolationModeToCubic()
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    node.SetAndObserveTransformToParent(transform)
    return node


def make_example(ct_node) -> dict:
    """From a loaded CTChest: fixed (coarse copy), moving (deformed copy), truth transform, Prompt X."""
    fixed = coarse_copy(ct_node, "CTChest fixed")
    truth = known_deformation(fixed, "CTChest true deformation")
    moving = coarse_copy(fixed, "CTChest moving", voxel_mm=None)
    moving.SetAndObserveTransformNodeID(truth.GetID())
    harden(moving)
    prompts = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Prompt X")
    for label, position in suggested_prompts_ras(fixed).items():
        prompts.SetNthControlPointLabel(prompts.AddControlPoint(*position), label)
    return {"fixed": fixed, "moving": moving, "truth": truth, "prompts": prompts}


def slab_around(volume_node, s_ras: float, name: str, margin_mm: float = 10.0):
    """A new volume with the axial slices (k) within ``margin_mm`` of the slice nearest to ``s_ras``
    (for a quick self-test on a few slices)."""
    ras_to_ijk, ijk_to_ras = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    array = slicer.util.arrayFromVolume(volume_node)
    centre = index_to_ras(volume_node, [(n - 1) / 2 for n in volume_node.GetImageData().GetDimensions()])
    k_centre = ras_to_ijk.MultiplyPoint([centre[0], centre[1], s_ras, 1.0])[2]
    nearest, half = round(k_centre), math.floor(margin_mm / volume_node.GetSpacing()[2] + 1e-6)
    start, stop = max(0, nearest - half), min(array.shape[0], nearest + half + 1)
    origin = ijk_to_ras.MultiplyPoint([0.0, 0.0, float(start), 1.0])
    for row in range(3):
        ijk_to_ras.SetElement(row, 3, origin[row])
    slab = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slab.SetIJKToRASMatrix(ijk_to_ras)
    slicer.util.updateVolumeFromArray(slab, np.ascontiguousarray(array[start:stop]))
    slab.CreateDefaultDisplayNodes()
    return slab
