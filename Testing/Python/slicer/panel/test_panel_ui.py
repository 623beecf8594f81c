"""The ``.ui`` in a real Qt: every custom widget has a stand-in, it loads without a Qt warning, its connections
are replayed, and every signal, property and method ``PromptReg.py`` uses exists on the class it is used on."""
from __future__ import annotations

from pathlib import Path

import pytest
from PySide6 import QtCore

REPO = Path(__file__).resolve().parents[4]
MODULE_SOURCE = REPO / "PromptReg" / "PromptReg.py"
UI_FILE = REPO / "PromptReg" / "Resources" / "UI" / "PromptReg.ui"


def test_every_custom_widget_of_the_ui_has_a_stand_in():
    from slicer_panel_harness.loader import custom_widget_classes
    from slicer_panel_harness.widgets import CUSTOM_WIDGETS

    declared = custom_widget_classes(UI_FILE.read_text())
    assert {"qMRMLWidget", "qMRMLNodeComboBox", "ctkCollapsibleButton", "ctkPathLineEdit",
            "qSlicerSimpleMarkupsWidget"} <= set(declared)
    assert set(declared) <= set(CUSTOM_WIDGETS), set(declared) - set(CUSTOM_WIDGETS)


def test_ui_loads_without_a_qt_warning_and_its_connections_are_replayed(harness, scene):
    import slicer.util
    from slicer_panel_harness.loader import qt_messages

    with qt_messages() as messages:
        ui_widget = slicer.util.loadUI(str(UI_FILE))
    try:
        assert not [text for kind, text in messages if kind != QtCore.QtMsgType.QtDebugMsg], messages
        ui = slicer.util.childWidgetVariables(ui_widget)
        receivers = [ui.fixedVolumeSelector, ui.movingVolumeSelector, ui.promptWidget, ui.boxSelector]
        assert all(receiver.mrmlScene() is None for receiver in receivers)
        ui_widget.setMRMLScene(scene)  # mrmlSceneChanged(vtkMRMLScene*) → setMRMLScene(vtkMRMLScene*), from the .ui
        assert all(receiver.mrmlScene() is scene for receiver in receivers)
        assert ui.fixedVolumeSelector.nodeTypes == ["vtkMRMLScalarVolumeNode"]  # the .ui's <stringlist>
        assert ui.boxSelector.noneEnabled and not ui.fixedVolumeSelector.addEnabled
        assert ui.checkpointPathLineEdit.filters == ui.checkpointPathLineEdit.Filter["Files"]  # <set>ctkPathLineEdit::Files
        assert ui.modelCollapsibleButton.collapsed and not ui.inputsCollapsibleButton.collapsed
        assert ui.fixedVolumeSelector.property("SlicerParameterName") == "fixedVolume"
    finally:
        ui_widget.deleteLater()


@pytest.mark.parametrize("right, misspelt, error", [
    ('<property name="noneEnabled">', '<property name="noneEnable">', "no property 'noneEnable'"),   # a stand-in's
    ('<property name="wordWrap">', '<property name="wordWarp">', "no property 'wordWarp'"),          # a Qt widget's
    ("<slot>setMRMLScene(vtkMRMLScene*)", "<slot>setMRMLscene(vtkMRMLScene*)", "no slot setMRMLscene"),  # replayed
])
def test_a_name_the_widget_lacks_fails_the_load(harness, tmp_path, right, misspelt, error):
    """Qt's loader would make a misspelt property a dynamic one and only warn about a connection; here both fail."""
    from slicer_panel_harness.loader import PanelUiLoader

    broken = tmp_path / "broken.ui"
    broken.write_text(UI_FILE.read_text().replace(right, misspelt, 1))
    with pytest.raises((RuntimeError, AttributeError), match=error):
        PanelUiLoader().load(str(broken))


def test_a_qt_warning_while_loading_is_seen(harness, tmp_path):
    """The no-warning check hears Qt's loader (a bad enum value is only a warning there)."""
    import slicer.util
    from slicer_panel_harness.loader import qt_messages

    broken = tmp_path / "broken.ui"
    broken.write_text(UI_FILE.read_text().replace("QAbstractItemView::SelectRows", "QAbstractItemView::SelectRowz"))
    with qt_messages() as messages:
        slicer.util.loadUI(str(broken)).deleteLater()
    assert any("SelectRowz" in text for _, text in messages), messages


def test_every_signal_property_and_method_the_module_uses_exists():
    from slicer_panel_harness import contract

    found, problems = contract.check(MODULE_SOURCE.read_text(), UI_FILE.read_text())
    assert not problems, "\n".join(problems)
    kinds = {use.kind for use in found}
    assert {"signal", "set", "call", "signal attribute"} <= kinds
    assert {use.class_name for use in found} >= {"QPushButton", "qSlicerSimpleMarkupsWidget", "ctkPathLineEdit",
                                                 "qMRMLWidget", "QTimer", "QShortcut", "QTableWidget"}


@pytest.mark.parametrize("right, misspelt", [
    ('connect("clicked(bool)"', 'connect("clicked(boo)"'),                          # a Qt signal
    ('"markupsNodeChanged()"', '"markupNodeChanged()"'),                             # a stand-in's (header) signal
    ("statusLabel.text =", "statusLabel.txt ="),                                     # a property, set
    (".currentPath =", ".currentpath ="),                                            # a stand-in's property
    ("promptWidget.currentNode()", "promptWidget.currentMarkupsNode()"),             # a stand-in's method
    ("table.setRowCount(", "table.rowCount("),                                       # a property called as a getter
])
def test_the_contract_check_catches_a_misspelt_name(right, misspelt):
    from slicer_panel_harness import contract

    source = MODULE_SOURCE.read_text()
    assert right in source
    _, problems = contract.check(source.replace(right, misspelt, 1), UI_FILE.read_text())
    assert len(problems) == 1, problems
