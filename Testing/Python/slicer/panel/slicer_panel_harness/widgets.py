"""Stand-ins for the Slicer and CTK widgets that ``PromptReg.ui`` uses, over a real (slicer-core) MRML scene.

Each class names the header it follows; its Qt properties, its signals (``CPP_SIGNALS``, by the header's C++
signatures), its slots (``CPP_SLOTS``) and its other callable members (``INVOKABLES``: ``Q_INVOKABLE`` and
public methods) are the header's, and only those: a module that uses a name the real widget lacks fails here
too. Behaviour is the part a panel relies on (which nodes a selector lists and selects, what a collapsible
button hides), not the real widgets' every feature (no "Create new…" menu entries, no renaming dialogs).

Headers read (Slicer ``main``, CTK ``master``, 2026):

- ``Slicer/Libs/MRML/Widgets/qMRMLWidget.h``
- ``Slicer/Base/QTGUI/qSlicerWidget.h``
- ``Slicer/Libs/MRML/Widgets/qMRMLNodeComboBox.h``
- ``Slicer/Modules/Loadable/Markups/Widgets/qSlicerSimpleMarkupsWidget.h`` (and its ``.ui`` for the inner selector)
- ``CTK/Libs/Widgets/ctkCollapsibleButton.h``
- ``CTK/Libs/Widgets/ctkPathLineEdit.h``
"""
from __future__ import annotations

import slicer
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Property, Signal

from .pythonqt import PythonQtObject, is_valid

__all__ = ["CUSTOM_WIDGETS", "ctkCollapsibleButton", "ctkPathLineEdit", "qMRMLNodeComboBox", "qMRMLWidget",
           "qSlicerSimpleMarkupsWidget", "qSlicerWidget"]

QWIDGETSIZE_MAX = (1 << 24) - 1


class _SceneUser:
    """``mrmlScene()`` / ``setMRMLScene(vtkMRMLScene*)`` / ``mrmlSceneChanged(vtkMRMLScene*)``, shared by
    qMRMLWidget and qSlicerWidget (both declare exactly these)."""

    def _init_scene(self):
        self._scene = None

    def mrmlScene(self):
        return self._scene

    def setMRMLScene(self, scene):
        if scene is self._scene:
            return
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)


class qMRMLWidget(PythonQtObject, _SceneUser, QtWidgets.QWidget):
    """``qMRMLWidget.h``: base of any widget that needs a MRML scene. The ``.ui`` connects its
    ``mrmlSceneChanged(vtkMRMLScene*)`` to each selector's ``setMRMLScene(vtkMRMLScene*)``."""

    CPP_SIGNALS = {"mrmlSceneChanged(vtkMRMLScene*)": "mrmlSceneChanged"}
    CPP_SLOTS = {"setMRMLScene(vtkMRMLScene*)": "setMRMLScene"}
    INVOKABLES = ("mrmlScene", "preInitializeApplication", "postInitializeApplication", "pixmapFromIcon")
    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._init_scene()


class qSlicerWidget(PythonQtObject, _SceneUser, QtWidgets.QWidget):
    """``qSlicerWidget.h``: slots ``setParentVisible(bool)``, ``setMRMLScene(vtkMRMLScene*)``; signal
    ``mrmlSceneChanged(vtkMRMLScene*)``."""

    CPP_SIGNALS = {"mrmlSceneChanged(vtkMRMLScene*)": "mrmlSceneChanged"}
    CPP_SLOTS = {"setMRMLScene(vtkMRMLScene*)": "setMRMLScene", "setParentVisible(bool)": "setParentVisible"}
    INVOKABLES = ("mrmlScene", "parentWidget", "isParentContainerScrollArea", "setParentGeometry")
    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._init_scene()

    def setParentVisible(self, visible: bool):
        (self.parentWidget() or self).setVisible(visible)


