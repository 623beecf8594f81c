"""The panel tests: PromptReg's widget in a real Qt (PySide6, offscreen: no display) over a real MRML scene.

The harness (``slicer_panel_harness``) is installed once per session, after collection, so the tests that
import ``PromptReg`` with empty stand-ins (test_mrml_results, test_packaging) keep theirs; each test gets a
fresh scene, and the panel tests a freshly set-up panel.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before pytest-qt makes the QApplication
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session")
def harness(qapp):
    from slicer_panel_harness.application import install

    return install()


@pytest.fixture(scope="session")
def promptreg(harness):
    """``PromptReg.py`` imported against the harness."""
    return harness.load_module()


@pytest.fixture
def scene(harness):
    return harness.new_scene()


@pytest.fixture
def panel(harness, promptreg, scene, qtbot):
    widget = harness.open_panel(promptreg)
    yield widget
    harness.close_panel(widget)


@pytest.fixture
def example_pair(scene, data_dir):
    """The module's own example (PromptRegSlicer.example) from CTChest4, as "Try it" makes it from CTChest."""
    from PromptRegSlicer import example, mrml

    return example.make_example(mrml.load_volume(data_dir / "ctchest4" / "ct.nrrd", "CTChest"))


@pytest.fixture(scope="session")
def pair_files(tmp_path_factory):
    from slicer_panel_harness.pair import write_pair

    return write_pair(tmp_path_factory.mktemp("panel-pair"))


@pytest.fixture
def small_pair(scene, pair_files):
    from slicer_panel_harness.pair import add_pair

    return add_pair(scene, pair_files)


def _with_test_backend():
    """Runs use the weight-free ``test-patches`` backend instead of the panel's model (the panel offers only real
    models): the request is the panel's own, the model name swapped as the worker receives it."""
    from PromptRegSlicer import options

    chosen = options.registration_options

    def with_test_backend(parameters, pairs_only=False):
        return {**chosen(parameters, pairs_only), "model": "test-patches"}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(options, "registration_options", with_test_backend)
        yield "test-patches"


test_backend = pytest.fixture(_with_test_backend, name="test_backend")
module_test_backend = pytest.fixture(_with_test_backend, scope="module", name="module_test_backend")


@pytest.fixture
def slow_worker(promptreg, slow_python, tmp_path, monkeypatch):
    """The panel's worker started through the slow launcher (``slow_python``: test-patches at a real model's pace), so
    a cancel or a change of volume lands inside the stage; a fresh embedding cache, so no slice is found already
    encoded."""
    monkeypatch.setattr(promptreg.PromptRegLogic, "workerPython", staticmethod(lambda: slow_python))
    monkeypatch.setenv("PROMPTREG_CACHE", str(tmp_path / "embedding-cache"))
    return slow_python
