"""``slicer.parameterNodeWrapper`` for the panel tests: the subset PromptReg uses, behaving as Slicer's does.

Slicer's (``Base/Python/slicer/parameterNodeWrapper``: ``wrapper.py``, ``guiConnectors.py``, ``validators.py``)
is Qt-bound Python that slicer-core lacks. What this one keeps of it, because a panel depends on it:

- typed parameters read with ``typing.get_type_hints(..., include_extras=True)``, so ``Annotated[str,
  Choice(...)]`` annotations are evaluated in the module's globals as Slicer evaluates them;
- values stored in a ``vtkMRMLScriptedModuleNode``: plain values as parameters, nodes as node references;
  validators (``Choice``, ``WithinRange``, ``Minimum``, ``Maximum``) checked on every write;
- ``connectGui(ui)`` binds the widgets whose ``SlicerParameterName`` dynamic property names a parameter, with
  the same connectors, chosen by the widget's *exact* type as Slicer's are: QCheckBox ↔ bool, QSpinBox ↔ int and
  QDoubleSpinBox ↔ float (ranges from the validators, else unbounded: the ``.ui``'s are overridden), QComboBox ↔
  a value with a ``Choice`` annotation (the combo is cleared and filled with the choices; without ``Choice``
  Slicer raises, and so does this), QLineEdit ↔ str, ctkPathLineEdit ↔ pathlib paths, qMRMLNodeComboBox ↔
  node types (its ``nodeTypes`` set from the annotation); any other pair raises ``RuntimeError``;
- a parameter node modification writes every connected widget; a widget change writes its parameter.
"""
from __future__ import annotations

import dataclasses
import pathlib
import typing

import slicer
import vtk

__all__ = ["Choice", "Default", "Maximum", "Minimum", "WithinRange", "parameterNodeWrapper"]


@dataclasses.dataclass
class Choice:
    choices: typing.Sequence

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value '{value}' is not within the given choices {list(self.choices)}")


@dataclasses.dataclass
class WithinRange:
    minimum: float
    maximum: float

    def validate(self, value):
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value {value} is not within [{self.minimum}, {self.maximum}]")


@dataclasses.dataclass
class Minimum:
    minimum: float

    def validate(self, value):
        if value < self.minimum:
            raise ValueError(f"Value {value} is below the minimum {self.minimum}")


@dataclasses.dataclass
class Maximum:
    maximum: float

    def validate(self, value):
        if value > self.maximum:
            raise ValueError(f"Value {value} is above the maximum {self.maximum}")


@dataclasses.dataclass
class Default:
    value: typing.Any


def _split(hint):
    if typing.get_origin(hint) is typing.Annotated:
        return typing.get_args(hint)[0], list(hint.__metadata__)
    return hint, []


def _first(annotations, kind):
    return next((a for a in annotations if isinstance(a, kind)), None)


def _is_node_type(datatype) -> bool:
    return isinstance(datatype, type) and issubclass(datatype, slicer.vtkMRMLNode)


class _Parameter:
    """One parameter: its name, type, validators and default; reads and writes a scripted module node."""

    def __init__(self, name, hint, default):
        self.name, self.hint = name, hint
        self.datatype, self.annotations = _split(hint)
        if not (_is_node_type(self.datatype) or self.datatype in (str, int, float, bool, pathlib.Path)):
            raise TypeError(f"the harness's parameterNodeWrapper does not handle {hint} ({name})")
        self.default = default

    def write(self, node, value):
        if _is_node_type(self.datatype):
            if value is not None and not isinstance(value, self.datatype):
                raise ValueError(f"{self.name} must be a {self.datatype.__name__}, not {type(value).__name__}")
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            return
        value = self.datatype(value)
        for validator in self.annotations:
            if hasattr(validator, "validate"):
                validator.validate(value)
        node.SetParameter(self.name, str(value))

    def read(self, node):
        if _is_node_type(self.datatype):
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        if self.datatype is bool:
            return text == "True"
        return self.datatype(text)

    def present(self, node) -> bool:
        """Whether the node holds a value (a node parameter's default, None, is the absence of a reference)."""
        return _is_node_type(self.datatype) or self.name in node.GetParameterNames()


# --- GUI connectors (guiConnectors.py): exact types, as Slicer's ---------------------------------------------
class _Connector:
    def __init__(self, widget):
        self.widget, self._callback = widget, None

    def on_changed(self, callback):
        if self._callback is not None:
            self._signal().disconnect(self._changed)
        self._callback = callback
        if callback is not None:
            self._signal().connect(self._changed)

    def _changed(self, *args):
        if self._callback is not None:
            self._callback()


class _CheckBox(_Connector):
    def _signal(self):
        return self.widget.stateChanged

    def read(self):
        return self.widget.checked

    def write(self, value):
        self.widget.checked = value


class _SpinBox(_Connector):
    def __init__(self, widget, annotations, unbounded):
        super().__init__(widget)
        within, low, high = (_first(annotations, kind) for kind in (WithinRange, Minimum, Maximum))
        self.widget.minimum = within.minimum if within else low.minimum if low else unbounded[0]
        self.widget.maximum = within.maximum if within else high.maximum if high else unbounded[1]

    def _signal(self):
        return self.widget.valueChanged

    def read(self):
        return self.widget.value

    def write(self, value):
        self.widget.value = value


class _ComboBox(_Connector):
    def __init__(self, widget, choices):
        super().__init__(widget)
        self.choices = list(choices)
        widget.clear()
        for choice in self.choices:
            widget.addItem(str(choice))

    def _signal(self):
        return self.widget.currentIndexChanged

    def read(self):
        return self.choices[self.widget.currentIndex]

    def write(self, value):
        if value not in self.choices:
            raise ValueError(f"Unable to find value {value} in choices {self.choices}")
        self.widget.currentIndex = self.choices.index(value)


