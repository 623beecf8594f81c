"""The ``qt`` module as PythonQt gives it to a Slicer module, built on PySide6.

What Slicer's PythonQt does and PySide6 does not, and what a module's code relies on:

- a Qt property is a Python attribute: ``label.text = "…"``, ``button.enabled``, ``bar.value`` (PySide6 would
  return the getter method, and an assignment would silently create a Python attribute instead);
- ``name`` is the object name (``slicer.util.childWidgetVariables`` reads ``widget.name``);
- ``obj.connect("clicked(bool)", slot)`` connects by the C++ signature, and a slot that takes fewer arguments
  than the signal is called with the first ones only.

Every ``QObject`` class is served as a subclass of the PySide6 class with :class:`PythonQtObject` in front, so
``type(widget) == qt.QCheckBox`` holds for the widgets the loader makes (Slicer's parameter-node GUI
connectors compare types exactly). Other names (``qt.Qt``, ``qt.QKeySequence``, ``qt.QColor``) are PySide6's.

A signature that the object's class does not declare raises :class:`SignatureError` (PythonQt prints an error
and connects nothing; a test must fail instead). Stand-ins for Slicer's and CTK's C++ widgets declare their
C++ signatures in ``CPP_SIGNALS`` / ``CPP_SLOTS`` (see ``widgets.py``), since a Python signal's own signature
names ``PyObject`` where the header says ``vtkMRMLNode*``.
"""
from __future__ import annotations

import inspect
import types

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

__all__ = [
    "PythonQtObject",
    "SignatureError",
    "has_property",
    "make_module",
    "normalized",
    "signal_signatures",
    "slot_signatures",
]


class SignatureError(AttributeError):
    """A connect named a signal or slot that the object's class does not declare."""


def normalized(signature: str) -> str:
    """Qt's normalised form of a signature (``currentPathChanged(const QString&)`` → ``currentPathChanged(QString)``)."""
    return bytes(QtCore.QMetaObject.normalizedSignature(signature).data()).decode()


def _class_table(cls, attribute: str) -> dict:
    table = {}
    for base in reversed(cls.__mro__):
        table.update({normalized(k): v for k, v in base.__dict__.get(attribute, {}).items()})
    return table


def _meta_methods(cls, kind) -> set[str]:
    meta = cls.staticMetaObject
    return {bytes(meta.method(i).methodSignature().data()).decode() for i in range(meta.methodCount())
            if meta.method(i).methodType() in kind}


_PY_OBJECT = "PyObject"


def signal_signatures(cls) -> set[str]:
    """Every signal signature ``connect`` accepts on ``cls``: Qt's own (from the meta-object) and the C++
    signatures a stand-in declares; a stand-in's Python signals (``…(PyObject)``) only through those."""
    own = {s for s in _meta_methods(cls, (QtCore.QMetaMethod.Signal,)) if _PY_OBJECT not in s}
    return own | set(_class_table(cls, "CPP_SIGNALS"))


def slot_signatures(cls) -> set[str]:
    own = {s for s in _meta_methods(cls, (QtCore.QMetaMethod.Slot,)) if _PY_OBJECT not in s}
    return own | set(_class_table(cls, "CPP_SLOTS"))


def has_property(cls, name: str) -> bool:
    """Whether ``name`` is a Qt property of ``cls`` (declared by Qt, or by a stand-in with ``QtCore.Property``)."""
    return cls.staticMetaObject.indexOfProperty(name) >= 0


_PROPERTIES: dict[type, frozenset] = {}


def _properties(cls) -> frozenset:
    names = _PROPERTIES.get(cls)
    if names is None:
        meta = cls.staticMetaObject
        names = _PROPERTIES[cls] = frozenset(meta.property(i).name() for i in range(meta.propertyCount()))
    return names


_PYTHON_NAMES: dict[type, frozenset] = {}


def _python_names(cls) -> frozenset:
    """Names defined by the Python classes of ``cls``'s hierarchy (the mixin's, a stand-in's), not by PySide6."""
    names = _PYTHON_NAMES.get(cls)
    if names is None:
        python_classes = [base for base in cls.__mro__ if not base.__module__.startswith(("PySide6", "Shiboken"))
                          and base is not object]
        names = _PYTHON_NAMES[cls] = frozenset(n for base in python_classes for n in vars(base) if n[:1] != "_")
    return names


def _positional_count(slot) -> int | None:
    """How many positional arguments ``slot`` takes (None: any number, or unknown)."""
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


def _trimmed(slot):
    """``slot`` called with as many of the signal's arguments as it takes, as PythonQt does."""
    count = _positional_count(slot)
    if count is None:
        return slot
    return lambda *args: slot(*args[:count])


