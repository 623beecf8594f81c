"""Every signal, property and method the module uses exists on the class it is used on, read from its source.

PythonQt reports a misspelt signal only when the line runs, and a misspelt property not at all (``label.txt =
"…"`` makes a Python attribute). This reads ``PromptReg.py`` without running it and resolves what each name is
used on: ``self.ui.<widget>`` by the ``.ui``'s class for that widget, ``uiWidget`` (``slicer.util.loadUI``) by its
top-level class, and names bound to ``qt.<Class>(…)``. On those it checks

- ``x.connect("sig(args)", …)``: a signal of the class (Qt's meta-object, or the stand-in's header signatures);
- ``x.attr = …``, ``setattr(x, "attr", …)`` and a read of ``x.attr`` that is not called: a Qt property (PythonQt
  exposes properties as attributes; a signal read for ``.connect`` counts as a signal);
- ``x.method(…)``: a method of the class that no property of that name shadows (PythonQt answers a property's
  value where Qt has a getter of the same name, so ``table.rowCount()`` fails there); on a stand-in, a name its
  header declares (``INVOKABLES``, its slots) or a Qt base-class method.
"""
from __future__ import annotations

import ast
import dataclasses
from xml.etree import ElementTree

from PySide6 import QtCore, QtGui, QtWidgets

from .pythonqt import has_property, normalized, pythonqt_class, signal_signatures, slot_signatures
from .widgets import CUSTOM_WIDGETS

__all__ = ["Use", "check", "uses"]


@dataclasses.dataclass(frozen=True)
class Use:
    line: int
    owner: str       # how the source names it: "ui.registerButton", "uiWidget", "self._timer"
    class_name: str  # its Qt or stand-in class
    kind: str        # "signal", "set", "get", "call", "signal attribute"
    name: str

    def __str__(self):
        return f"line {self.line}: {self.owner} ({self.class_name}) {self.kind} {self.name!r}"


def _ui_classes(ui_text: str) -> tuple[dict[str, str], str]:
    root = ElementTree.fromstring(ui_text)
    top = root.find("widget")
    return {w.get("name"): w.get("class") for w in root.iter("widget")}, top.get("class")


def _expression(node) -> str | None:
    """``self.ui.x`` → "self.ui.x", ``self._timer`` → "self._timer", ``shortcut`` → "shortcut"."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _expression(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def _constructed_class(node) -> str | None:
    """``qt.QTimer()`` → "QTimer"; ``slicer.util.loadUI(…)`` → "<top>"."""
    if isinstance(node, ast.Call):
        callee = _expression(node.func)
        if callee and callee.startswith("qt."):
            return callee[3:]
        if callee == "slicer.util.loadUI":
            return "<top>"
    return None


def uses(source: str, ui_text: str) -> list[Use]:
    """What ``source`` uses on widgets and Qt objects whose class it can tell."""
    widget_classes, top_class = _ui_classes(ui_text)
    tree = ast.parse(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    bound: dict[str, tuple[str, ...]] = {}

    def owner_classes(expression: str | None) -> tuple[str, ...]:
        if expression is None:
            return ()
        if expression.startswith("self.ui.") and expression.count(".") == 2:
            return (widget_classes.get(expression[len("self.ui."):], "<unknown widget>"),)
        return bound.get(expression, ())

    for _ in range(2):  # constructors, then names bound to those (``table = self.ui.pairsTable``, loops)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and _expression(node.targets[0]):
                class_name = _constructed_class(node.value)
                classes = ((top_class if class_name == "<top>" else class_name),) if class_name else \
                    owner_classes(_expression(node.value))
                if classes:
                    bound[_expression(node.targets[0])] = classes
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Name) and \
                    isinstance(node.iter, (ast.Tuple, ast.List)):
                classes = [owner_classes(_expression(item)) for item in node.iter.elts]
                if classes and all(classes):
                    bound[node.target.id] = tuple(sorted({c for group in classes for c in group}))

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            owner = _expression(node.args[0])
            found += [Use(node.lineno, owner, c, "set", node.args[1].value) for c in owner_classes(owner)]
            continue
        if not isinstance(node, ast.Attribute):
            continue
        owner = _expression(node.value)
        parent = parents.get(node)
        for class_name in owner_classes(owner):
            if isinstance(parent, ast.Call) and parent.func is node:
                if node.attr == "connect" and parent.args and isinstance(parent.args[0], ast.Constant):
                    found.append(Use(node.lineno, owner, class_name, "signal", parent.args[0].value))
                else:
                    found.append(Use(node.lineno, owner, class_name, "call", node.attr))
            elif isinstance(node.ctx, ast.Store):
                found.append(Use(node.lineno, owner, class_name, "set", node.attr))
            elif isinstance(parent, ast.Attribute) and parent.attr in ("connect", "disconnect", "emit"):
                found.append(Use(node.lineno, owner, class_name, "signal attribute", node.attr))
            else:
                found.append(Use(node.lineno, owner, class_name, "get", node.attr))
    return sorted(found, key=lambda use: (use.line, use.owner, use.name))


def resolve(class_name: str):
    """The class the harness serves for a ``.ui`` or ``qt`` class name (None if there is none)."""
    if class_name in CUSTOM_WIDGETS:
        return CUSTOM_WIDGETS[class_name]
    for module in (QtWidgets, QtGui, QtCore):
        base = getattr(module, class_name, None)
        if isinstance(base, type) and issubclass(base, QtCore.QObject):
            return pythonqt_class(base)
    return None


def _qt_base(cls):
    return next(base for base in cls.__mro__ if base.__module__.startswith("PySide6"))


def _problem(use: Use) -> str | None:
    cls = resolve(use.class_name)
    if cls is None:
        return f"{use}: no such class"
    custom = use.class_name in CUSTOM_WIDGETS
    if use.kind == "signal":
        if normalized(use.name) not in signal_signatures(cls):
            return f"{use}: {use.class_name} has no signal {normalized(use.name)}"
    elif use.kind in ("set", "get"):
        if use.name != "name" and not has_property(cls, use.name):
            return f"{use}: {use.class_name} has no property {use.name!r}"
    elif use.kind == "signal attribute":
        if not any(signature.startswith(use.name + "(") for signature in signal_signatures(cls)):
            return f"{use}: {use.class_name} has no signal named {use.name!r}"
    elif use.kind == "call":
        if use.name in ("connect", "disconnect"):
            return None
        if has_property(cls, use.name):
            return f"{use}: {use.name!r} is a property of {use.class_name} (PythonQt gives its value, not a method)"
        declared = custom and (use.name in getattr(cls, "INVOKABLES", ()) or
                               any(s.split("(")[0] == use.name for s in slot_signatures(cls)))
        if not declared and not hasattr(_qt_base(cls), use.name):
            return f"{use}: {use.class_name} has no method {use.name!r}"
    return None


def check(source: str, ui_text: str) -> tuple[list[Use], list[str]]:
    """The uses found and the problems among them (empty when every name exists)."""
    found = uses(source, ui_text)
    return found, [problem for problem in map(_problem, found) if problem]