class qMRMLNodeComboBox(PythonQtObject, QtWidgets.QWidget):
    """``qMRMLNodeComboBox.h``: lists the scene's nodes of ``nodeTypes`` (subclasses too unless
    ``showChildNodeTypes`` is false; hidden-from-editor ones only with ``showHidden``), with a "None" item when
    ``noneEnabled``. Like the real one (a QComboBox over the scene model) it selects the first node when the
    list goes from empty to non-empty and "None" is not offered, and selects another node (or none) when the
    current one leaves the scene."""

    CPP_SIGNALS = {
        "currentNodeChanged(vtkMRMLNode*)": "currentNodeChanged",
        "currentNodeChanged(bool)": "_currentNodeValidChanged",
        "currentNodeIDChanged(QString)": "currentNodeIDChanged",
        "nodeActivated(vtkMRMLNode*)": "nodeActivated",
        "nodeAdded(vtkMRMLNode*)": "nodeAdded",
        "nodeAddedByUser(vtkMRMLNode*)": "nodeAddedByUser",
        "nodeAddedByUserAction(vtkMRMLNode*)": "nodeAddedByUserAction",
        "nodeAboutToBeRemoved(vtkMRMLNode*)": "nodeAboutToBeRemoved",
        "currentNodeRenamed(QString)": "currentNodeRenamed",
        "nodeAboutToBeEdited(vtkMRMLNode*)": "nodeAboutToBeEdited",
    }
    CPP_SLOTS = {
        "setMRMLScene(vtkMRMLScene*)": "setMRMLScene",
        "setCurrentNode(vtkMRMLNode*)": "setCurrentNode",
        "setCurrentNode(QString)": "setCurrentNodeID",
        "setCurrentNodeID(QString)": "setCurrentNodeID",
        "setCurrentNodeIndex(int)": "setCurrentNodeIndex",
        "addNode(QString)": "addNode",
        "addNode()": "addNode",
        "removeCurrentNode()": "removeCurrentNode",
        "editCurrentNode()": "editCurrentNode",
        "renameCurrentNode()": "renameCurrentNode",
    }
    INVOKABLES = ("mrmlScene", "addAttribute", "removeAttribute", "setNodeTypeLabel", "nodeTypeLabel", "nodeCount",
                  "nodeFromIndex", "currentNode", "addMenuAction", "sortFilterProxyModel",
                  "setNodeTypes", "setBaseName", "nodes", "setNoneEnabled", "setAddEnabled", "setRemoveEnabled", "setShowHidden", "setShowChildNodeTypes",
                  "setHideChildNodeTypes", "setSelectNodeUponCreation", "setNoneDisplay", "setEditEnabled",
                  "setRenameEnabled")

    currentNodeChanged = Signal(object)
    _currentNodeValidChanged = Signal(bool)
    currentNodeIDChanged = Signal(str)
    nodeActivated = Signal(object)
    nodeAdded = Signal(object)
    nodeAddedByUser = Signal(object)
    nodeAddedByUserAction = Signal(object)
    nodeAboutToBeRemoved = Signal(object)
    currentNodeRenamed = Signal(str)
    nodeAboutToBeEdited = Signal(object)

    _SCENE_EVENTS = ("NodeAddedEvent", "NodeRemovedEvent", "EndBatchProcessEvent", "EndCloseEvent", "EndImportEvent")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene, self._observations, self._listed = None, [], []
        self._current = None
        self._settings = {"nodeTypes": [], "showHidden": False, "showChildNodeTypes": True,
                          "hideChildNodeTypes": [], "baseName": "", "noneEnabled": False, "addEnabled": True,
                          "removeEnabled": True, "editEnabled": False, "renameEnabled": False,
                          "interactionNodeSingletonTag": "Singleton", "selectNodeUponCreation": True,
                          "noneDisplay": "None", "sizeAdjustPolicy": int(QtWidgets.QComboBox.AdjustToContentsOnFirstShow.value)}
        self._combo = QtWidgets.QComboBox(self)
        self._combo.setObjectName("ComboBox")
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._combo)
        self._combo.activated.connect(self._onActivated)
        self.setEnabled(False)  # "disabled (grayed out) until a valid scene (not null) is provided"

    # --- properties (Q_PROPERTY in the header) ---
    def _setting(name):
        def get(self):
            return self._settings[name]

        def set_(self, value):
            self._settings[name] = list(value) if isinstance(value, (list, tuple)) else value
            if name in ("nodeTypes", "showHidden", "showChildNodeTypes", "hideChildNodeTypes", "noneEnabled",
                        "noneDisplay"):
                self._refresh()
        return get, set_

    nodeTypes = Property("QStringList", *_setting("nodeTypes"))
    showHidden = Property(bool, *_setting("showHidden"))
    showChildNodeTypes = Property(bool, *_setting("showChildNodeTypes"))
    hideChildNodeTypes = Property("QStringList", *_setting("hideChildNodeTypes"))
    baseName = Property(str, *_setting("baseName"))
    noneEnabled = Property(bool, *_setting("noneEnabled"))
    addEnabled = Property(bool, *_setting("addEnabled"))
    removeEnabled = Property(bool, *_setting("removeEnabled"))
    editEnabled = Property(bool, *_setting("editEnabled"))
    renameEnabled = Property(bool, *_setting("renameEnabled"))
    interactionNodeSingletonTag = Property(str, *_setting("interactionNodeSingletonTag"))
    selectNodeUponCreation = Property(bool, *_setting("selectNodeUponCreation"))
    noneDisplay = Property(str, *_setting("noneDisplay"))
    sizeAdjustPolicy = Property(int, *_setting("sizeAdjustPolicy"))
    del _setting

    def _currentNodeIDProperty(self):
        return self._current.GetID() if self._current is not None else ""

    currentNodeID = Property(str, _currentNodeIDProperty, lambda self, value: self.setCurrentNodeID(value),
                             notify=currentNodeIDChanged)
    currentNodeId = Property(str, _currentNodeIDProperty, lambda self, value: self.setCurrentNodeID(value))

    def setNodeTypes(self, types):
        self.nodeTypes = types

    def setNoneEnabled(self, enable):
        self.noneEnabled = enable

    def setAddEnabled(self, enable):
        self.addEnabled = enable

    def setRemoveEnabled(self, enable):
        self.removeEnabled = enable

    def setEditEnabled(self, enable):
        self.editEnabled = enable

    def setRenameEnabled(self, enable):
        self.renameEnabled = enable

    def setShowHidden(self, enable):
        self.showHidden = enable

    def setShowChildNodeTypes(self, show):
        self.showChildNodeTypes = show

    def setHideChildNodeTypes(self, types):
        self.hideChildNodeTypes = types

    def setSelectNodeUponCreation(self, value):
        self.selectNodeUponCreation = value

    def setNoneDisplay(self, text):
        self.noneDisplay = text

    def setBaseName(self, name, nodeType=""):
        self._settings["baseName"] = name

    # --- the scene ---
    def mrmlScene(self):
        return self._scene

    def setMRMLScene(self, scene):
        if scene is self._scene:
            return
        for observed, tag in self._observations:
            observed.RemoveObserver(tag)
        self._observations = []
        self._scene = scene
        if scene is not None:
            for event in self._SCENE_EVENTS:
                tag = scene.AddObserver(getattr(slicer.vtkMRMLScene, event), self._onSceneChanged)
                self._observations.append((scene, tag))
        self.setEnabled(scene is not None)
        self._refresh()

    def _onSceneChanged(self, caller, event):
        if not is_valid(self) or (self._scene is not None and self._scene.IsBatchProcessing()):
            return
        self._refresh()

    def _shown(self, node) -> bool:
        settings = self._settings
        types = settings["nodeTypes"]
        if types and not any(node.IsA(t) if settings["showChildNodeTypes"] else node.GetClassName() == t
                             for t in types):
            return False
        if any(node.IsA(t) for t in settings["hideChildNodeTypes"]):
            return False
        return settings["showHidden"] or not node.GetHideFromEditors()

    def nodes(self) -> list:
        return list(self._listed)

    def nodeCount(self) -> int:
        return len(self._listed)

    def nodeFromIndex(self, index: int):
        return self._listed[index] if 0 <= index < len(self._listed) else None

    def _refresh(self):
        was_empty = not self._listed
        scene = self._scene
        self._listed = []
        if scene is not None and self._settings["nodeTypes"]:
            self._listed = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())
                            if self._shown(scene.GetNthNode(i))]
        current = self._current
        if current is not None and current not in self._listed:
            current = None if self.noneEnabled or not self._listed else self._listed[0]
        elif current is None and was_empty and self._listed and not self.noneEnabled:
            current = self._listed[0]  # QComboBox: the first row inserted into an empty list becomes current
        self._fill()
        self._select(current)

    def _fill(self):
        blocked = self._combo.blockSignals(True)
        self._combo.clear()
        if self.noneEnabled:
            self._combo.addItem(self.noneDisplay)
        for node in self._listed:
            self._combo.addItem(node.GetName() or node.GetID())
        self._combo.blockSignals(blocked)

    def _select(self, node):
        row = -1
        if node is None:
            row = 0 if self.noneEnabled else -1
        elif node in self._listed:
            row = self._listed.index(node) + (1 if self.noneEnabled else 0)
        blocked = self._combo.blockSignals(True)
        self._combo.setCurrentIndex(row)
        self._combo.blockSignals(blocked)
        if node is not self._current:
            self._current = node
            self.currentNodeChanged.emit(node)
            self._currentNodeValidChanged.emit(node is not None)
            self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def _onActivated(self, row: int):
        node = self.nodeFromIndex(row - (1 if self.noneEnabled else 0))
        self._select(node)
        self.nodeActivated.emit(node)

    # --- current node ---
    def currentNode(self):
        return self._current

    def setCurrentNode(self, node):
        if isinstance(node, str):
            self.setCurrentNodeID(node)
            return
        self._select(node if node in self._listed else None)

    def setCurrentNodeID(self, nodeID: str):
        node = self._scene.GetNodeByID(nodeID) if self._scene is not None and nodeID else None
        self.setCurrentNode(node)

    def setCurrentNodeIndex(self, index: int):
        self.setCurrentNode(self.nodeFromIndex(index))

    def addNode(self, nodeType: str | None = None):
        nodeType = nodeType or (self.nodeTypes[0] if self.nodeTypes else None)
        if self._scene is None or nodeType not in self.nodeTypes:
            return None
        node = self._scene.AddNewNodeByClass(nodeType, self.baseName or "")
        self.nodeAddedByUserAction.emit(node)
        if self.selectNodeUponCreation:
            self.setCurrentNode(node)
        return node

    def removeCurrentNode(self):
        if self._current is not None and self._scene is not None:
            self.nodeAboutToBeRemoved.emit(self._current)
            self._scene.RemoveNode(self._current)

    def editCurrentNode(self):
        self.nodeAboutToBeEdited.emit(self._current)

    def renameCurrentNode(self):
        raise NotImplementedError("the stand-in has no rename dialog")

    def sizeHint(self):
        return self._combo.sizeHint()


