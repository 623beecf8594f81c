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

import slicer  # noqa: E402  (slicer-core, a test dependency: missing it is an error, not a skip)
MODULE = Path(__file__).resolve().parents[3] / "PromptReg"
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
                  outputTransform=None, warpedVolume=None, jacobianVolume=None, checkerboardVolume=None,
                  preset="Default", liveMode=True)
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
    second = {"nodes": dict(refit_nodes), "result": refit.result, "run": refit, "rejected": rejected,
              "events": refit_events, "node_count": slicer.mrmlScene.GetNumberOfNodes(), "moved": _probe(refit_nodes),
              "prompt_y": _positions(refit_nodes["prompt_y"]), "parent": moving.GetParentTransformNode(),
              "output_transform": parameters.outputTransform}

    # the user drags the rejected pair's Prompt Y (moving volume's coordinates) 8 mm: a correction
    prompt_y = refit_nodes["prompt_y"]
    index = [prompt_y.GetNthControlPointLabel(i) for i in range(prompt_y.GetNumberOfControlPoints())].index(rejected)
    dragged = list(np.add(second["prompt_y"][index], [8.0, 0.0, 0.0]))
    prompt_y.SetNthControlPointPosition(index, *dragged)
    correction = logic.startCorrection(parameters, workRoot=str(work))
    correction_events = correction.wait(timeout=600)
    assert correction.error is None, correction.log()
    corrected_nodes = logic.loadResults(correction, parameters)
    third = {"nodes": dict(corrected_nodes), "result": correction.result, "run": correction, "dragged": dragged,
             "index": index, "events": correction_events, "moved": _probe(corrected_nodes),
             "prompt_y": _positions(corrected_nodes["prompt_y"]), "no_edit": logic.startCorrection(parameters)}

    undone = logic.undo(parameters)
    after_undo = {"nodes": dict(undone), "moved": _probe(undone), "prompt_y": _positions(undone["prompt_y"]),
                  "can_redo": logic.canRedo()}
    redone = logic.redo(parameters)
    after_redo = {"moved": _probe(redone), "jacobian": logic.showJacobian(parameters)}
    logic.undo(parameters)
    back_to_first = logic.undo(parameters)  # the deformable result: Jacobian volume and comparison
    quality = {"report": back_to_first["report"], "jacobian": logic.showJacobian(parameters),
               "compare": logic.compare(parameters), "can_undo": logic.canUndo(),
               "folders": [run.folder for run in logic.history]}
    yield {"case": case, "fixed": fixed, "moving": moving, "parameters": parameters, "logic": logic,
           "first": first, "second": second, "third": third, "after_undo": after_undo, "after_redo": after_redo,
           "quality": quality}
    logic.discardHistory()


def _probe(nodes) -> list:
    return [mrml.transform_point_fixed_to_moving(nodes["transform"], p) for p in PROBES]


def _positions(markups) -> list:
    points = []
    for index in range(markups.GetNumberOfControlPoints()):
        point = [0.0] * 3
        markups.GetNthControlPointPosition(index, point)
        points.append(point)
    return points


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
    # refits replaced the node's content, then undo brought the first result back into the same node
    np.testing.assert_allclose(slicer.util.arrayFromVolume(warped_node).squeeze(), written.squeeze(), atol=1e-3)
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
    for role in ("fixed_segmentation", "moving_segmentation", "prompt_y", "warped"):
        assert second["nodes"][role] is first["nodes"][role], role
    assert second["node_count"] == first["node_count"]  # the grid transform node was replaced, not added to
    assert second["parent"] is second["nodes"]["transform"] is second["output_transform"]
    changes = [np.linalg.norm(np.subtract(now, before))
               for now, before in zip(second["moved"], first["moved"].values())]
    assert max(changes) > 0.5, changes


def test_an_affine_result_is_a_linear_transform_node_that_maps_like_its_file(flow):
    second = flow["second"]
    node = second["nodes"]["transform"]
    assert node.IsA("vtkMRMLLinearTransformNode") and node.IsTransformToWorldLinear()
    assert first_is_grid(flow) and "moving-to-fixed" in node.GetName()
    itk_transform = sitk.ReadTransform(str(Path(second["result"]["output_dir"]) / "transform.h5"))
    for point, got in zip(PROBES, second["moved"]):
        expected = itk_transform.TransformPoint([-point[0], -point[1]])
        np.testing.assert_allclose(got[:2], [-expected[0], -expected[1]], atol=1e-3)


def first_is_grid(flow) -> bool:
    return flow["first"]["nodes"]["transform"].GetClassName() == "vtkMRMLGridTransformNode"


