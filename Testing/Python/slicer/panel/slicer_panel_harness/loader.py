"""``qt.QUiLoader`` for the panel tests: Qt's own loader, making the harness's classes, replaying the connections.

- Every standard widget is made as its ``qt.<Class>`` (PythonQt semantics, see ``pythonqt.py``) and every custom
  widget as its stand-in (``widgets.py``); a ``<customwidget>`` without a stand-in is an error.
- A custom widget's ``<property>`` elements are applied here, not by Qt: each must be a Qt property of the
  stand-in (the header's), except dynamic ones (``stdset="0"``, such as ``SlicerParameterName``); flag and enum
  values (``ctkPathLineEdit::Files``) come from the stand-in's enum tables.
- The ``<connections>`` are replayed through the stand-ins' C++ signatures (``mrmlSceneChanged(vtkMRMLScene*)``
  → ``setMRMLScene(vtkMRMLScene*)``); an unknown signal or slot is an error. Qt itself would only print a
  warning, since a Python signal's signature never names ``vtkMRMLScene*``.
"""
from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

from .pythonqt import PythonQtObject, has_property, pythonqt_class
from .widgets import CUSTOM_WIDGETS

__all__ = ["PanelUiLoader", "UiLoadError", "custom_widget_classes", "qt_messages"]


class UiLoadError(RuntimeError):
    """The ``.ui`` uses a custom widget, property, signal or slot that the stand-ins (the headers) lack."""


class qt_messages:
    """Collect Qt's messages (qWarning and the like, the ``Designer:`` ones of Qt's loader) while in the block."""

    def __enter__(self) -> list[tuple[QtCore.QtMsgType, str]]:
        self.messages = []
        self.previous = QtCore.qInstallMessageHandler(lambda kind, context, text: self.messages.append((kind, text)))
        return self.messages

    def __exit__(self, *exc):
        QtCore.qInstallMessageHandler(self.previous)


def custom_widget_classes(ui_text: str) -> list[str]:
    """The ``<customwidget>`` classes a ``.ui`` declares."""
    return [element.findtext("class") for element in ElementTree.fromstring(ui_text).iter("customwidget")]


def _flags(cls, text: str) -> int:
    value = 0
    for part in text.split("|"):
        owner, _, name = part.strip().rpartition("::")
        tables = [table for table in vars(cls).values() if isinstance(table, dict) and name in table]
        if owner != cls.__name__ or not tables:
            raise UiLoadError(f"{cls.__name__} has no enum value {part.strip()!r}")
        value |= tables[0][name]
    return value


def _value(cls, element):
    """A ``<property>``'s value as Python (the element types Qt Designer writes for these widgets)."""
    (value,) = list(element)
    kind, text = value.tag, value.text or ""
    if kind == "string":
        return text
    if kind == "bool":
        return text == "true"
    if kind == "number":
        return int(text)
    if kind == "double":
        return float(text)
    if kind == "stringlist":
        return [item.text or "" for item in value.findall("string")]
    if kind == "color":
        return QtGui.QColor(*(int(value.findtext(c, default)) for c, default in
                              (("red", "0"), ("green", "0"), ("blue", "0"), ("alpha", "255"))))
    if kind in ("set", "enum"):
        return _flags(cls, text)
    raise UiLoadError(f"property value of kind <{kind}> is not handled by the harness")


class PanelUiLoader(QtUiTools.QUiLoader):
    """Served as ``qt.QUiLoader``; ``slicer.util.loadUI`` uses it as it would Slicer's."""

    def createWidget(self, className, parent=None, name=""):
        cls = CUSTOM_WIDGETS.get(className)
        if cls is None:
            base = getattr(QtWidgets, className, None)
            if base is None:
                return super().createWidget(className, parent, name)
            cls = pythonqt_class(base)
        widget = cls(parent)
        widget.setObjectName(name)
        return widget

    def load(self, source, parentWidget=None):
        data = self._read(source)
        root = ElementTree.fromstring(data)
        missing = [name for name in custom_widget_classes(data) if name not in CUSTOM_WIDGETS]
        if missing:
            raise UiLoadError(f"no stand-in for the custom widget(s) {', '.join(missing)}")
        connections = root.find("connections")
        if connections is not None:
            root.remove(connections)
        custom_properties = []
        for widget in root.iter("widget"):
            if widget.get("class") in CUSTOM_WIDGETS:
                for element in widget.findall("property"):
                    widget.remove(element)
                    custom_properties.append((widget.get("name"), widget.get("class"), element))
            else:  # Qt's loader would make an unknown property a dynamic one, silently
                base = getattr(QtWidgets, widget.get("class"), None)
                for element in widget.findall("property"):
                    if base is not None and element.get("stdset") != "0" and not has_property(base, element.get("name")):
                        raise UiLoadError(f"{widget.get('class')} {widget.get('name')!r} has no property "
                                          f"{element.get('name')!r}")
        buffer = QtCore.QBuffer()
        buffer.setData(ElementTree.tostring(root))
        buffer.open(QtCore.QIODevice.ReadOnly)
        top = super().load(buffer, parentWidget)
        if top is None:
            raise UiLoadError(f"Qt could not load the .ui: {self.errorString()}")
        name_of = QtCore.QObject.objectName
        objects = {name_of(top): top}
        objects.update({name_of(child): child for child in top.findChildren(QtCore.QObject) if name_of(child)})
        for name, class_name, element in custom_properties:
            self._apply(objects[name], CUSTOM_WIDGETS[class_name], element)
        for connection in [] if connections is None else connections.findall("connection"):
            sender, receiver = (objects[connection.findtext(role)] for role in ("sender", "receiver"))
            if not isinstance(sender, PythonQtObject):
                raise UiLoadError(f"cannot replay a connection from {type(sender).__name__}")
            sender.connect(connection.findtext("signal"), receiver, connection.findtext("slot"))
        return top

    @staticmethod
    def _apply(widget, cls, element):
        name = element.get("name")
        value = _value(cls, element)
        if element.get("stdset") == "0":
            widget.setProperty(name, value)  # a dynamic property, as Qt's loader makes it
            return
        if not has_property(cls, name):
            raise UiLoadError(f"{cls.__name__} has no property {name!r} (see the header its stand-in follows)")
        if not QtCore.QObject.setProperty(widget, name, value):
            raise UiLoadError(f"{cls.__name__}.{name} did not accept {value!r}")

    @staticmethod
    def _read(source) -> str:
        if isinstance(source, (str, Path)):
            return Path(source).read_text(encoding="utf-8")
        if not source.isOpen():
            source.open(QtCore.QIODevice.ReadOnly)
        return bytes(source.readAll().data()).decode("utf-8")
