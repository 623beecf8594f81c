"""The Slicer extension's files are complete and consistent (Slicer itself cannot run here)."""
import ast
import re
import struct
import xml.dom.minidom
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_module_cmake_installs_every_library_file():
    listed = set(re.findall(r"\.\./(PromptRegLib/\S+)", (REPO / "PromptReg" / "CMakeLists.txt").read_text()))
    shipped = {str(p.relative_to(REPO)) for p in (REPO / "PromptRegLib").rglob("*")
               if p.suffix in (".py", ".json") and "__pycache__" not in p.parts}
    assert shipped == listed


def test_library_never_imports_slicer_or_qt():
    for path in (REPO / "PromptRegLib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("slicer", "qt", "ctk") for n in names), path


def test_module_defines_the_four_slicer_classes_and_ui_widgets_exist():
    tree = ast.parse((REPO / "PromptReg" / "PromptReg.py").read_text())
    classes = {node.name: [b.id if isinstance(b, ast.Name) else "" for b in node.bases]
               for node in tree.body if isinstance(node, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes["PromptReg"]
    assert "ScriptedLoadableModuleWidget" in classes["PromptRegWidget"]
    assert "ScriptedLoadableModuleLogic" in classes["PromptRegLogic"]
    assert "ScriptedLoadableModuleTest" in classes["PromptRegTest"]
    ui = xml.dom.minidom.parse(str(REPO / "PromptReg" / "Resources" / "UI" / "PromptReg.ui"))
    widgets = {w.getAttribute("name") for w in ui.getElementsByTagName("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (REPO / "PromptReg" / "PromptReg.py").read_text()))
    assert used <= widgets, used - widgets


def test_icons_are_128_pixel_pngs():
    for path in (REPO / "PromptReg.png", REPO / "PromptReg" / "Resources" / "Icons" / "PromptReg.png"):
        header = path.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24]) == (128, 128)