class _LineEdit(_Connector):
    def _signal(self):
        return self.widget.textChanged

    def read(self):
        return self.widget.text

    def write(self, value):
        self.widget.text = value


class _PathLineEdit(_Connector):
    def __init__(self, widget, datatype):
        super().__init__(widget)
        self.datatype = datatype

    def _signal(self):
        return self.widget.currentPathChanged

    def read(self):
        return self.datatype(self.widget.currentPath)

    def write(self, value):
        self.widget.currentPath = str(value)


class _NodeComboBox(_Connector):
    def __init__(self, widget, datatype):
        super().__init__(widget)
        widget.nodeTypes = [datatype.__name__]

    def _signal(self):
        return self.widget.currentNodeChanged

    def read(self):
        return self.widget.currentNode()

    def write(self, value):
        self.widget.setCurrentNode(value)


def _connector(widget, parameter):
    import ctk
    import qt

    kind, datatype, annotations = type(widget), parameter.datatype, parameter.annotations
    if kind == qt.QCheckBox and datatype is bool:
        return _CheckBox(widget)
    if kind == qt.QSpinBox and datatype is int:
        return _SpinBox(widget, annotations, (-2 ** 31, 2 ** 31 - 1))
    if kind == qt.QDoubleSpinBox and datatype is float:
        return _SpinBox(widget, annotations, (float("-inf"), float("inf")))
    if kind == qt.QComboBox and datatype in (int, float, str, bool):
        choice = _first(annotations, Choice)
        if choice is None:
            raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
        return _ComboBox(widget, choice.choices)
    if kind == qt.QLineEdit and datatype is str:
        return _LineEdit(widget)
    if kind == ctk.ctkPathLineEdit and datatype is pathlib.Path:
        return _PathLineEdit(widget, datatype)
    if kind == slicer.qMRMLNodeComboBox and _is_node_type(datatype):
        return _NodeComboBox(widget, datatype)
    raise RuntimeError(f"Unable to create GUI connector from datatype '{parameter.hint}' to widget type '{kind}'")


SlicerParameterNamePropertyName = "SlicerParameterName"


# --- the wrapper (wrapper.py) -----------------------------------------------------------------------------------
def _init(self, parameterNode):
    self.parameterNode = parameterNode
    self._guis, self._nextTag, self._updating, self._observerTags = {}, 0, False, {}
    for parameter in self.allParameters.values():
        if not parameter.present(parameterNode):
            parameter.write(parameterNode, parameter.default)


def _getValue(self, name):
    return self.allParameters[name].read(self.parameterNode)


def _setValue(self, name, value):
    self.allParameters[name].write(self.parameterNode, value)


def _updateGui(self):
    if self._updating:
        return
    self._updating = True
    try:
        for mapping in self._guis.values():
            for name, connector in mapping.items():
                connector.write(self.getValue(name))
    finally:
        self._updating = False


def _connectParametersToGui(self, mapping):
    for name in mapping:
        if name not in self.allParameters:
            raise ValueError(f"Cannot find a param with the given name: {name}")
    connectors = {name: _connector(widget, self.allParameters[name]) for name, widget in mapping.items()}
    tag = self._nextTag
    self._nextTag += 1
    self._guis[tag] = connectors
    for name, connector in connectors.items():
        connector.write(self.getValue(name))

        def changed(name=name, connector=connector):
            if not self._updating:
                self.setValue(name, connector.read())
        connector.on_changed(changed)
    self._observerTags[tag] = self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent,
                                                             lambda caller, event: _updateGui(self))
    return tag


def _connectGui(self, gui):
    from PySide6 import QtWidgets

    widgets = gui.findChildren(QtWidgets.QWidget) if isinstance(gui, QtWidgets.QWidget) else list(vars(gui).values())
    mapping = {}
    for widget in widgets:
        name = widget.property(SlicerParameterNamePropertyName) if hasattr(widget, "property") else None
        if name:
            mapping[name] = widget
    return _connectParametersToGui(self, mapping)


def _disconnectGui(self, tag):
    for connector in self._guis.pop(tag, {}).values():
        connector.on_changed(None)
    observer = self._observerTags.pop(tag, None)
    if observer is not None:
        self.parameterNode.RemoveObserver(observer)


def _property(name):
    return property(lambda self: self.getValue(name), lambda self, value: self.setValue(name, value))


def parameterNodeWrapper(classtype=None):
    """Class decorator: typed attributes stored in a scripted module node, and GUI binding (``connectGui``)."""

    def wrap(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        parameters = {}
        for name, hint in hints.items():
            datatype, annotations = _split(hint)
            default = getattr(cls, name) if hasattr(cls, name) else (
                _first(annotations, Default).value if _first(annotations, Default) else
                None if _is_node_type(datatype) else datatype())
            parameters[name] = _Parameter(name, hint, default)
            setattr(cls, name, _property(name))
        cls.allParameters = parameters
        cls.__init__ = _init
        cls.getValue, cls.setValue = _getValue, _setValue
        cls.dataType = staticmethod(lambda name: parameters[name].hint)
        cls.connectGui, cls.connectParametersToGui, cls.disconnectGui = _connectGui, _connectParametersToGui, _disconnectGui
        cls.StartModify = lambda self: self.parameterNode.StartModify()
        cls.EndModify = lambda self, wasModified: self.parameterNode.EndModify(wasModified)
        cls.AddObserver = lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback,
                                                                                                      priority)
        cls.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
        cls.Modified = lambda self: self.parameterNode.Modified()
        return cls

    return wrap if classtype is None else wrap(classtype)
