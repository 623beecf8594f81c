"""The module's flow end to end on a real headless MRML scene (slicer-core), through PromptRegLogic itself:
nodes → request → worker → results loaded → reject a pair → refit request → transform updated, output
nodes reused. The 2D CT pair keeps it short; the embedding cache fixture serves the model's encodings."""
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
MODULE = Path(__file__).resolve().parents[2] / "PromptReg"
sys.path.insert(0, str(MODULE))


def _import_module_without_qt():
    """PromptReg.py with empty stand-ins for qt and the two Qt-bound parts of Slicer's Python that slicer-core
    lacks; only the logic (no widget) is used."""
    for name in ("qt", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper"):
        sys.modules.setdefault(name, types.ModuleType(name))
    stand_in = sys.modules["slicer.ScriptedLoadableModule"]
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                 "ScriptedLoadableModuleWidget"):
        if not hasattr(stand_in, name):
            setattr(stand_in, name, type(name, (), {"__init__": lambda self, *args: None}))
    wrapper = sys.modules["slicer.parameterNodeWrapper"]
    wrapper.parameterNodeWrapper = getattr(wrapper, "parameterNodeWrapper", lambda cls: cls)
    import PromptReg
    return PromptReg


PromptReg = _import_module_without_qt()
from PromptRegSlicer import mrml  # noqa: E402


def _parameters(fixed, moving, prompts, **overrides):
    """The parameter node's fields (PromptRegParameterNode) as a plain namespace."""
    fields = dict(fixedVolume=fixed, movingVolume=moving, promptX=prompts, boxPrompt=None, model="litemedsam",
                  checkpoint="", device="cpu", autoPairs=0, warps=0, transformType="deformable", bending=10.0,
                  loadWarped=True, fixedSegmentation=None, movingSegmentation=None, promptY=None,
                  outputTransform=None, warpedVolume=None)
    return types.SimpleNamespace(**{**fields, **overrides})


@pytest.fixture(scope="module")
def flow(ct_case, cache_dir, tmp_path_factory):
    slicer.mrmlScene = slicer.vtkMRMLScene()
    case = ct_case["ctchest4_2d"]
    work = tmp_path_factory.mktemp("slicer-runs")
    fixed = mrml.load_volume(Path(case.path(case.fixed)), "fixed")
    moving = mrml.load_volume(Path(case.path(case.moving)), "moving")
    prompts = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Prompt X")
    for point in case.prompts_ras[:2]:
        prompts.AddControlPoint(point[0], point[1], 0.0)
    parameters = _parameters(fixed, moving, prompts)
    logic = PromptReg.PromptRegLogic()

    run = logic.startRun(parameters, workRoot=str(work))
    run.wait(timeout=600)
    assert run.error is None, run.log()
    first_outputs = Path(shutil.copytree(run.result["output_dir"], work / "first-outputs"))
    nodes = logic.loadResults(run, parameters)
    first = {"nodes": dict(nodes), "result": run.result, "outputs": first_outputs, "run": run,
             "node_count": slicer.mrmlScene.GetNumberOfNodes(),
             "moved": {tuple(p): mrml.transform_point_fixed_to_moving(nodes["transform"], p) for p in PROBES}}

    parameters.transformType = "affine"  # the refit's fit: quick, and certainly different from the first
    rejected = run.result["pairs"][0]["name"]
    refit = logic.startRefit(parameters, [rejected], workRoot=str(work))
    refit_events = refit.wait(timeout=600)
    assert refit.error is None, refit.log()
    refit_nodes = logic.loadResults(refit, parameters)
    second = {"nodes": refit_nodes, "result": refit.result, "run": refit, "rejected": rejected, "events": refit_events,
              "node_count": slicer.mrmlScene.GetNumberOfNodes()}
    yield {"case": case, "fixed": fixed, "moving": moving, "parameters": parameters, "logic": logic,
           "first": first, "second": second}
    logic.discardLastRun()


PROBES = ([-330.0, -420.0, 0.0], [-420.0, -380.0, 0.0], [-380.0, -450.0, 0.0])


def test_mrml_paired_segments_share_names_and_colours(flow):
    nodes = flow["first"]["nodes"]
    fixed_segments = mrml.segment_names_and_colors(nodes["fixed_segmentation"])
    moving_segments = mrml.segment_names_and_colors(nodes["moving_segmentation"])
    assert len(fixed_segments) == 2 and fixed_segments == moving_segments