class PythonQtObject:
    """Mixin in front of a PySide6 ``QObject`` class: PythonQt's attribute properties and string connects."""

    #: C++ signal signature (as the header declares it) → the attribute holding the Python signal (stand-ins)
    CPP_SIGNALS: dict[str, str] = {}
    #: C++ slot signature → the Python method (stand-ins)
    CPP_SLOTS: dict[str, str] = {}

    def __getattribute__(self, name):
        if name[:1] != "_":
            cls = type(self)
            if name in _properties(cls):
                return QtCore.QObject.property(self, name)
            if name == "name":
                return QtCore.QObject.objectName(self)
            if name in _python_names(cls):  # PySide6 would answer with its own method of that name (connect)
                return object.__getattribute__(self, name)
        return super().__getattribute__(name)

    def __setattr__(self, name, value):
        if name[:1] != "_":
            if name in _properties(type(self)):
                if not QtCore.QObject.setProperty(self, name, value):
                    raise AttributeError(f"{type(self).__name__}.{name} could not be set to {value!r}")
                return
            if name == "name":
                QtCore.QObject.setObjectName(self, value)
                return
        super().__setattr__(name, value)

    def _signal(self, signature: str):
        """The signal ``signature`` names, as something with ``connect`` and ``disconnect``."""
        signature = normalized(signature)
        table = _class_table(type(self), "CPP_SIGNALS")
        if signature in table:
            return object.__getattribute__(self, table[signature])
        if signature not in signal_signatures(type(self)):
            raise SignatureError(f"{type(self).__name__} has no signal {signature}")
        return _StringSignal(self, signature)

    def connect(self, signal: str, receiver, slot: str | None = None):
        """``connect("sig(args)", callable)`` or ``connect("sig(args)", receiver, "slot(args)")``."""
        target = _slot(receiver, slot) if slot is not None else receiver
        wrapper = _trimmed(target)
        self._signal(signal).connect(wrapper)
        connections = self.__dict__.setdefault("_pythonqt_connections", {})
        connections.setdefault((normalized(signal), id(target)), []).append(wrapper)
        return True

    def disconnect(self, signal: str, slot):
        """Undo one ``connect(signal, slot)``."""
        wrappers = self.__dict__.get("_pythonqt_connections", {}).get((normalized(signal), id(slot)), [])
        if not wrappers:
            return False
        self._signal(signal).disconnect(wrappers.pop())
        return True


def _slot(receiver, signature: str):
    """The Python callable behind ``receiver``'s slot ``signature`` (a stand-in's, or Qt's own)."""
    signature = normalized(signature)
    table = _class_table(type(receiver), "CPP_SLOTS")
    if signature in table:
        return object.__getattribute__(receiver, table[signature])
    if signature not in slot_signatures(type(receiver)):
        raise SignatureError(f"{type(receiver).__name__} has no slot {signature}")
    return object.__getattribute__(receiver, signature.split("(")[0])


class _StringSignal:
    """A Qt signal chosen by its exact signature (an overload such as ``clicked()`` vs ``clicked(bool)``)."""

    def __init__(self, sender, signature: str):
        self.sender, self.signature = sender, signature

    def connect(self, slot):
        return QtCore.QObject.connect(self.sender, QtCore.SIGNAL(self.signature), slot)

    def disconnect(self, slot):
        return QtCore.QObject.disconnect(self.sender, QtCore.SIGNAL(self.signature), slot)


_CLASSES: dict[str, type] = {}
_PYSIDE_MODULES = (QtWidgets, QtGui, QtCore)


def pythonqt_class(pyside_class: type) -> type:
    """The ``qt.<name>`` class for a PySide6 ``QObject`` class (made once)."""
    name = pyside_class.__name__
    if name not in _CLASSES:
        _CLASSES[name] = type(name, (PythonQtObject, pyside_class), {"__module__": "qt"})
    return _CLASSES[name]


def make_module(ui_loader: type) -> types.ModuleType:
    """A fresh ``qt`` module; ``qt.QUiLoader`` is ``ui_loader`` (the harness's, which knows the stand-ins)."""
    module = types.ModuleType("qt", __doc__)

    def __getattr__(name):
        if name == "QUiLoader":
            return ui_loader
        for source in _PYSIDE_MODULES:
            value = getattr(source, name, None)
            if value is not None:
                break
        else:
            raise AttributeError(f"module 'qt' has no attribute {name!r}")
        if isinstance(value, type) and issubclass(value, QtCore.QObject):
            return pythonqt_class(value)
        return value

    module.__getattr__ = __getattr__
    module.QtUiTools = QtUiTools
    return module


def is_valid(qobject) -> bool:
    """False once the C++ object behind ``qobject`` is gone (a VTK observer may outlive its widget)."""
    import shiboken6

    return shiboken6.isValid(qobject)