class ctkCollapsibleButton(PythonQtObject, QtWidgets.QAbstractButton):
    """``ctkCollapsibleButton.h``: a checkable button header that shows or hides its children
    (``collapsed``, signal ``contentsCollapsed(bool)``); painted as a push button with an arrow, the
    contents below it."""

    CPP_SIGNALS = {"contentsCollapsed(bool)": "contentsCollapsed"}
    CPP_SLOTS = {"collapse(bool)": "_collapse", "onToggled(bool)": "_onToggled", "onToggled()": "_onToggled"}
    INVOKABLES = ("setCollapsed", "collapsedHeight", "setCollapsedHeight", "contentsFrameShape",
                  "setContentsFrameShape", "contentsFrameShadow", "setContentsFrameShadow", "contentsLineWidth",
                  "setContentsLineWidth", "contentsMidLineWidth", "setContentsMidLineWidth", "setButtonTextAlignment",
                  "buttonTextAlignment", "setIndicatorAlignment", "indicatorAlignment")
    contentsCollapsed = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed, self._collapsedHeight = False, 14
        self._lineWidth, self._midLineWidth = 1, 0
        self.setCheckable(True)
        self.setChecked(True)  # checked == expanded
        self.toggled.connect(self._onToggled)
        self.setSizePolicy(QtWidgets.QSizePolicy.Preferred, QtWidgets.QSizePolicy.Preferred)

    def _getCollapsed(self):
        return self._collapsed

    def setCollapsed(self, collapsed: bool):
        self.setChecked(not collapsed)  # toggled → _onToggled → _collapse

    collapsed = Property(bool, _getCollapsed, setCollapsed, notify=contentsCollapsed)
    collapsedHeight = Property(int, lambda self: self._collapsedHeight,
                               lambda self, value: setattr(self, "_collapsedHeight", value))
    contentsLineWidth = Property(int, lambda self: self._lineWidth, lambda self, value: setattr(self, "_lineWidth", value))
    contentsMidLineWidth = Property(int, lambda self: self._midLineWidth,
                                    lambda self, value: setattr(self, "_midLineWidth", value))

    def _onToggled(self, checked: bool = False):
        if self.isCheckable():
            self._collapse(not checked)

    def _collapse(self, collapsed: bool):
        if collapsed == self._collapsed:
            return
        self._collapsed = collapsed
        for child in self.findChildren(QtWidgets.QWidget, "", QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not collapsed)
        self._arrange()
        self.contentsCollapsed.emit(collapsed)

    def _headerHeight(self) -> int:
        option = QtWidgets.QStyleOptionButton()
        option.initFrom(self)
        text = self.fontMetrics().size(QtCore.Qt.TextShowMnemonic, self.text)
        return self.style().sizeFromContents(QtWidgets.QStyle.CT_PushButton, option, text, self).height()

    def _arrange(self):
        layout = self.layout()
        header = self._headerHeight()
        if layout is not None:
            margins = layout.contentsMargins()
            layout.setContentsMargins(margins.left(), header + 4, margins.right(), margins.bottom())
        self.setMaximumHeight(header if self._collapsed else QWIDGETSIZE_MAX)
        self.updateGeometry()

    def event(self, event):
        if event.type() in (QtCore.QEvent.Polish, QtCore.QEvent.LayoutRequest) and self.layout() is not None \
                and self.layout().contentsMargins().top() < self._headerHeight():
            self._arrange()
        return super().event(event)

    def hitButton(self, position):
        return QtCore.QRect(0, 0, self.width, self._headerHeight()).contains(position)

    def sizeHint(self):
        header = QtCore.QSize(self.fontMetrics().horizontalAdvance(self.text) + 40, self._headerHeight())
        if self._collapsed or self.layout() is None:
            return header
        contents = self.layout().sizeHint()
        return QtCore.QSize(max(header.width(), contents.width()), max(header.height(), contents.height()))

    def minimumSizeHint(self):
        if self._collapsed or self.layout() is None:
            return QtCore.QSize(40, self._headerHeight())
        return self.layout().minimumSize()

    def paintEvent(self, event):
        painter = QtWidgets.QStylePainter(self)
        option = QtWidgets.QStyleOptionButton()
        option.initFrom(self)
        option.rect = QtCore.QRect(0, 0, self.width, self._headerHeight())
        painter.drawControl(QtWidgets.QStyle.CE_PushButtonBevel, option)
        arrow = QtWidgets.QStyleOption()
        arrow.initFrom(self)
        size = option.rect.height() // 2
        arrow.rect = QtCore.QRect(6, (option.rect.height() - size) // 2, size, size)
        element = QtWidgets.QStyle.PE_IndicatorArrowRight if self._collapsed else QtWidgets.QStyle.PE_IndicatorArrowDown
        painter.drawPrimitive(element, arrow)
        text_rect = option.rect.adjusted(size + 12, 0, -4, 0)
        painter.drawText(text_rect, int(QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter), self.text)
        if not self._collapsed and self._lineWidth:
            frame = QtCore.QRect(0, option.rect.height(), self.width - 1, self.height - option.rect.height() - 1)
            painter.setPen(self.palette.color(QtGui.QPalette.Mid))
            painter.drawRect(frame)


class ctkPathLineEdit(PythonQtObject, QtWidgets.QWidget):
    """``ctkPathLineEdit.h``: an editable path (``currentPath``, signal ``currentPathChanged(QString)``) and a
    browse button; ``filters`` takes the header's ``Filter`` flags (``ctkPathLineEdit::Files`` …)."""

    #: enum Filter, as the header numbers it (the loader resolves ``<set>ctkPathLineEdit::Files</set>`` here)
    Filter = {"Dirs": 0x001, "Files": 0x002, "Drives": 0x004, "NoSymLinks": 0x008, "AllEntries": 0x007,
              "TypeMask": 0x00f, "Readable": 0x010, "Writable": 0x020, "Executable": 0x040, "PermissionMask": 0x070,
              "Modified": 0x080, "Hidden": 0x100, "System": 0x200, "AccessMask": 0x3F0, "AllDirs": 0x400,
              "CaseSensitive": 0x800, "NoDotAndDotDot": 0x1000, "NoDot": 0x2000, "NoDotDot": 0x4000, "NoFilter": -1}
    Option = {"ShowDirsOnly": 0x01, "DontResolveSymlinks": 0x02, "DontConfirmOverwrite": 0x04, "DontUseSheet": 0x08,
              "DontUseNativeDialog": 0x10, "ReadOnly": 0x20, "HideNameFilterDetails": 0x40}
    CPP_SIGNALS = {"validInputChanged(bool)": "validInputChanged", "currentPathChanged(QString)": "currentPathChanged"}
    CPP_SLOTS = {"setCurrentPath(QString)": "setCurrentPath", "browse()": "browse", "retrieveHistory()": "retrieveHistory",
                 "addCurrentPathToHistory()": "addCurrentPathToHistory"}
    INVOKABLES = ("setCurrentFileExtension", "comboBox", "setLabel", "setNameFilters", "setFilters", "setOptions",
                  "setSettingKey", "setShowBrowseButton", "setShowHistoryButton", "setSizeAdjustPolicy",
                  "setMinimumContentsLength")
    validInputChanged = Signal(bool)
    currentPathChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._settings = {"label": "", "filters": self.Filter["AllEntries"], "options": 0, "settingKey": "",
                          "showBrowseButton": True, "showHistoryButton": True, "sizeAdjustPolicy": 1,
                          "minimumContentsLength": 0, "nameFilters": []}
        self._combo = QtWidgets.QComboBox(self)
        self._combo.setEditable(True)
        self._combo.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        self._browse = QtWidgets.QToolButton(self)
        self._browse.setText("…")
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._combo)
        layout.addWidget(self._browse)
        self._combo.editTextChanged.connect(self.currentPathChanged.emit)

    def _setting(name):
        return (lambda self: self._settings[name]), (lambda self, value: self._settings.__setitem__(name, value))

    label = Property(str, *_setting("label"))
    filters = Property(int, *_setting("filters"))
    options = Property(int, *_setting("options"))
    settingKey = Property(str, *_setting("settingKey"))
    showBrowseButton = Property(bool, *_setting("showBrowseButton"))
    showHistoryButton = Property(bool, *_setting("showHistoryButton"))
    sizeAdjustPolicy = Property(int, *_setting("sizeAdjustPolicy"))
    minimumContentsLength = Property(int, *_setting("minimumContentsLength"))
    nameFilters = Property("QStringList", *_setting("nameFilters"))
    del _setting

    def _getCurrentPath(self) -> str:
        return self._combo.currentText()

    def setCurrentPath(self, path: str):
        self._combo.setEditText(path)

    currentPath = Property(str, _getCurrentPath, setCurrentPath, user=True)

    def setFilters(self, filters):
        self.filters = filters

    def browse(self):
        raise NotImplementedError("the stand-in opens no file dialog")

    def retrieveHistory(self):
        pass

    def addCurrentPathToHistory(self):
        pass

    def comboBox(self):
        return self._combo


