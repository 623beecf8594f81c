"""The module's flow end to end on a real headless MRML scene (slicer-core), through PromptRegLogic itself and its
long-lived worker: nodes → request → worker → results loaded → reject a pair → refit → transform updated, output
nodes reused → a Prompt Y corrected → undo and redo → a correction of an undone-to result, from its folder.

Each stage fixture builds its own scene and runs its own chain up to its stage (registered; refitted; corrected;
history), so a failure in a later stage cannot error an earlier stage's tests. The 2D CT pair and the weight-free
``test-patches`` model keep each chain to seconds; the embedding cache fixture serves the encodings across stages."""
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


#: the case's first click (right lung) and one on the left lung. With test-patches the case's own second click finds
#: too small an ROI Y (size ratio 0.45, rejected), which would leave the refit no used pair to reject
CLICKS_RAS = ([-315.0, -399.2, 0.0], [-473.4, -423.6, 0.0])
#: where the user drags the rejected pair's Prompt Y (moving volume's coordinates): onto the other pair's Prompt Y.
#: test-patches grows a region over 12 mm cells here and finds the same whole lung from anywhere inside it, so the
#: 8 mm drag LiteMedSAM was tested with may give back the very same ROI Y; another structure certainly gives another
PROBES = ([-330.0, -420.0, 0.0], [-420.0, -380.0, 0.0], [-380.0, -450.0, 0.0])


def _probe(nodes) -> list:
    return [mrml.transform_point_fixed_to_moving(nodes["transform"], p) for p in PROBES]


def _positions(markups) -> list:
    points = []
    for index in range(markups.GetNumberOfControlPoints()):
        point = [0.0] * 3
        markups.GetNthControlPointPosition(index, point)
        points.append(point)
    return points


class Flow:
    """One stage's own scene, logic and worker: the CT pair, the two clicks, the weight-free test-patches model;
    each step runs through PromptRegLogic as the panel does and keeps what the tests read."""

    def __init__(self, case, work: Path, transform: str):
        slicer.mrmlScene = self.scene = slicer.vtkMRMLScene()  # held: the next stage's scene replaces the global one
        self.case, self.work = case, work
        self.fixed = mrml.load_volume(Path(case.path(case.fixed)), "fixed")
        self.moving = mrml.load_volume(Path(case.path(case.moving)), "moving")
        prompts = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Prompt X")
        for point in CLICKS_RAS:
            prompts.AddControlPoint(*point)
        self.parameters = _parameters(self.fixed, self.moving, prompts, model="test-patches", transformType=transform)
        self.logic = PromptReg.PromptRegLogic()

    def _answered(self, run) -> list:
        events = run.wait(timeout=600)
        assert run.error is None, f"{run.error}\n{run.log()[-3000:]}"
        return events

    def register(self) -> dict:
        run = self.logic.startRun(self.parameters, workRoot=str(self.work))
        events = self._answered(run)
        outputs = Path(shutil.copytree(run.result["output_dir"], self.work / "first-outputs"))
        nodes = self.logic.loadResults(run, self.parameters)
        self.first = {"nodes": dict(nodes), "result": run.result, "outputs": outputs, "run": run, "events": events,
                      "node_count": slicer.mrmlScene.GetNumberOfNodes(),
                      "moved": {tuple(p): mrml.transform_point_fixed_to_moving(nodes["transform"], p) for p in PROBES}}
        return self.first

    def refit(self) -> dict:
        self.parameters.transformType = "affine"  # the refit's fit: quick, and certainly different from the first
        rejected = self.first["result"]["pairs"][0]["name"]
        run = self.logic.startRefit(self.parameters, [rejected], workRoot=str(self.work))
        events = self._answered(run)
        nodes = self.logic.loadResults(run, self.parameters)
        self.second = {"nodes": dict(nodes), "result": run.result, "run": run, "rejected": rejected, "events": events,
                       "node_count": slicer.mrmlScene.GetNumberOfNodes(), "moved": _probe(nodes),
                       "prompt_y": _positions(nodes["prompt_y"]), "parent": self.moving.GetParentTransformNode(),
                       "output_transform": self.parameters.outputTransform}
        return self.second

    def drag(self, name: str, base: list) -> tuple[int, list]:
        """The user drags pair ``name``'s Prompt Y onto the other pair's (``base``: the points' positions before)."""
        prompt_y = self.parameters.promptY
        index = [prompt_y.GetNthControlPointLabel(i) for i in range(prompt_y.GetNumberOfControlPoints())].index(name)
        dragged = [float(v) for v in base[1 - index]]
        prompt_y.SetNthControlPointPosition(index, *dragged)
        return index, dragged

    def correct(self) -> dict:
        index, dragged = self.drag(self.second["rejected"], self.second["prompt_y"])
        run = self.logic.startCorrection(self.parameters, workRoot=str(self.work))
        events = self._answered(run)
        nodes = self.logic.loadResults(run, self.parameters)
        self.third = {"nodes": dict(nodes), "result": run.result, "run": run, "dragged": dragged, "index": index,
                      "events": events, "moved": _probe(nodes), "prompt_y": _positions(nodes["prompt_y"]),
                      "no_edit": self.logic.startCorrection(self.parameters)}
        return self.third

    def close(self) -> None:
        self.logic.closeSession(wait_s=5.0)
        self.logic.discardHistory()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("slicer-runs")


