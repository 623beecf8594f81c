"""The Slicer extension's files are complete and consistent (Slicer itself cannot run here)."""
import ast
import json
import re
import struct
import urllib.parse
import xml.dom.minidom
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_cmake_globs_cover_every_library_file_type():
    """The top-level CMakeLists installs PromptRegLib by glob (test_packaging checks the installed tree):
    a file type the globs miss would silently stay behind."""
    globbed = set(re.findall(r"PromptRegLib/\*(\.\w+)\)", (REPO / "CMakeLists.txt").read_text()))
    shipped = {p.suffix for p in (REPO / "PromptRegLib").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert globbed == {".py", ".json"} and shipped <= globbed, shipped - globbed


def test_module_folder_has_one_top_level_script():
    """Slicer loads every top-level .py of qt-scripted-modules as a module; helpers live in a package."""
    assert sorted(p.name for p in (REPO / "PromptReg").glob("*.py")) == ["PromptReg.py"]


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


# --- the ExtensionsIndex checks that run offline (Slicer/ExtensionsIndex scripts/check_description_files.py
# and the catalog entry schema slicer-extension-catalog-entry-schema-v1.0.1.json, read for their rules) ---
SCHEMA_KEYS = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
               "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}


def test_description_file_follows_the_catalog_schema():
    description = json.loads((REPO / "PromptReg.json").read_text())
    assert {"$schema", "category", "scm_url"} <= set(description)
    assert set(description) <= set(SCHEMA_KEYS), set(description) - set(SCHEMA_KEYS)
    for key, value in description.items():
        assert isinstance(value, SCHEMA_KEYS[key]), key
    assert description["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                             "slicer-extension-catalog-entry-schema-v1.0.1.json")
    assert description.get("tier", 5) in (1, 3, 5) and description.get("scm_type", "git") in ("git", "local")
    assert all(isinstance(d, str) for d in description.get("build_dependencies", []))
    assert description["category"] == "Registration"  # one of the index's accepted categories


def test_repository_name_url_and_project_name_pass_the_index_checks():
    description = json.loads((REPO / "PromptReg.json").read_text())
    url = urllib.parse.urlsplit(description["scm_url"])
    assert url.scheme in ("git", "https")
    assert "slicer" in Path(url.path).stem.lower()
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", cmake, re.IGNORECASE)[0] == "PromptReg"  # == PromptReg.json


def test_icon_and_screenshot_urls_point_at_files_in_this_repository():
    cmake = (REPO / "CMakeLists.txt").read_text()
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', cmake, re.IGNORECASE)
    screenshots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake, re.IGNORECASE)
    urls = icon + screenshots[0].split()
    assert len(icon) == 1 and len(urls) >= 2
    for url in urls:
        assert url.startswith("https://raw.githubusercontent.com/promptreg/SlicerPromptReg/main/"), url
        path = REPO / url.split("/main/", 1)[1]
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_license_is_the_apache_2_text_pyproject_declares():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert 'license = { text = "Apache-2.0" }' in (REPO / "pyproject.toml").read_text()
