"""The panel driving its long-lived worker (``python -m PromptRegLib.apps.worker --serve``): progress and Cancel,
encoding early (and cancelled by a change of volume), the quick affine shown first, an error, a worker that dies,
the worker ending with the scene and the panel, the embedding cache button. Runs use the weight-free
``test-patches`` backend on a 96 × 96 synthetic pair (a 24-slice one for the encoding); ``slow_worker`` makes that
backend take a real model's time where a cancel must land inside a stage."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest
from PromptRegLib.apps.worker_client import group_alive
from slicer_panel_harness.application import wait_until
from slicer_panel_harness.pair import CLICKS_RAS, SHIFT_LPS, add_pair, choose_pair


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")  # the project's machines are Linux
def test_register_shows_progress_and_cancel_is_answered_within_2_s_and_the_worker_goes_on(panel, small_pair,
                                                                                          test_backend, slow_worker):
    """Cancel stops the request, not the worker: it answers within 2 s and stays, with what it holds, for the next."""
    ui = panel.ui
    choose_pair(panel, small_pair)
    assert ui.registerButton.enabled and not ui.cancelButton.enabled
    ui.registerButton.click()
    run = panel._run
    assert run is not None and run.kind == "register" and panel.logic.session.running
    assert ui.cancelButton.enabled and not ui.registerButton.enabled and not ui.findPairsButton.enabled
    assert ui.progressBar.visible and ui.progressBar.value == 0
    seen = set()

    def progressed():
        seen.add(ui.progressBar.value)
        return ui.progressBar.value > 0

    wait_until(progressed, 90, "the worker's first progress above 0 %")  # as the worker reports it, on the timer
    assert ui.statusLabel.text.endswith("…") and panel._run is run, "the run must still be going"
    worker = panel.logic.session.worker.process
    ui.cancelButton.click()
    started = time.monotonic()
    assert not ui.cancelButton.enabled and ui.registerButton.enabled and not ui.progressBar.visible
    assert "cancelled" in ui.statusLabel.text.lower()
    wait_until(lambda: run.finished, 2.0, "the worker to answer the cancel")
    assert time.monotonic() - started < 2.0
    assert run.answered_cancelled and not run.folder.exists()  # no partial outputs left behind
    assert panel._parameterNode.outputTransform is None             # nothing loaded
    assert panel.logic.session.worker.process is worker and worker.poll() is None  # the same worker, still there


def test_background_encoding_shows_its_state_and_a_change_of_volume_cancels_it(panel, tmp_path, test_backend,
                                                                              slow_worker, monkeypatch):
    """Both volumes chosen: they are encoded at once, the line under the status saying how far; another moving volume
    cancels that encoding (the worker is sent the cancel; it answers it cancelled) and encodes the new pair."""
    from PromptRegLib.apps.worker_client import WorkerSession
    from PromptRegSlicer import mrml
    from slicer_panel_harness.pair import write_pair

    files = write_pair(tmp_path, slices=24, seed=50)  # 24 slices each: 1.2 s of encoding per volume
    fixed, moving = mrml.load_volume(files[0], "fixed 3D"), mrml.load_volume(files[1], "moving 3D")
    other = mrml.load_volume(files[1], "another moving 3D")
    shown, cancels = [], []
    show = panel.showEncodingState
    monkeypatch.setattr(panel, "showEncodingState", lambda text: shown.append(text) or show(text))
    cancel = WorkerSession.cancel
    monkeypatch.setattr(WorkerSession, "cancel", lambda self, target=None: cancels.append(target) or cancel(self, target))
    parameters, label = panel._parameterNode, panel.ui.encodingStatusLabel
    parameters.fixedVolume, parameters.movingVolume = fixed, moving
    wait_until(lambda: panel.logic.encoding is not None, 5, "the encoding to start")
    first = panel.logic.encoding
    assert label.visible and label.text == "Encoding the chosen volumes…"

    def counting(role):
        return lambda: any(re.fullmatch(rf"Encoding {role}: \d+/\d+ slices…", text or "") for text in shown)

    wait_until(counting("fixed"), 60, "the fixed volume's slices counted")
    assert not first.finished, "the first encoding must still be going"
    parameters.movingVolume = other
    assert cancels == [first.id] and label.text == "Encoding cancelled: the volumes changed."
    wait_until(lambda: first.finished, 2.0, "the worker to answer the cancel")
    assert first.answered_cancelled and first.result is None
    wait_until(lambda: label.text.startswith("Images encoded"), 60, "the new pair encoded")
    second = panel.logic.encoding
    assert second is not first and second.result["type"] == "encoded"
    assert second.images == (first.images[0], second.request["moving"]) != first.images  # the fixed file reused
    assert counting("moving")() and label.visible
    assert label.text == "Images encoded: a click now waits only for decoding"
    assert shown.index("Encoding cancelled: the volumes changed.") < len(shown) - 1


def test_a_worker_error_shows_as_one_line_in_the_status(panel, small_pair, tmp_path):
    """The panel's own model with a checkpoint file that is not there: the worker fails, the status says why."""
    ui = panel.ui
    choose_pair(panel, small_pair)
    ui.modelCollapsibleButton.collapsed = False
    ui.checkpointPathLineEdit.currentPath = str(tmp_path / "missing.pth")
    assert panel._parameterNode.checkpoint == str(tmp_path / "missing.pth")
    ui.registerButton.click()
    wait_until(lambda: panel._run is None, 120, "the worker to fail")
    status = ui.statusLabel.text
    assert status.startswith("Failed: ") and "\n" not in status, status
    assert "LiteMedSAM checkpoint" in status and "missing.pth not found" in status, status
    assert ui.registerButton.enabled and not ui.cancelButton.enabled and not ui.progressBar.visible
    assert panel._lastLogPath is not None and panel._lastLogPath.exists()  # "Show worker log" has it


