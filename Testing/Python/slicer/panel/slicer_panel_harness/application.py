"""The Slicer application around the panel: ``slicer.app``, ``slicer.modules``, the scripted-module base classes.

A real Slicer gives a scripted module ``qt``, ``ctk``, ``slicer.app``, ``slicer.modules``,
``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper``; slicer-core gives the MRML scene,
the MRML and module logics and ``slicer.util`` (which imports ``qt`` when a function needs it). :func:`install`
puts the harness's versions of the missing ones in place (``sys.modules`` and the ``slicer`` package), and
:class:`Harness` makes scenes set up as Slicer sets up its own (selection and interaction singletons from
``vtkMRMLApplicationLogic``, a slice composite node per slice view, the markups logic) and opens the panel.
``slicer.app.testingEnabled()`` is true, as under Slicer's self-tests: ``slicer.util``'s dialogs only log.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
import time
import types
import unittest
from pathlib import Path

import slicer
from PySide6 import QtCore, QtWidgets

from . import parameter_node, pythonqt
from .loader import PanelUiLoader
from .widgets import CUSTOM_WIDGETS

__all__ = ["Harness", "install", "wait_until"]

REPO = Path(__file__).resolve().parents[5]
MODULE_DIR = REPO / "PromptReg"
SLICE_VIEWS = ("Red", "Yellow", "Green")


class SlicerApplication:
    """``slicer.app`` (a qSlicerApplication): what slicer.util and the module ask of it; the rest is the
    QApplication's."""

    applicationName = "3D Slicer (panel harness)"

    def __init__(self, harness: Harness):
        self._harness = harness
        self._temporary = tempfile.mkdtemp(prefix="promptreg-panel-")

    @property
    def temporaryPath(self) -> str:
        return self._temporary

    def testingEnabled(self) -> bool:
        return True

    def processEvents(self):
        QtWidgets.QApplication.processEvents()

    def applicationLogic(self):
        return self._harness.application_logic

    def layoutManager(self):
        return None  # no views: setSliceViewerLayers sets the composite nodes and skips fitting

    def mainWindow(self):
        return None

    def topLevelWidgets(self):
        return QtWidgets.QApplication.topLevelWidgets()

    def setOverrideCursor(self, cursor):
        QtWidgets.QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self):
        QtWidgets.QApplication.restoreOverrideCursor()

    def __getattr__(self, name):
        return getattr(QtWidgets.QApplication.instance(), name)


# --- slicer.ScriptedLoadableModule (Base/Python/slicer/ScriptedLoadableModule.py) ------------------------------
class ModulePanel(pythonqt.PythonQtObject, QtWidgets.QWidget):
    """The module panel a scripted widget is given as ``parent`` (qSlicerScriptedLoadableModuleWidget):
    a QWidget with a vertical layout and the read-only ``isEntered`` property."""

    def __init__(self):
        super().__init__()
        self._entered = False
        QtWidgets.QVBoxLayout(self)

    isEntered = QtCore.Property(bool, lambda self: self._entered)


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = type(self).__name__
        for name, value in (("title", ""), ("categories", []), ("dependencies", []), ("contributors", []),
                            ("helpText", ""), ("acknowledgementText", "")):
            setattr(parent, name, value)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.developerMode = False
        self.moduleName = type(self).__name__[:-len("Widget")]
        self.parent = parent if parent is not None else ModulePanel()
        self.layout = self.parent.layout()

    def resourcePath(self, filename: str) -> str:
        return str(Path(sys.modules[type(self).__module__].__file__).parent / "Resources" / filename)

    def setup(self):
        pass

    def cleanup(self):
        pass

    def enter(self):
        pass

    def exit(self):
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__[:-len("Logic")]
        self.isSingletonParameterNode = True

    def setDefaultParameters(self, parameterNode):
        pass

    def createParameterNode(self):
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        node.SetAttribute("ModuleName", self.moduleName)
        return node

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is not None:
            return node
        node = self.createParameterNode()
        self.setDefaultParameters(node)
        return slicer.mrmlScene.AddNode(node)


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=1000):
        logging.info(message)


def _scripted_module() -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


class Harness:
    """Scenes as Slicer sets them up, the module imported against the harness, and its panel opened."""

    def __init__(self):
        self.application_logic = None
        self.markups_logic = None
        self.scene = None

    def new_scene(self):
        """A fresh ``slicer.mrmlScene`` with the singletons and logics a running Slicer has."""
        scene = slicer.vtkMRMLScene()
        slicer.mrmlScene = scene
        self.application_logic = slicer.vtkMRMLApplicationLogic()
        self.application_logic.SetMRMLScene(scene)  # adds the selection and interaction singletons
        for view in SLICE_VIEWS:
            composite = slicer.vtkMRMLSliceCompositeNode()
            composite.SetLayoutName(view)
            composite.SetSingletonTag(view)
            scene.AddNode(composite)
        self.markups_logic = slicer.vtkSlicerMarkupsLogic()
        self.markups_logic.SetMRMLScene(scene)
        self.scene = scene
        return scene

    @staticmethod
    def load_module():
        """``PromptReg.py`` imported afresh against the harness's qt and Slicer base classes."""
        sys.modules.pop("PromptReg", None)
        spec = importlib.util.spec_from_file_location("PromptReg", MODULE_DIR / "PromptReg.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["PromptReg"] = module
        spec.loader.exec_module(module)
        return module

    @staticmethod
    def open_panel(module):
        """The module's widget, set up and entered, in a shown module panel (offscreen)."""
        widget = module.PromptRegWidget()
        widget.setup()
        widget.parent.resize(460, 900)
        widget.parent.show()
        widget.parent._entered = True
        widget.enter()
        QtWidgets.QApplication.processEvents()
        return widget

    @staticmethod
    def close_panel(widget):
        widget.exit()
        widget.parent._entered = False
        widget.cleanup()
        widget.parent.close()
        widget.parent.deleteLater()
        QtWidgets.QApplication.processEvents()


def wait_until(condition, timeout_s: float = 60.0, what: str = "the condition"):
    """Process Qt events (the panel's timers, the worker's progress) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        QtWidgets.QApplication.processEvents()
        time.sleep(0.02)


def install() -> Harness:
    """Put the harness's qt, ctk and Slicer application parts in place (idempotent); returns a :class:`Harness`."""
    if QtWidgets.QApplication.instance() is None:
        raise RuntimeError("create the QApplication first (pytest-qt's qapp fixture)")
    harness = Harness()
    sys.modules["qt"] = pythonqt.make_module(PanelUiLoader)
    ctk = types.ModuleType("ctk", "CTK's widgets the panel uses (stand-ins)")
    for name, cls in CUSTOM_WIDGETS.items():
        setattr(ctk if name.startswith("ctk") else slicer, name, cls)
    sys.modules["ctk"] = ctk
    scripted = _scripted_module()
    sys.modules["slicer.ScriptedLoadableModule"] = scripted
    sys.modules["slicer.parameterNodeWrapper"] = parameter_node
    slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper = scripted, parameter_node
    slicer.app = SlicerApplication(harness)
    slicer.modules = types.SimpleNamespace(markups=types.SimpleNamespace(logic=lambda: harness.markups_logic))
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    return harness
