"""A result in the panel, step by step on one panel (module fixtures, in order): Register → paired segments, Prompt Y
and the transform, listed in the pair table; reject a pair and refit; Undo and Redo; Compare; live mode (a moved
Prompt Y corrected, a click added in the worker's memory, a moved Prompt X registered again).

The real worker runs with the weight-free ``test-patches`` backend on the 96 × 96 synthetic pair (moving = fixed
shifted by ``SHIFT_LPS``) and the Quick preset (an affine): each run takes a few seconds, mostly the worker's start.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import slicer
from slicer_panel_harness.application import wait_until
from slicer_panel_harness.pair import CLICKS_RAS, SHIFT_LPS, add_pair, choose_pair

SHIFT_RAS = np.array([-SHIFT_LPS[0], -SHIFT_LPS[1], 0.0])


def _finish(panel, what: str, timeout_s: float = 120):
    wait_until(lambda: panel._run is None, timeout_s, what)


def _matrix(transform_node) -> np.ndarray:
    return slicer.util.arrayFromTransformMatrix(transform_node, toWorld=False)


def _column(table, column: int) -> list[str]:
    return [table.item(row, column).text() for row in range(table.rowCount)]


@pytest.fixture(scope="module")
def flow(harness, promptreg, pair_files, module_test_backend):
    """One panel, one scene: the pair chosen and Register pressed, until the result is shown."""
    scene = harness.new_scene()
    pair = add_pair(scene, pair_files)
    panel = harness.open_panel(promptreg)
    choose_pair(panel, pair)
    panel.ui.registerButton.click()
    _finish(panel, "the registration")
    state = types.SimpleNamespace(panel=panel, scene=scene, pair=pair, parameters=panel._parameterNode,
                                  first_matrix=_matrix(panel._parameterNode.outputTransform))
    yield state
    harness.close_panel(panel)


@pytest.fixture(scope="module")
def refitted(flow):
    """The first pair selected in the table and "Reject selected pairs and refit" pressed."""
    panel = flow.panel
    flow.rejected = _column(panel.ui.pairsTable, 0)[0]
    panel.ui.pairsTable.selectRow(0)
    panel.ui.rejectButton.click()
    _finish(panel, "the refit")
    flow.second_matrix = _matrix(flow.parameters.outputTransform)
    return flow


def test_register_loads_paired_segments_prompt_y_and_the_transform(flow):
    ui, parameters, pair = flow.panel.ui, flow.parameters, flow.pair
    assert ui.statusLabel.text.startswith("Done on CPU: 3 of 3 region pairs used; affine transform"), ui.statusLabel.text
    fixed_segments = [n for n, _ in _segments(parameters.fixedSegmentation)]
    assert len(fixed_segments) == 3 and _segments(parameters.movingSegmentation) == _segments(parameters.fixedSegmentation)
    assert parameters.promptY.GetNumberOfControlPoints() == 3
    transform = parameters.outputTransform
    assert transform.IsA("vtkMRMLLinearTransformNode")         # Quick: an affine, a matrix Slicer hardens exactly
    for node in (pair["moving"], parameters.movingSegmentation, parameters.promptY):
        assert node.GetTransformNodeID() == transform.GetID()
    assert pair["fixed"].GetTransformNodeID() is None
    from PromptRegSlicer import mrml
    for click in CLICKS_RAS:  # the transform maps fixed points to where they are in the moving image
        moved = mrml.transform_point_fixed_to_moving(transform, click)
        assert np.linalg.norm(np.subtract(moved, click) - SHIFT_RAS) < 2.0, (click, moved)
    assert not ui.progressBar.visible and not ui.cancelButton.enabled and ui.registerButton.enabled
    assert all(button.enabled for button in (ui.rejectButton, ui.correctButton, ui.compareButton, ui.jacobianButton))
    assert not ui.undoButton.enabled and not ui.redoButton.enabled  # one result: nothing to undo yet


def _segments(segmentation_node):
    from PromptRegSlicer import mrml

    return mrml.segment_names_and_colors(segmentation_node)


def test_the_pair_table_lists_the_pairs(flow):
    table, parameters = flow.panel.ui.pairsTable, flow.parameters
    assert table.rowCount == 3 and table.columnCount == 8
    assert _column(table, 0) == [name for name, _ in _segments(parameters.fixedSegmentation)]
    assert _column(table, 0) == [parameters.promptY.GetNthControlPointLabel(i) for i in range(3)]
    assert _column(table, 1) == ["yes"] * 3
    assert all(0.0 < float(value) <= 1.0 for value in _column(table, 3))  # IoU X


def test_reject_and_refit_drops_the_selected_pair_and_refits(refitted):
    ui = refitted.panel.ui
    assert ui.statusLabel.text.startswith("Refitted on CPU: 2 of 3 region pairs used"), ui.statusLabel.text
    table = ui.pairsTable
    assert _column(table, 0)[0] == refitted.rejected and _column(table, 1) == ["no", "yes", "yes"]
    assert "user" in table.item(0, 7).text()
    assert not np.allclose(refitted.second_matrix, refitted.first_matrix)  # fitted again, without that pair
    assert ui.undoButton.enabled and not ui.redoButton.enabled


def test_undo_and_redo_switch_between_the_two_results(refitted):
    ui, parameters = refitted.panel.ui, refitted.parameters
    transform_id = parameters.outputTransform.GetID()
    ui.undoButton.click()
    assert ui.statusLabel.text.startswith("Undone: 3 of 3 region pairs used"), ui.statusLabel.text
    assert _column(ui.pairsTable, 1) == ["yes"] * 3
    assert parameters.outputTransform.GetID() == transform_id  # the same node, the first result's matrix
    np.testing.assert_allclose(_matrix(parameters.outputTransform), refitted.first_matrix, atol=1e-9)
    assert not ui.undoButton.enabled and ui.redoButton.enabled
    ui.redoButton.click()
    assert ui.statusLabel.text.startswith("Redone: 2 of 3 region pairs used"), ui.statusLabel.text
    np.testing.assert_allclose(_matrix(parameters.outputTransform), refitted.second_matrix, atol=1e-9)
    assert ui.undoButton.enabled and not ui.redoButton.enabled


def test_compare_shows_the_fixed_volume_under_the_registered_one_and_a_checkerboard(refitted):
    ui, parameters, pair = refitted.panel.ui, refitted.parameters, refitted.pair
    ui.compareButton.click()
    warped, board = parameters.warpedVolume, parameters.checkerboardVolume
    assert warped is not None and board is not None
    assert warped.GetImageData().GetDimensions() == pair["fixed"].GetImageData().GetDimensions()
    for view in ("Red", "Yellow", "Green"):
        composite = refitted.scene.GetSingletonNode(view, "vtkMRMLSliceCompositeNode")
        assert composite.GetBackgroundVolumeID() == pair["fixed"].GetID()
        assert composite.GetForegroundVolumeID() == warped.GetID() and composite.GetForegroundOpacity() == 0.5
    assert f"Checkerboard: volume '{board.GetName()}'" in ui.statusLabel.text
    assert pair["moving"].GetImageData().GetScalarRange() != (0.0, 0.0)  # the moving volume itself is untouched


def test_live_mode_moving_a_prompt_y_starts_one_correction_after_the_pause(refitted, monkeypatch):
    """A drag is many point modifications and one end of interaction; two drags in a row still start one run."""
    import PromptReg

    panel, parameters = refitted.panel, refitted.parameters
    assert parameters.liveMode
    starts = []
    original = panel.logic.startCorrection
    monkeypatch.setattr(panel.logic, "startCorrection", lambda *a, **k: starts.append(1) or original(*a, **k))
    prompt_y, markups = parameters.promptY, slicer.vtkMRMLMarkupsNode
    index = 1  # a pair in use (the first one was rejected)
    start = np.array(prompt_y.GetNthControlPointPosition(index))
    for drag in range(2):
        for step in range(1, 16):  # the mouse moves: each step modifies the point
            prompt_y.SetNthControlPointPosition(index, *(start + [0.2 * (15 * drag + step), 0.0, 0.0]))
            slicer.app.processEvents()
        prompt_y.InvokeEvent(markups.PointEndInteractionEvent)  # the button is released
    assert starts == [] and panel._run is None  # nothing yet: the pause after the last change has not passed
    wait_until(lambda: starts, PromptReg.LIVE_DELAY_MS / 1000 + 5, "the live correction to start")
    assert panel._run is not None and panel.ui.cancelButton.enabled
    _finish(panel, "the live correction")
    wait_until(lambda: not panel._liveTimer.isActive(), 2, "no pending live run")
    assert starts == [1], starts
    assert panel.ui.statusLabel.text.startswith("Refitted on CPU"), panel.ui.statusLabel.text
    report = panel.logic._report()
    moved = next(pair for pair in report["pairs"] if pair["name"] == prompt_y.GetNthControlPointLabel(index))
    # the worker's own report lists a 2D image's points with two coordinates (R, A)
    np.testing.assert_allclose(moved["prompt_y_ras"][:2], (start + [6.0, 0.0, 0.0])[:2], atol=0.5)


def test_live_mode_adding_a_prompt_x_adds_it_in_the_worker_and_moving_one_registers_again(refitted, monkeypatch):
    """One more click is paired in the worker's memory (add_click: decoding only), not registered again; a moved
    Prompt X registers again."""
    import PromptReg
    from PromptRegLib.apps.worker_client import WorkerSession

    panel, parameters = refitted.panel, refitted.parameters
    kinds = []
    request = WorkerSession.request
    monkeypatch.setattr(WorkerSession, "request", lambda self, kind, **fields: kinds.append(kind) or request(self, kind, **fields))
    prompts = parameters.promptX
    prompts.AddControlPoint(0.0, 40.0, 0.0)  # the user places a fourth point, on the body
    wait_until(lambda: kinds, PromptReg.LIVE_DELAY_MS / 1000 + 5, "the live run to start")
    _finish(panel, "the added click")
    assert kinds == ["add_click"], kinds
    assert panel.ui.statusLabel.text.startswith("Click added on CPU"), panel.ui.statusLabel.text
    table = panel.ui.pairsTable
    assert table.rowCount == 4 and _column(table, 0)[-1] == "Prompt 4"
    assert parameters.fixedSegmentation.GetSegmentation().GetNumberOfSegments() == 4
    kinds.clear()
    prompts.SetNthControlPointPosition(0, *np.add(CLICKS_RAS[0], [4.0, 0.0, 0.0]))  # a drag of the first point
    prompts.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    wait_until(lambda: kinds, PromptReg.LIVE_DELAY_MS / 1000 + 5, "the live run to start")
    _finish(panel, "the new registration")
    assert kinds == ["register"], kinds
    assert panel.ui.statusLabel.text.startswith("Done on CPU"), panel.ui.statusLabel.text


def test_the_screenshots_render_from_the_real_ui(refitted, tmp_path):
    from slicer_panel_harness.screenshots import render

    image = render(refitted.panel, tmp_path / "panel_result.png")
    assert image.width() >= 400 and image.height() >= 600
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 20  # drawn widgets, not a blank or black frame