def test_the_cache_button_shows_and_deletes_the_embedding_cache(panel, tmp_path, monkeypatch):
    """Through the worker's Python (``promptreg cache``; test_panel_inputs checks it needs no torch here)."""
    import slicer.util

    cache, exports = tmp_path / "cache", tmp_path / "exports"
    entry = cache / "ab" / ("ab" + "0" * 62 + ".pt")
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"\0" * 2 ** 20)
    monkeypatch.setenv("PROMPTREG_CACHE", str(cache))
    monkeypatch.setenv("PROMPTREG_EXPORTS", str(exports))
    questions, answers = [], [False, True]  # the user first keeps the cache, then deletes it
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", lambda text, **kwargs: questions.append(text) or answers.pop(0))
    panel.ui.cacheButton.click()
    assert f"embedding cache: {cache}: 1 embeddings, 1.0 MB" in questions[0], questions
    assert entry.exists() and panel.ui.statusLabel.text.startswith(f"Cache: embedding cache: {cache}: 1 embeddings")
    panel.ui.cacheButton.click()
    assert not entry.exists()
    status = panel.ui.statusLabel.text
    assert status.startswith("Cache: removed 1.0 MB") and "0 embeddings" in status, status


def test_register_reuses_the_early_encoding_and_shows_the_quick_affine_first_in_the_same_node(panel, small_pair,
                                                                                              test_backend,
                                                                                              monkeypatch):
    """A deformable registration: its quick affine is shown in the output transform node while it refines, then the
    result (a grid) replaces it in that node; nothing is encoded again."""
    import numpy as np
    from PromptRegSlicer import mrml

    ui, parameters = panel.ui, panel._parameterNode
    choose_pair(panel, small_pair, preset="Default")
    parameters.autoPairs, parameters.warps = 0, 0  # the clicks' pairs only: seconds
    wait_until(lambda: ui.encodingStatusLabel.text.startswith("Images encoded"), 60, "the early encoding")
    seen = []
    show_affine = panel._onAffine

    def watched(event):
        show_affine(event)
        node = parameters.outputTransform
        seen.append({"id": node.GetID(), "class": node.GetClassName(), "linear": node.IsLinear(),
                     "status": ui.statusLabel.text, "answered": panel._run.finished,
                     "observed": small_pair["moving"].GetTransformNodeID() == node.GetID(),
                     "moved": [mrml.transform_point_fixed_to_moving(node, click) for click in CLICKS_RAS]})

    monkeypatch.setattr(panel, "_onAffine", watched)
    ui.registerButton.click()
    wait_until(lambda: panel._run is None, 120, "the registration")
    assert ui.statusLabel.text.startswith("Done on CPU: 3 of 3 region pairs used; deformable"), ui.statusLabel.text
    assert len(seen) == 1, seen
    affine, node = seen[0], parameters.outputTransform
    assert affine["status"] == "Affine from the clicks; refining…" and not affine["answered"] and affine["observed"]
    assert affine["linear"] and affine["class"] == "vtkMRMLGridTransformNode"  # the node the grid is loaded into
    assert node.GetID() == affine["id"] and not node.IsLinear()                 # one node, updated
    assert panel._parameterNode.movingVolume.GetTransformNodeID() == node.GetID()
    assert slicer_transform_nodes() == [node.GetID()]
    shift = np.array([-SHIFT_LPS[0], -SHIFT_LPS[1], 0.0])
    for click, moved in zip(CLICKS_RAS, affine["moved"]):  # fixed RAS → moving RAS, as the result maps
        assert np.linalg.norm(np.subtract(moved, click) - shift) < 2.0, (click, moved)
        final = mrml.transform_point_fixed_to_moving(node, click)
        assert np.linalg.norm(np.subtract(final, moved)) < 2.0, (final, moved)
    report = panel.logic.lastRun.result["report"]
    assert report["embedding_cache"]["misses"] == 0 and report["encoder"]["slices"] == 0, report  # nothing encoded


