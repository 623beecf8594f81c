"""The panel driving the real worker (``python -m PromptRegLib.apps.worker``): progress and Cancel, an error,
the embedding cache button. Runs use the weight-free ``test-patches`` backend on a 96 × 96 synthetic pair."""
from __future__ import annotations

import os
import time

import pytest
from slicer_panel_harness.application import wait_until
from slicer_panel_harness.pair import choose_pair


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")  # the project's machines are Linux
def test_register_shows_progress_and_cancel_stops_the_worker_within_2_s(panel, small_pair, test_backend):
    ui = panel.ui
    choose_pair(panel, small_pair)
    assert ui.registerButton.enabled and not ui.cancelButton.enabled
    ui.registerButton.click()
    run = panel._run
    assert run is not None and run.process.poll() is None
    assert ui.cancelButton.enabled and not ui.registerButton.enabled and not ui.findPairsButton.enabled
    assert ui.progressBar.visible and ui.progressBar.value == 0
    seen = set()

    def progressed():
        seen.add(ui.progressBar.value)
        return ui.progressBar.value > 0

    wait_until(progressed, 90, "the worker's first progress above 0 %")  # as the worker reports it, on the timer
    assert ui.statusLabel.text.endswith("…") and panel._run is run, "the run must still be going"
    group = run.process.pid
    ui.cancelButton.click()
    started = time.monotonic()
    assert not ui.cancelButton.enabled and ui.registerButton.enabled and not ui.progressBar.visible
    assert "cancelled" in ui.statusLabel.text.lower()
    wait_until(lambda: not _group_alive(group), 2.0, "the worker's process group to end")
    assert time.monotonic() - started < 2.0
    assert run.join_cancel(timeout=2.0) and not run.folder.exists()  # no partial outputs left behind
    assert panel._parameterNode.outputTransform is None             # nothing loaded


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