def _stage(ct_case, work: Path, name: str, transform: str) -> Flow:
    folder = work / name
    folder.mkdir()
    return Flow(ct_case["ctchest4_2d"], folder, transform)


@pytest.fixture(scope="module")
def registered(ct_case, cache_dir, work):
    """Stage 1, its own scene: a deformable registration loaded; its Jacobian volume and the comparison shown."""
    flow = _stage(ct_case, work, "registered", "deformable")
    try:
        flow.register()
        flow.quality = {"jacobian": flow.logic.showJacobian(flow.parameters), "compare": flow.logic.compare(flow.parameters)}
        yield flow
    finally:
        flow.close()


@pytest.fixture(scope="module")
def refitted(ct_case, cache_dir, work):
    """Stage 2, its own scene: a deformable registration, then its first pair rejected and the rest refitted
    (affine)."""
    flow = _stage(ct_case, work, "refitted", "deformable")
    try:
        flow.register()
        flow.refit()
        yield flow
    finally:
        flow.close()


@pytest.fixture(scope="module")
def corrected(ct_case, cache_dir, work):
    """Stage 3, its own scene: an affine registration, the first pair rejected and refitted, then that pair's
    Prompt Y dragged: a correction."""
    flow = _stage(ct_case, work, "corrected", "affine")
    try:
        flow.register()
        flow.refit()
        flow.correct()
        yield flow
    finally:
        flow.close()


@pytest.fixture(scope="module")
def history(ct_case, cache_dir, work):
    """Stage 4, its own scene: register, refit, correct as stage 3; then undo, redo, undo twice back to the first
    result; then redo and a second correction of the result shown (the worker holds a later one)."""
    flow = _stage(ct_case, work, "history", "affine")
    try:
        flow.register()
        flow.refit()
        flow.correct()
        logic, parameters = flow.logic, flow.parameters
        undone = logic.undo(parameters)
        flow.after_undo = {"nodes": dict(undone), "moved": _probe(undone), "prompt_y": _positions(undone["prompt_y"]),
                           "can_redo": logic.canRedo()}
        redone = logic.redo(parameters)
        flow.after_redo = {"moved": _probe(redone), "jacobian": logic.showJacobian(parameters)}
        logic.undo(parameters)
        back = logic.undo(parameters)
        flow.back_to_first = {"moved": _probe(back), "can_undo": logic.canUndo(), "transform": back["transform"],
                              "folders": [run.folder for run in logic.history],
                              "existed": [run.folder.exists() for run in logic.history],
                              "inputs": [path for run in logic.history for path in run.images]}
        second = logic.redo(parameters)  # the refitted result shown; the worker holds the corrected one
        index, dragged = flow.drag(flow.second["rejected"], _positions(second["prompt_y"]))
        run = logic.startCorrection(parameters, workRoot=str(flow.work))
        events = flow._answered(run)
        nodes = logic.loadResults(run, parameters)
        flow.from_folder = {"run": run, "events": events, "dragged": dragged, "index": index,
                            "prompt_y": _positions(nodes["prompt_y"]), "can_redo": logic.canRedo(),
                            "count": len(logic.history), "folders": [kept.folder for kept in logic.history]}
        yield flow
    finally:
        flow.close()


def test_mrml_paired_segments_share_names_and_colours(registered):
    nodes = registered.first["nodes"]
    fixed_segments = mrml.segment_names_and_colors(nodes["fixed_segmentation"])
    moving_segments = mrml.segment_names_and_colors(nodes["moving_segmentation"])
    assert len(fixed_segments) == 2 and fixed_segments == moving_segments


