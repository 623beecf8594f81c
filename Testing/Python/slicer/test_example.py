"""The "Try it" example, headless on slicer-core with CTChest4 (CTChest at a quarter resolution) standing in
for the SampleData download that only a real Slicer does: the coarse copy, the suggested Prompt X inside
the structures they name, and the same prompts at another resolution of the same CT."""
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import slicer  # noqa: E402  (slicer-core, a test dependency: missing it is an error, not a skip)
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "PromptReg"))
from PromptRegSlicer import example, mrml  # noqa: E402

#: ct_labels.nii.gz label values (data README): 5 right lung, 6 left lung, 7 tissue
EXPECTED_LABELS = {"left lung": 6, "right lung": 5, "body": 7}


@pytest.fixture()
def scene():
    slicer.mrmlScene = slicer.vtkMRMLScene()
    return slicer.mrmlScene


def _label_at(labels: sitk.Image, point_ras) -> int:
    return int(labels[labels.TransformPhysicalPointToIndex([-point_ras[0], -point_ras[1], point_ras[2]])])


def test_suggested_prompts_lie_in_the_structures_they_name(scene, data_dir):
    ct = mrml.load_volume(data_dir / "ctchest4" / "ct.nrrd", "CTChest")
    labels = sitk.ReadImage(str(data_dir / "ctchest4" / "ct_labels.nii.gz"))
    nodes = example.make_example(ct)
    prompts = nodes["prompts"]
    assert prompts.GetNumberOfControlPoints() == 3
    for index in range(3):
        name = prompts.GetNthControlPointLabel(index)
        assert _label_at(labels, prompts.GetNthControlPointPositionWorld(index)) == EXPECTED_LABELS[name], name


def test_suggested_prompts_hold_at_a_finer_resolution_of_the_same_ct(scene, data_dir, tmp_path):
    """CTChest itself is 4× finer than CTChest4 over the same field of view: the prompts must not move."""
    coarse = sitk.ReadImage(str(data_dir / "ctchest4" / "ct.nrrd"))
    spacing = [s / 2 for s in coarse.GetSpacing()]
    size = [n * 2 for n in coarse.GetSize()]
    origin = coarse.TransformContinuousIndexToPhysicalPoint([-0.25, -0.25, -0.25])
    fine = sitk.Resample(coarse, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, coarse.GetDirection())
    sitk.WriteImage(fine, str(tmp_path / "fine.nrrd"))
    on_coarse = example.suggested_prompts_ras(mrml.load_volume(data_dir / "ctchest4" / "ct.nrrd", "coarse"))
    on_fine = example.suggested_prompts_ras(mrml.load_volume(tmp_path / "fine.nrrd", "fine"))
    for name in on_coarse:
        np.testing.assert_allclose(on_fine[name], on_coarse[name], atol=1.0)


def test_coarse_copy_reaches_the_example_voxel_size(scene, data_dir, tmp_path):
    coarse = sitk.ReadImage(str(data_dir / "ctchest4" / "ct.nrrd"))
    fine = sitk.Resample(coarse, [n * 4 for n in coarse.GetSize()[:2]] + [coarse.GetSize()[2] * 4],
                         sitk.Transform(), sitk.sitkNearestNeighbor, coarse.GetOrigin(),
                         [s / 4 for s in coarse.GetSpacing()], coarse.GetDirection())
    sitk.WriteImage(fine, str(tmp_path / "fine.nrrd"))
    copy = example.coarse_copy(mrml.load_volume(tmp_path / "fine.nrrd", "fine"), "coarse")
    np.testing.assert_allclose(copy.GetSpacing(), [3.05, 3.05, 10.0], atol=0.1)
    assert slicer.util.arrayFromVolume(copy).shape == (34, 128, 128)


def test_slab_keeps_the_slices_near_the_prompt(scene, data_dir):
    ct = mrml.load_volume(data_dir / "ctchest4" / "ct.nrrd", "CTChest")
    lung = example.suggested_prompts_ras(ct)["left lung"]
    slab = example.slab_around(ct, lung[2], "slab", margin_mm=10.0)
    assert slicer.util.arrayFromVolume(slab).shape[0] == 3
    middle = example.index_to_ras(slab, [64, 64, 1])  # the prompt's slice is the slab's middle one
    assert abs(middle[2] - lung[2]) < 5.0