def slicer_transform_nodes() -> list[str]:
    import slicer

    nodes = slicer.mrmlScene.GetNodesByClass("vtkMRMLTransformNode")
    return [nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())]


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")
def test_a_dead_worker_is_one_status_line_and_the_next_register_starts_a_fresh_one(panel, small_pair, test_backend):
    ui = panel.ui
    choose_pair(panel, small_pair)
    ui.registerButton.click()
    wait_until(lambda: panel.logic.session.running, 10, "the worker to start")
    group = panel.logic.session.worker.process.pid
    os.killpg(group, signal.SIGKILL)  # crashed, or killed by the system
    wait_until(lambda: panel._run is None, 30, "the register to be answered")
    status = ui.statusLabel.text
    assert status.startswith("Failed: the worker stopped unexpectedly") and "see its log" in status, status
    assert "\n" not in status and ui.registerButton.enabled and not ui.progressBar.visible
    ui.registerButton.click()
    wait_until(lambda: panel._run is None, 120, "the register in a fresh worker")
    assert ui.statusLabel.text.startswith("Done on CPU: 3 of 3"), ui.statusLabel.text
    assert panel.logic.session.worker.process.pid != group


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")
def test_the_worker_ends_with_the_scene_and_with_the_panel(harness, promptreg, scene, pair_files, test_backend):
    """Closing the scene ends the worker (its views and result are of that scene's volumes); the next volumes start a
    fresh one; cleaning the module up ends that one: no worker process is left."""
    panel = harness.open_panel(promptreg)
    groups = []

    def worker_started():
        session = panel.logic._session
        return session is not None and session.running

    try:
        for _ in range(2):
            choose_pair(panel, add_pair(scene, pair_files))  # both volumes chosen: encoding starts the worker
            wait_until(worker_started, 10, "the worker to start")
            groups.append(panel.logic.session.worker.process.pid)
            if len(groups) == 1:
                scene.Clear(0)
                wait_until(lambda: not group_alive(groups[0]), 5, "the worker to end with the scene")
                assert panel.logic._session is None and not panel.ui.encodingStatusLabel.visible
    finally:
        harness.close_panel(panel)
    assert groups[1] != groups[0]
    wait_until(lambda: not group_alive(groups[1]), 5, "the worker to end with the panel")