def test_mrml_prompt_y_points_are_loaded(refitted):
    nodes, result = refitted.second["nodes"], refitted.first["result"]
    assert nodes["prompt_y"].GetNumberOfControlPoints() == len(result["pairs"])
    ras = [0.0] * 3
    nodes["prompt_y"].GetNthControlPointPosition(0, ras)
    np.testing.assert_allclose(ras[:2], result["pairs"][0]["prompt_y_ras"][:2], atol=1e-3)


def test_mrml_grid_transform_is_observed_and_maps_like_the_cli(registered):
    first = registered.first
    assert registered.moving.GetParentTransformNode() is first["nodes"]["transform"]
    itk_transform = sitk.ReadTransform(str(first["outputs"] / "transform.h5"))
    for point_ras, got in first["moved"].items():
        expected_lps = itk_transform.TransformPoint([-point_ras[0], -point_ras[1]])
        np.testing.assert_allclose(got[:2], [-expected_lps[0], -expected_lps[1]], atol=0.01)  # mm; both linear


def test_mrml_warped_volume_node_holds_the_warped_image(registered):
    warped_node = registered.first["nodes"]["warped"]
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(registered.first["outputs"] / "warped_moving.nrrd")))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(warped_node).squeeze(), written.squeeze(), atol=1e-3)
    assert written.shape == slicer.util.arrayFromVolume(registered.fixed).squeeze().shape


def test_refit_is_a_refit_request_without_the_model(refitted):
    """The worker holds the first result: the refit is made there (nothing read from the folder, nothing encoded)."""
    second = refitted.second
    request = second["run"].request
    assert request["request"] == "refit" and request["reject_pairs"] == [second["rejected"]]
    assert "pairs_from" not in request and second["result"]["report"]["session"]["rejected"] == [second["rejected"]]
    assert refitted.logic.history[0] is refitted.first["run"]
    stages = [e["stage"] for e in second["events"] if e["type"] == "progress"]
    assert stages and not {"loading model", "encoding images"} & set(stages), stages
    assert not any(stage.startswith("encoding") for stage in stages), stages
    pairs = {p["name"]: p for p in second["result"]["pairs"]}
    assert pairs[second["rejected"]]["rejected_because"] == "rejected by the user"
    assert second["result"]["device"] == "cpu"


def test_refit_updates_the_transform_and_reuses_every_output_node(refitted):
    first, second = refitted.first, refitted.second
    for role in ("fixed_segmentation", "moving_segmentation", "prompt_y", "warped"):
        assert second["nodes"][role] is first["nodes"][role], role
    assert second["node_count"] == first["node_count"]  # the grid transform node was replaced, not added to
    assert second["parent"] is second["nodes"]["transform"] is second["output_transform"]
    changes = [np.linalg.norm(np.subtract(now, before))
               for now, before in zip(second["moved"], first["moved"].values())]
    assert max(changes) > 0.5, changes


def test_an_affine_result_is_a_linear_transform_node_that_maps_like_its_file(refitted):
    second = refitted.second
    node = second["nodes"]["transform"]
    assert node.IsA("vtkMRMLLinearTransformNode") and node.IsTransformToWorldLinear()
    assert refitted.first["nodes"]["transform"].GetClassName() == "vtkMRMLGridTransformNode"
    assert "moving-to-fixed" in node.GetName()
    itk_transform = sitk.ReadTransform(str(Path(second["result"]["output_dir"]) / "transform.h5"))
    for point, got in zip(PROBES, second["moved"]):
        expected = itk_transform.TransformPoint([-point[0], -point[1]])
        np.testing.assert_allclose(got[:2], [-expected[0], -expected[1]], atol=1e-3)


