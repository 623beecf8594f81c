"""Slicer side on a real headless MRML scene (slicer-core): inputs out to files, worker results back in."""
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "PromptReg"))
import PromptRegMRML  # noqa: E402

from PromptRegLib.worker_client import WorkerRun  # noqa: E402


@pytest.fixture(scope="module")
def scene_with_result(ct_case, cache_dir, tmp_path_factory):
    slicer.mrmlScene = slicer.vtkMRMLScene()
    case = ct_case["ctchest4_2d"]
    fixed = PromptRegMRML.load_volume(Path(case.path(case.fixed)), "fixed")
    moving = PromptRegMRML.load_volume(Path(case.path(case.moving)), "moving")
    prompts = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Prompt X")
    for point in case.prompts_ras[:2]:
        prompts.AddControlPoint(point[0], point[1], 0.0)
    folder = tmp_path_factory.mktemp("slicer-inputs")
    request = PromptRegMRML.build_request(fixed, moving, prompts, folder, {"auto_pairs": 0, "warps": 0})
    run = WorkerRun().start(request)
    run.wait(timeout=600)
    assert run.error is None, run.log()
    nodes = PromptRegMRML.load_results(run.result, fixed, moving)
    return case, fixed, moving, nodes, run


def test_mrml_paired_segments_share_names_and_colours(scene_with_result):
    _, _, _, nodes, _ = scene_with_result
    fixed_segments = PromptRegMRML.segment_names_and_colors(nodes["fixed_segmentation"])
    moving_segments = PromptRegMRML.segment_names_and_colors(nodes["moving_segmentation"])
    assert len(fixed_segments) == 2 and fixed_segments == moving_segments


def test_mrml_prompt_y_points_are_loaded(scene_with_result):
    _, _, _, nodes, run = scene_with_result
    assert nodes["prompt_y"].GetNumberOfControlPoints() == len(run.result["pairs"])
    ras = [0.0] * 3
    nodes["prompt_y"].GetNthControlPointPosition(0, ras)
    np.testing.assert_allclose(ras[:2], run.result["pairs"][0]["prompt_y_ras"][:2], atol=1e-3)


def test_mrml_grid_transform_is_observed_and_maps_like_the_cli(scene_with_result):
    _, fixed, moving, nodes, run = scene_with_result
    transform = nodes["transform"]
    assert moving.GetParentTransformNode() is transform
    itk_transform = sitk.ReadTransform(str(Path(run.result["output_dir"]) / "transform.h5"))
    for point_ras in ([-330.0, -420.0, 0.0], [-420.0, -380.0, 0.0]):
        point_lps = [-point_ras[0], -point_ras[1]]
        expected_lps = itk_transform.TransformPoint(point_lps)
        expected_ras = [-expected_lps[0], -expected_lps[1]]
        got = PromptRegMRML.transform_point_fixed_to_moving(transform, point_ras)
        np.testing.assert_allclose(got[:2], expected_ras, atol=0.05)


def test_mrml_hardened_moving_matches_the_warped_image(scene_with_result):
    case, fixed, moving, nodes, run = scene_with_result
    warped = sitk.ReadImage(str(Path(run.result["output_dir"]) / "warped_moving.nrrd"))
    PromptRegMRML.harden(moving)
    assert moving.GetParentTransformNode() is None
    array = slicer.util.arrayFromVolume(moving)
    ras_to_ijk = vtk_matrix(moving)
    differences = []
    for point_ras in ([-330.0, -420.0, 0.0], [-420.0, -380.0, 0.0], [-380.0, -450.0, 0.0]):
        ijk = (ras_to_ijk @ np.array([*point_ras, 1.0]))[:3]
        hardened_value = array[tuple(np.round(ijk[::-1]).astype(int))]
        index = warped.TransformPhysicalPointToIndex([-point_ras[0], -point_ras[1]])
        differences.append(abs(float(hardened_value) - float(warped[index])))
    assert np.median(differences) < 60  # HU; nearest-voxel sampling of two resamplings of the same image


def vtk_matrix(volume):
    import vtk
    matrix = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
