"""The panel before any run, on a real scene: setup, the selectors, the parameter node, when Register can run,
and that importing the module needs no torch and runs nothing."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from slicer_panel_harness.application import wait_until

HERE = Path(__file__).resolve().parent


def _choose(selector, node):
    """What a user's pick in a node selector does: the row activated in its combo box."""
    row = selector.nodes().index(node) + (1 if selector.noneEnabled else 0)
    selector._combo.setCurrentIndex(row)
    selector._combo.activated.emit(row)


def test_setup_runs_and_the_selectors_list_the_example_volumes(panel, example_pair):
    ui = panel.ui
    names = [node.GetName() for node in ui.fixedVolumeSelector.nodes()]
    assert {"CTChest fixed", "CTChest moving"} <= set(names)
    assert names == [node.GetName() for node in ui.movingVolumeSelector.nodes()]
    assert [node.GetName() for node in ui.promptWidget.markupsSelectorComboBox().nodes()] == ["Prompt X"]
    assert ui.boxSelector.nodes() == []                          # no ROI in the scene; "None" stays chosen
    assert [ui.presetComboBox.itemText(i) for i in range(ui.presetComboBox.count)] == ["Quick", "Default", "Accurate"]
    assert ui.modelComboBox.currentText == "litemedsam"          # filled by connectGui from the Choice annotation
    assert (ui.autoPairsSpinBox.minimum, ui.autoPairsSpinBox.maximum) == (-1, 64)  # WithinRange, as in the .ui
    assert ui.cancelButton.enabled is False and ui.progressBar.visible is False
    assert ui.encodingStatusLabel.visible is False              # reserved for the background encoding state


def test_choosing_nodes_and_options_updates_the_parameter_node(panel, example_pair):
    ui, parameters = panel.ui, panel._parameterNode
    _choose(ui.fixedVolumeSelector, example_pair["fixed"])
    _choose(ui.movingVolumeSelector, example_pair["moving"])
    ui.promptWidget.setCurrentNode(example_pair["prompts"])
    assert parameters.fixedVolume.GetID() == example_pair["fixed"].GetID()
    assert parameters.movingVolume.GetID() == example_pair["moving"].GetID()
    assert parameters.promptX.GetID() == example_pair["prompts"].GetID()
    ui.presetComboBox.currentIndex = 0
    ui.autoPairsSpinBox.value = 4
    ui.liveCheckBox.checked = False
    ui.checkpointPathLineEdit.currentPath = "/models/medsam.pth"
    assert (parameters.preset, parameters.autoPairs, parameters.liveMode) == ("Quick", 4, False)
    assert parameters.checkpoint == "/models/medsam.pth"
    parameters.transformType = "affine"                          # and back: the node writes the widgets
    parameters.movingVolume = example_pair["fixed"]
    assert ui.transformComboBox.currentText == "affine"
    assert ui.movingVolumeSelector.currentNode().GetID() == example_pair["fixed"].GetID()


def test_register_is_disabled_until_fixed_moving_and_a_prompt_exist_and_says_why(panel, scene, pair_files):
    from PromptRegSlicer import mrml

    ui, parameters = panel.ui, panel._parameterNode

    def state():
        return ui.registerButton.enabled, ui.findPairsButton.enabled, ui.statusLabel.text

    assert state() == (False, False, "Choose the fixed volume (the one you click on).")
    assert ui.registerButton.toolTip == ui.statusLabel.text
    fixed = mrml.load_volume(pair_files[0], "phantom fixed")     # both selectors pick the only volume, as Slicer's do
    assert parameters.fixedVolume.GetID() == parameters.movingVolume.GetID() == fixed.GetID()
    assert state() == (False, False, "Choose two different volumes: the fixed and the moving volume are the same.")
    parameters.movingVolume = None
    assert state() == (False, False, "Choose the moving volume.")
    moving = mrml.load_volume(pair_files[1], "phantom moving")
    _choose(ui.movingVolumeSelector, moving)
    assert state() == (False, False, "Place at least one Prompt X point on the fixed volume (or choose a box).")
    ui.placePromptButton.click()                                 # makes the empty Prompt X list, enters place mode
    assert parameters.promptX is not None and not ui.registerButton.enabled
    assert slicer_interaction_mode() == "Place"
    parameters.promptX.AddControlPoint(-40.0, 0.0, 0.0)          # the user's first click
    assert state()[:2] == (True, True) and state()[2].startswith("Ready")
    assert "region pairs" in ui.registerButton.toolTip
    parameters.promptX.RemoveAllControlPoints()
    assert state()[:2] == (False, False)


def slicer_interaction_mode() -> str:
    import slicer

    node = slicer.app.applicationLogic().GetInteractionNode()
    return {node.Place: "Place", node.ViewTransform: "ViewTransform"}.get(node.GetCurrentInteractionMode(), "other")


#: Imports the module, sets up its panel and loads the example with torch made unimportable, in a fresh process.
WITHOUT_TORCH = textwrap.dedent("""
    import importlib.abc, os, sys, threading
    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch":
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
    sys.meta_path.insert(0, NoTorch())
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    sys.path.insert(0, sys.argv[1])
    from PySide6 import QtWidgets
    app = QtWidgets.QApplication([])
    from slicer_panel_harness.application import install
    harness = install()
    scene = harness.new_scene()
    nodes, threads = scene.GetNumberOfNodes(), threading.active_count()
    module = harness.load_module()
    assert scene.GetNumberOfNodes() == nodes and threading.active_count() == threads, "the import did something"
    widget = harness.open_panel(module)
    lines = widget.logic.describeCaches()  # the cache button's question: torch is imported by the worker's Python
    assert lines[0].startswith("embedding cache: "), lines
    assert "torch" not in sys.modules
    harness.close_panel(widget)
    print("imported and set up without torch")
""")


def test_the_module_imports_and_sets_up_with_torch_absent(tmp_path):
    environment = {**os.environ, "PROMPTREG_CACHE": str(tmp_path / "cache"), "PROMPTREG_EXPORTS": "off"}
    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(HERE)], capture_output=True, text=True,
                          timeout=120, env=environment, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported and set up without torch" in done.stdout


def test_closing_the_scene_leaves_the_panel_on_a_fresh_parameter_node(panel, example_pair, scene):
    """Closing the scene (File → Close Scene) leaves the panel on a fresh parameter node, not a dead one."""
    scene.Clear(0)
    wait_until(lambda: panel._parameterNode is not None, 5, "a new parameter node")
    assert panel._parameterNode.fixedVolume is None
    assert not panel.ui.registerButton.enabled