def test_moving_a_prompt_y_resegments_that_roi_y_uses_the_pair_and_refits(corrected):
    import slicerio

    second, third = corrected.second, corrected.third
    request = third["run"].request
    assert request["request"] == "correct" and list(request["prompt_y_ras"]) == [second["rejected"]]
    np.testing.assert_allclose(request["prompt_y_ras"][second["rejected"]], third["dragged"], atol=1e-6)
    pairs = {p["name"]: p for p in third["result"]["pairs"]}
    corrected_pair = pairs[second["rejected"]]
    assert corrected_pair["accepted"] and corrected_pair["corrected"] and corrected_pair["prompt_y"] == "user"
    masks = [slicerio.segment_mask(slicerio.read_segmentation(str(Path(r["output_dir"]) / "moving_rois.seg.nrrd")),
                                   second["rejected"]) for r in (second["result"], third["result"])]
    assert masks[1].any() and not np.array_equal(masks[0], masks[1])  # ROI Y segmented again at the new Prompt Y
    changes = [np.linalg.norm(np.subtract(a, b)) for a, b in zip(third["moved"], second["moved"])]
    assert max(changes) > 0.1, changes
    for role in ("fixed_segmentation", "moving_segmentation", "prompt_y", "transform", "warped"):
        assert third["nodes"][role] is second["nodes"][role], role
    np.testing.assert_allclose(third["prompt_y"][third["index"]], third["dragged"], atol=1e-3)
    assert third["no_edit"] is None  # nothing moved since: no run


def test_undo_restores_the_previous_pairs_and_transform_exactly_and_redo_returns(history):
    undone, redone = history.after_undo, history.after_redo
    np.testing.assert_allclose(undone["moved"], history.second["moved"], atol=1e-9)
    np.testing.assert_allclose(undone["prompt_y"], history.second["prompt_y"], atol=1e-9)
    assert undone["nodes"]["transform"] is history.third["nodes"]["transform"] and undone["can_redo"]
    np.testing.assert_allclose(redone["moved"], history.third["moved"], atol=1e-9)
    assert redone["jacobian"] is None  # affine: no volume
    back = history.back_to_first  # undone twice more: the first result, in the same node
    np.testing.assert_allclose(back["moved"], list(history.first["moved"].values()), atol=1e-9)
    assert back["transform"] is history.third["nodes"]["transform"] and not back["can_undo"]


def test_quality_numbers_jacobian_volume_and_comparison(registered):
    report = registered.first["nodes"]["report"]
    used = [p for p in report["pairs"] if p["accepted"]]
    assert used and all(0.5 < p["dice_registered"] <= 1.0 for p in used)
    assert "folding" in PromptReg.PromptRegLogic.summary(report)
    jacobian = registered.quality["jacobian"]
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(registered.first["outputs"] / "jacobian.nrrd")))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(jacobian).squeeze(), written.squeeze(), atol=1e-6)
    assert (written > 0).all()  # the first result does not fold
    board = registered.quality["compare"]["checkerboard"]
    fixed = slicer.util.arrayFromVolume(registered.fixed)
    assert slicer.util.arrayFromVolume(board).shape == fixed.shape


def test_the_history_keeps_each_result_folder_and_its_inputs_until_discarded(history):
    back, later = history.back_to_first, history.from_folder
    assert len(back["folders"]) == 3 and all(back["existed"])
    assert back["inputs"] and all(Path(path).exists() for path in back["inputs"])
    # the later correction dropped the undone result (its folder removed) and kept the others
    assert later["folders"][:2] == back["folders"][:2] and all(folder.exists() for folder in later["folders"])
    assert not back["folders"][2].exists()
    assert len(set(back["inputs"])) == 2  # each volume exported once and reused: the worker saw the same images


def test_after_an_undo_a_correction_is_refitted_from_the_shown_results_folder(history):
    """The worker holds the corrected result, the scene shows the refitted one: that result's folder is refitted."""
    done = history.from_folder
    request = done["run"].request
    assert request["request"] == "refit" and request["pairs_from"] == history.second["result"]["output_dir"]
    assert list(request["prompt_y_ras"]) == [history.second["rejected"]] and request["reject_pairs"] == []
    pairs = {p["name"]: p for p in done["run"].result["pairs"]}
    assert pairs[history.second["rejected"]]["corrected"] and pairs[history.second["rejected"]]["accepted"]
    np.testing.assert_allclose(done["prompt_y"][done["index"]], done["dragged"], atol=1e-3)
    assert done["count"] == 3 and not done["can_redo"]  # the undone correction made way for this one


def test_a_correction_naming_an_unknown_pair_is_a_clear_error(registered, tmp_path):
    from PromptRegLib.errors import InputImageError
    from PromptRegLib.pipeline.refit import refit_from_outputs

    with pytest.raises(InputImageError, match="no pair named 'Prompt 9'"):
        refit_from_outputs(registered.first["outputs"], tmp_path / "out", prompt_y_ras={"Prompt 9": [0.0, 0.0, 0.0]})
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