def test_moving_a_prompt_y_resegments_that_roi_y_uses_the_pair_and_refits(flow):
    import slicerio

    second, third = flow["second"], flow["third"]
    request = third["run"].request
    assert request["request"] == "refit" and list(request["prompt_y_ras"]) == [second["rejected"]]
    np.testing.assert_allclose(request["prompt_y_ras"][second["rejected"]], third["dragged"], atol=1e-6)
    pairs = {p["name"]: p for p in third["result"]["pairs"]}
    corrected = pairs[second["rejected"]]
    assert corrected["accepted"] and corrected["corrected"] and corrected["prompt_y"] == "user"
    masks = [slicerio.segment_mask(slicerio.read_segmentation(str(Path(r["output_dir"]) / "moving_rois.seg.nrrd")),
                                   second["rejected"]) for r in (second["result"], third["result"])]
    assert masks[1].any() and not np.array_equal(masks[0], masks[1])  # ROI Y segmented again at the new Prompt Y
    changes = [np.linalg.norm(np.subtract(a, b)) for a, b in zip(third["moved"], second["moved"])]
    assert max(changes) > 0.1, changes
    for role in ("fixed_segmentation", "moving_segmentation", "prompt_y", "transform", "warped"):
        assert third["nodes"][role] is second["nodes"][role], role
    np.testing.assert_allclose(third["prompt_y"][third["index"]], third["dragged"], atol=1e-3)
    assert third["no_edit"] is None  # nothing moved since: no run


def test_undo_restores_the_previous_pairs_and_transform_exactly_and_redo_returns(flow):
    second, third, undone, redone = flow["second"], flow["third"], flow["after_undo"], flow["after_redo"]
    np.testing.assert_allclose(undone["moved"], second["moved"], atol=1e-9)
    np.testing.assert_allclose(undone["prompt_y"], second["prompt_y"], atol=1e-9)
    assert undone["nodes"]["transform"] is third["nodes"]["transform"] and undone["can_redo"]
    np.testing.assert_allclose(redone["moved"], third["moved"], atol=1e-9)


def test_quality_numbers_jacobian_volume_and_comparison(flow):
    quality = flow["quality"]
    report = quality["report"]
    used = [p for p in report["pairs"] if p["accepted"]]
    assert used and all(0.5 < p["dice_registered"] <= 1.0 for p in used)
    assert "folding" in PromptReg.PromptRegLogic.summary(report)
    assert flow["after_redo"]["jacobian"] is None  # affine: no volume
    jacobian = quality["jacobian"]
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(flow["first"]["result"]["output_dir"]) / "jacobian.nrrd")))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(jacobian).squeeze(), written.squeeze(), atol=1e-6)
    assert (written > 0).all()  # the first result does not fold
    board = quality["compare"]["checkerboard"]
    fixed = slicer.util.arrayFromVolume(flow["fixed"])
    assert slicer.util.arrayFromVolume(board).shape == fixed.shape
    assert not quality["can_undo"]


def test_the_history_keeps_each_result_folder_until_discarded(flow):
    folders = flow["quality"]["folders"]
    assert len(folders) == 3 and all(folder.exists() for folder in folders)


def test_a_correction_naming_an_unknown_pair_is_a_clear_error(flow, tmp_path):
    from PromptRegLib.errors import InputImageError
    from PromptRegLib.pipeline.refit import refit_from_outputs

    with pytest.raises(InputImageError, match="no pair named 'Prompt 9'"):
        refit_from_outputs(flow["first"]["outputs"], tmp_path / "out", prompt_y_ras={"Prompt 9": [0.0, 0.0, 0.0]})
    assert not (tmp_path / "out").exists()


def test_a_colour_warped_image_loads_as_a_colour_volume_replacing_a_grey_output_node(tmp_path):
    """An RGB moving image gives an RGB ``warped_moving.nrrd``: Slicer shows it as a vector volume."""
    slicer.mrmlScene = slicer.vtkMRMLScene()
    rgb = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "warped_moving.nrrd"))
    grey = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "earlier output")
    node = mrml.load_volume(tmp_path / "warped_moving.nrrd", "moving registered", grey)
    assert node.IsA("vtkMRMLVectorVolumeNode") and node.GetImageData().GetNumberOfScalarComponents() == 3
    assert slicer.mrmlScene.GetNodesByName("earlier output").GetNumberOfItems() == 0
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node).squeeze(), rgb)


def test_a_volume_slicer_loaded_from_a_photograph_keeps_having_no_units_through_the_worker(tmp_path):
    """Slicer exports its volumes as NRRD for the worker; the request names the files they came from, so a slide
    loaded from a JPEG is still registered as a photograph (lengths scaled, pixel grids corresponding)."""
    from PromptRegLib.apps.worker import _input_image
    from PromptRegLib.core.lengths import has_physical_units

    slicer.mrmlScene = slicer.vtkMRMLScene()
    array = (np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "pixels.nrrd"))  # slicer-core reads no JPEG
    slide = mrml.load_volume(tmp_path / "pixels.nrrd", "slide")
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "slide.jpg"))  # what Slicer's storage node holds for a loaded JPEG
    slide.SetAndObserveStorageNodeID(storage.GetID())
    made_here = mrml.load_volume(tmp_path / "pixels.nrrd", "made in the scene")  # no storage node: no file

    request = mrml.build_request(slide, made_here, None, tmp_path / "request", {})
    assert request["original_files"] == {"fixed": str(tmp_path / "slide.jpg"), "moving": None}
    fixed = _input_image(request["fixed"], request["original_files"]["fixed"])
    moving = _input_image(request["moving"], request["original_files"]["moving"])
    assert request["fixed"].endswith(".nrrd") and not has_physical_units(fixed)
    assert has_physical_units(moving)  # an NRRD with no photograph behind it