class qSlicerSimpleMarkupsWidget(qSlicerWidget):
    """``qSlicerSimpleMarkupsWidget.h``: a point-list selector (its ``.ui``: a qMRMLNodeComboBox of
    ``vtkMRMLMarkupsFiducialNode``, "None" offered, hidden nodes shown) over a table of the current list's
    control points. ``currentNode()`` / ``setCurrentNode(vtkMRMLNode*)``; ``markupsNodeChanged()`` (and the
    deprecated ``markupsFiducialNodeChanged()``) when the selection changes."""

    CPP_SIGNALS = {
        "markupsNodeChanged()": "markupsNodeChanged",
        "markupsFiducialNodeChanged()": "markupsFiducialNodeChanged",
        "currentMarkupsControlPointSelectionChanged(int)": "currentMarkupsControlPointSelectionChanged",
        "currentMarkupsFiducialSelectionChanged(int)": "currentMarkupsFiducialSelectionChanged",
        "activeMarkupsPlaceModeChanged(bool)": "activeMarkupsPlaceModeChanged",
        "activeMarkupsFiducialPlaceModeChanged(bool)": "activeMarkupsFiducialPlaceModeChanged",
        "updateFinished()": "updateFinished",
    }
    CPP_SLOTS = {
        "setCurrentNode(vtkMRMLNode*)": "setCurrentNode",
        "setNodeBaseName(QString)": "setNodeBaseName",
        "setInteractionNode(vtkMRMLInteractionNode*)": "setInteractionNode",
        "setEnterPlaceModeOnNodeChange(bool)": "setEnterPlaceModeOnNodeChange",
        "setJumpToSliceEnabled(bool)": "setJumpToSliceEnabled",
        "setNodeSelectorVisible(bool)": "setNodeSelectorVisible",
        "setOptionsVisible(bool)": "setOptionsVisible",
        "setNodeColor(QColor)": "setNodeColor",
        "setDefaultNodeColor(QColor)": "setDefaultNodeColor",
        "highlightNthControlPoint(int)": "highlightNthControlPoint",
        "highlightNthFiducial(int)": "highlightNthControlPoint",
        "activate()": "activate",
        "placeActive(bool)": "placeActive",
    }
    INVOKABLES = qSlicerWidget.INVOKABLES + ("currentNode", "getCurrentNode", "interactionNode", "tableWidget",
                                             "markupsPlaceWidget", "markupsSelectorComboBox", "setViewGroup")
    markupsNodeChanged = Signal()
    markupsFiducialNodeChanged = Signal()
    currentMarkupsControlPointSelectionChanged = Signal(int)
    currentMarkupsFiducialSelectionChanged = Signal(int)
    activeMarkupsPlaceModeChanged = Signal(bool)
    activeMarkupsFiducialPlaceModeChanged = Signal(bool)
    updateFinished = Signal()

    _POINT_EVENTS = ("PointAddedEvent", "PointRemovedEvent", "PointModifiedEvent")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._settings = {"enterPlaceModeOnNodeChange": True, "jumpToSliceEnabled": False,
                          "nodeSelectorVisible": True, "optionsVisible": True, "nodeColor": QtGui.QColor(),
                          "defaultNodeColor": QtGui.QColor(), "viewGroup": -1}
        self._observed, self._interactionNode = [], None
        self._selector = qMRMLNodeComboBox(self)
        self._selector.setObjectName("MarkupsNodeComboBox")
        self._selector.nodeTypes = ["vtkMRMLMarkupsFiducialNode"]
        self._selector.showHidden = True
        self._selector.noneEnabled = True
        self._selector.renameEnabled = True
        self._table = QtWidgets.QTableWidget(0, 4, self)
        self._table.setObjectName("MarkupsControlPointsTableWidget")
        self._table.setHorizontalHeaderLabels(["Label", "R", "A", "S"])
        self._table.horizontalHeader().setStretchLastSection(True)
        self._table.verticalHeader().setVisible(False)
        self._table.setMinimumHeight(90)
        self._table.setMaximumHeight(130)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._selector)
        layout.addWidget(self._table)
        self.mrmlSceneChanged.connect(self._selector.setMRMLScene)  # the widget's own .ui connection
        self._selector.currentNodeChanged.connect(self._onMarkupsNodeChanged)

    def _setting(name):
        return (lambda self: self._settings[name]), (lambda self, value: self._settings.__setitem__(name, value))

    enterPlaceModeOnNodeChange = Property(bool, *_setting("enterPlaceModeOnNodeChange"))
    jumpToSliceEnabled = Property(bool, *_setting("jumpToSliceEnabled"))
    optionsVisible = Property(bool, *_setting("optionsVisible"))
    defaultNodeColor = Property(QtGui.QColor, *_setting("defaultNodeColor"))
    viewGroup = Property(int, *_setting("viewGroup"))
    del _setting

    def _getNodeSelectorVisible(self):
        return self._settings["nodeSelectorVisible"]

    def setNodeSelectorVisible(self, visible: bool):
        self._settings["nodeSelectorVisible"] = visible
        self._selector.setVisible(visible)

    nodeSelectorVisible = Property(bool, _getNodeSelectorVisible, setNodeSelectorVisible)

    def _getNodeColor(self):
        return self._settings["nodeColor"]

    def setNodeColor(self, color):
        """The current node's selected colour (its display node), as the real widget's colour button sets it."""
        self._settings["nodeColor"] = QtGui.QColor(color)
        display = self.currentNode().GetDisplayNode() if self.currentNode() is not None else None
        if display is not None and QtGui.QColor(color).isValid():
            display.SetSelectedColor(color.redF(), color.greenF(), color.blueF())

    nodeColor = Property(QtGui.QColor, _getNodeColor, setNodeColor)

    def setEnterPlaceModeOnNodeChange(self, value: bool):
        self.enterPlaceModeOnNodeChange = value

    def setJumpToSliceEnabled(self, value: bool):
        self.jumpToSliceEnabled = value

    def setOptionsVisible(self, value: bool):
        self.optionsVisible = value

    def setDefaultNodeColor(self, color):
        self.defaultNodeColor = color

    def setViewGroup(self, group: int):
        self.viewGroup = group

    def setNodeBaseName(self, name: str):
        self._selector.setBaseName(name)

    def setInteractionNode(self, node):
        self._interactionNode = node

    def interactionNode(self):
        return self._interactionNode

    def tableWidget(self):
        return self._table

    def markupsPlaceWidget(self):
        return None

    def markupsSelectorComboBox(self):
        return self._selector

    def currentNode(self):
        return self._selector.currentNode()

    def getCurrentNode(self):
        return self.currentNode()

    def setCurrentNode(self, node):
        self._selector.setCurrentNode(node)

    def highlightNthControlPoint(self, n: int):
        self._table.selectRow(n)
        self.currentMarkupsControlPointSelectionChanged.emit(n)

    def activate(self):
        node = self.currentNode()
        if node is not None:
            slicer.modules.markups.logic().SetActiveList(node)

    def placeActive(self, place: bool):
        self.activate()
        self.activeMarkupsPlaceModeChanged.emit(place)

    def _onMarkupsNodeChanged(self, node):
        for observed, tag in self._observed:
            observed.RemoveObserver(tag)
        self._observed = []
        if node is not None:
            for event in self._POINT_EVENTS:
                tag = node.AddObserver(getattr(slicer.vtkMRMLMarkupsNode, event), self._onPointsChanged)
                self._observed.append((node, tag))
        self._updateTable()
        self.markupsNodeChanged.emit()
        self.markupsFiducialNodeChanged.emit()

    def _onPointsChanged(self, caller, event):
        if is_valid(self):
            self._updateTable()

    def _updateTable(self):
        node = self.currentNode()
        count = node.GetNumberOfControlPoints() if node is not None else 0
        self._table.setRowCount(count)
        for row in range(count):
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPosition(row, position)
            values = [node.GetNthControlPointLabel(row)] + [f"{value:.1f}" for value in position]
            for column, value in enumerate(values):
                self._table.setItem(row, column, QtWidgets.QTableWidgetItem(value))
        self.updateFinished.emit()


#: the ``.ui``'s custom widget class name → stand-in
CUSTOM_WIDGETS = {cls.__name__: cls for cls in (qMRMLWidget, qSlicerWidget, qMRMLNodeComboBox, ctkCollapsibleButton,
                                                ctkPathLineEdit, qSlicerSimpleMarkupsWidget)}
