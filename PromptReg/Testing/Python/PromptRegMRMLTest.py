"""PromptReg's MRML helpers in a scene: world-coordinate export, output nodes reused, the example's deformation.

Needs neither torch nor the worker: run by Slicer's harness (``slicer_add_python_unittest``) inside
Slicer, and headless on slicer-core by Testing/Python/test_slicer_harness.py.
"""
import json
import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np
import slicer
import vtk

from PromptRegSlicer import example, mrml


def _blobs_volume(name: str, shape=(12, 40, 48), spacing=(2.0, 2.0, 5.0)):
    """A smooth synthetic volume (numpy order k, j, i) with an oblique-free RAS geometry."""
    k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    values = 100 * np.exp(-((i - 20) ** 2 + (j - 18) ** 2) / 60 - (k - 6) ** 2 / 8)
    values += 60 * np.exp(-((i - 32) ** 2 + (j - 26) ** 2) / 30 - (k - 5) ** 2 / 12)
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetSpacing(*spacing)
    node.SetOrigin(-40.0, -30.0, 10.0)
    slicer.util.updateVolumeFromArray(node, values.astype(np.float32))
    return node


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


class PromptRegMRMLTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()
        self.folder = Path(tempfile.mkdtemp(prefix="PromptRegMRMLTest-"))

    def tearDown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    def test_fixed_volume_and_prompts_are_exported_in_world_coordinates(self):
        fixed, moving = _blobs_volume("fixed"), _blobs_volume("moving")
        motion = vtk.vtkTransform()
        motion.Translate(12.0, -5.0, 3.0)
        motion.RotateZ(10.0)
        parent = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "pre-alignment")
        parent.SetMatrixTransformToParent(motion.GetMatrix())
        fixed.SetAndObserveTransformNodeID(parent.GetID())
        prompts = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Prompt X")
        prompts.AddControlPoint(0.0, 5.0, 40.0)
        prompts.SetAndObserveTransformNodeID(parent.GetID())
        request = mrml.build_request(fixed, moving, prompts, self.folder, {"auto_pairs": 0})
        exported = mrml.load_volume(Path(request["fixed"]), "exported")
        to_world = np.array([[motion.GetMatrix().GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(_ijk_to_ras(exported), to_world @ _ijk_to_ras(fixed), atol=1e-4)
        np.testing.assert_allclose(request["prompts_ras"][0], motion.TransformPoint([0.0, 5.0, 40.0]), atol=1e-4)
        self.assertIs(fixed.GetParentTransformNode(), parent)  # the scene is left as it was

    def test_a_non_linear_parent_is_hardened_into_a_copy(self):
        fixed = _blobs_volume("fixed")
        before = slicer.util.arrayFromVolume(fixed).copy()
        bend = example.known_deformation(fixed, "bend")
        fixed.SetAndObserveTransformNodeID(bend.GetID())
        path = mrml.write_volume_world(fixed, self.folder / "fixed.nrrd")
        exported = slicer.util.arrayFromVolume(mrml.load_volume(path, "exported"))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(fixed), before)
        self.assertIs(fixed.GetParentTransformNode(), bend)
        self.assertGreater(float(np.abs(exported.mean(axis=0)).sum()), 0)
        self.assertFalse(exported.shape == before.shape and np.allclose(exported, before))

    def _write_outputs(self, fixed, moving, folder: Path, shift_mm: float) -> dict:
        """An output folder as the worker writes it, made with Slicer's own writers."""
        folder.mkdir(parents=True, exist_ok=True)
        for volume, name in ((fixed, "fixed_rois.seg.nrrd"), (moving, "moving_rois.seg.nrrd")):
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
            labels = (slicer.util.arrayFromVolume(volume) > 50).astype(np.uint8)
            labels[:, :, 30:] *= 2
            labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            labelmap.CopyOrientation(volume)
            slicer.util.updateVolumeFromArray(labelmap, labels)
            slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
            mrml._write(segmentation, slicer.vtkMRMLSegmentationStorageNode(), folder / name)
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "y")
        points.AddControlPoint(1.0, 2.0, 30.0)
        mrml._write(points, slicer.vtkMRMLMarkupsJsonStorageNode(), folder / "prompts_y.mrk.json")
        shift = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "t")
        matrix = vtk.vtkMatrix4x4()
        matrix.SetElement(0, 3, shift_mm)
        shift.SetMatrixTransformFromParent(matrix)
        mrml._write(shift, slicer.vtkMRMLTransformStorageNode(), folder / "transform.h5")
        mrml.write_volume(moving, folder / "warped_moving.nrrd")
        (folder / "report.json").write_text(json.dumps({"pairs": [], "device": "cpu"}))
        return {"output_dir": str(folder)}

    def test_results_reuse_the_output_nodes(self):
        fixed, moving = _blobs_volume("fixed"), _blobs_volume("moving")
        first = mrml.load_results(self._write_outputs(fixed, moving, self.folder / "a", 5.0), fixed, moving,
                                  load_warped=True)
        outputs = {role: first[role] for role in mrml.OUTPUT_ROLES}
        second_outputs = self._write_outputs(fixed, moving, self.folder / "b", 9.0)
        count_with_writers = slicer.mrmlScene.GetNumberOfNodes()
        second = mrml.load_results(second_outputs, fixed, moving, outputs, load_warped=True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count_with_writers)
        for role in mrml.OUTPUT_ROLES:
            self.assertIs(second[role], first[role], role)
        self.assertIs(moving.GetParentTransformNode(), second["transform"])
        moved = mrml.transform_point_fixed_to_moving(second["transform"], [0.0, 0.0, 0.0])
        np.testing.assert_allclose(moved, [9.0, 0.0, 0.0], atol=1e-3)
        self.assertEqual(second["fixed_segmentation"].GetSegmentation().GetNumberOfSegments(), 2)
        self.assertEqual(second["prompt_y"].GetNumberOfControlPoints(), 1)

    def test_example_moving_volume_is_the_fixed_one_under_the_true_deformation(self):
        fixed = _blobs_volume("ct", shape=(16, 48, 48), spacing=(3.0, 3.0, 10.0))
        nodes = example.make_example(fixed)
        truth = nodes["truth"].GetTransformToParent()
        fixed_array = slicer.util.arrayFromVolume(nodes["fixed"])
        moving_array = slicer.util.arrayFromVolume(nodes["moving"])
        ras_to_ijk = vtk.vtkMatrix4x4()
        nodes["moving"].GetRASToIJKMatrix(ras_to_ijk)
        ijk_to_ras = _ijk_to_ras(nodes["fixed"])

        def moving_at(point):
            i, j, k = np.round(ras_to_ijk.MultiplyPoint([*point, 1.0])[:3]).astype(int)
            return float(moving_array[k, j, i])

        through_truth, in_place = [], []
        for k, j, i in np.argwhere(fixed_array > 40)[::7]:
            point = (ijk_to_ras @ [i, j, k, 1.0])[:3]
            through_truth.append(abs(fixed_array[k, j, i] - moving_at(truth.TransformPoint(point))))
            in_place.append(abs(fixed_array[k, j, i] - moving_at(point)))
        self.assertLess(np.median(through_truth), 0.5 * np.median(in_place))
        self.assertEqual(nodes["prompts"].GetNumberOfControlPoints(), len(example.SUGGESTED_PROMPTS))