def test_mrml_prompt_y_points_are_loaded(flow):
    nodes, result = flow["second"]["nodes"], flow["first"]["result"]
    assert nodes["prompt_y"].GetNumberOfControlPoints() == len(result["pairs"])
    ras = [0.0] * 3
    nodes["prompt_y"].GetNthControlPointPosition(0, ras)
    np.testing.assert_allclose(ras[:2], result["pairs"][0]["prompt_y_ras"][:2], atol=1e-3)


def test_mrml_grid_transform_is_observed_and_maps_like_the_cli(flow):
    first = flow["first"]
    itk_transform = sitk.ReadTransform(str(first["outputs"] / "transform.h5"))
    for point_ras, got in first["moved"].items():
        expected_lps = itk_transform.TransformPoint([-point_ras[0], -point_ras[1]])
        np.testing.assert_allclose(got[:2], [-expected_lps[0], -expected_lps[1]], atol=0.01)  # mm; both linear


def test_mrml_warped_volume_node_holds_the_warped_image(flow):
    warped_node = flow["first"]["nodes"]["warped"]
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(flow["first"]["outputs"] / "warped_moving.nrrd")))
    # the refit has replaced the node's content since: compare with the refit's own file instead
    refit_written = Path(flow["second"]["result"]["output_dir"]) / "warped_moving.nrrd"
    np.testing.assert_allclose(slicer.util.arrayFromVolume(warped_node).squeeze(),
                               sitk.GetArrayFromImage(sitk.ReadImage(str(refit_written))).squeeze(), atol=1e-3)
    assert written.shape == slicer.util.arrayFromVolume(flow["fixed"]).squeeze().shape


def test_refit_is_a_refit_request_without_the_model(flow):
    second = flow["second"]
    request = second["run"].request
    assert request["request"] == "refit" and request["reject_pairs"] == [second["rejected"]]
    assert request["pairs_from"] == flow["first"]["result"]["output_dir"]
    stages = [e["stage"] for e in second["events"] if e["type"] == "progress"]
    assert stages and not {"loading model", "encoding images"} & set(stages), stages
    pairs = {p["name"]: p for p in second["result"]["pairs"]}
    assert pairs[second["rejected"]]["rejected_because"] == "rejected by the user"
    assert second["result"]["device"] == "cpu"


def test_refit_updates_the_transform_and_reuses_every_output_node(flow):
    first, second = flow["first"], flow["second"]
    for role in ("fixed_segmentation", "moving_segmentation", "prompt_y", "transform", "warped"):
        assert second["nodes"][role] is first["nodes"][role], role
    assert second["node_count"] == first["node_count"]
    assert flow["moving"].GetParentTransformNode() is second["nodes"]["transform"]
    assert flow["parameters"].outputTransform is second["nodes"]["transform"]
    moved_now = [mrml.transform_point_fixed_to_moving(second["nodes"]["transform"], p) for p in PROBES]
    changes = [np.linalg.norm(np.subtract(now, before)) for now, before in zip(moved_now, first["moved"].values())]
    assert max(changes) > 0.5, changes


def test_refit_keeps_only_its_own_run_folder(flow):
    assert not flow["first"]["run"].folder.exists()  # replaced: nothing piles up in the temporary folder
    assert flow["logic"].lastRun is flow["second"]["run"] and flow["second"]["run"].folder.exists()


def test_a_colour_warped_image_loads_as_a_colour_volume_replacing_a_grey_output_node(tmp_path):
    """An RGB moving image gives an RGB ``warped_moving.nrrd`` (issue K): Slicer shows it as a vector volume."""
    slicer.mrmlScene = slicer.vtkMRMLScene()
    rgb = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "warped_moving.nrrd"))
    grey = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "earlier output")
    node = mrml.load_volume(tmp_path / "warped_moving.nrrd", "moving registered", grey)
    assert node.IsA("vtkMRMLVectorVolumeNode") and node.GetImageData().GetNumberOfScalarComponents() == 3
    assert slicer.mrmlScene.GetNodesByName("earlier output").GetNumberOfItems() == 0
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node).squeeze(), rgb)
