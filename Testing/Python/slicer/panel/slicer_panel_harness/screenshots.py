"""The panel rendered offscreen to PNG, from the real ``.ui`` (as the harness loads it), for the Extensions Index."""
from __future__ import annotations

from pathlib import Path

from PySide6 import QtGui, QtWidgets

__all__ = ["render"]

#: about the width of Slicer's module panel at its default size
PANEL_WIDTH = 460


def render(panel, path: Path, width: int = PANEL_WIDTH) -> QtGui.QImage:
    """Lay the module panel out at ``width`` and its natural height, grab it, save it as PNG; returns the image."""
    module_panel = panel.parent
    module_panel.resize(width, 400)
    QtWidgets.QApplication.processEvents()
    module_panel.resize(width, QtWidgets.QWidget.sizeHint(module_panel).height())
    QtWidgets.QApplication.processEvents()
    image = module_panel.grab().toImage()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(path), "PNG"):
        raise OSError(f"could not write {path}")
    return image
